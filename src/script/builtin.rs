//! The bundled plugins (`plugins/*.lua`), compiled into the binary so an installed or
//! moved binary (and `demo`) has them without a source tree.
//!
//! With `plugins_builtin: true` they run as if they sat in a script directory; a file of
//! the same name in one of `script_dirs` replaces the built-in one (the operator's copy
//! wins), so a plugin is customised by copying it next to one's own scripts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Name and source of every bundled plugin.
pub const PLUGINS: &[(&str, &str)] = &[
    (
        "adaptive_polling.lua",
        include_str!("../../plugins/adaptive_polling.lua"),
    ),
    ("alerts.lua", include_str!("../../plugins/alerts.lua")),
    ("voter.lua", include_str!("../../plugins/voter.lua")),
];

/// The key (and `path` in `/api/scripts`) of a built-in plugin: a pseudo path whose file
/// name is the plugin's, so lookups by file name find it.
pub fn key(name: &str) -> String {
    format!("(built-in)/{name}")
}

/// The built-in plugin with this key.
pub fn source(key: &str) -> Option<&'static str> {
    let name = key.strip_prefix("(built-in)/")?;
    PLUGINS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The built-in plugins to run next to the script files `found`: all of them when enabled,
/// except those a file of the same name overrides.
pub fn active(enabled: bool, found: &[PathBuf]) -> Vec<(String, &'static str)> {
    if !enabled {
        return Vec::new();
    }
    let names: HashSet<&str> = found
        .iter()
        .filter_map(|p| Path::new(p).file_name()?.to_str())
        .collect();
    PLUGINS
        .iter()
        .filter(|(n, _)| !names.contains(n))
        .map(|(n, s)| (key(n), *s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_plugin_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("plugins/")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| super::super::reload::is_script_name(n))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = PLUGINS.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            on_disk, embedded,
            "add new plugins/*.lua to PLUGINS (sorted)"
        );
        for (name, src) in PLUGINS {
            let disk = std::fs::read_to_string(dir.join(name)).expect("plugin");
            assert_eq!(disk, *src, "{name}");
        }
    }

    #[test]
    fn operator_copy_overrides_by_name() {
        let found = vec![PathBuf::from("/etc/allstar-nexus/scripts/alerts.lua")];
        let active: Vec<String> = active(true, &found).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            active,
            vec![key("adaptive_polling.lua"), key("voter.lua")],
            "alerts.lua comes from the directory"
        );
        assert!(super::active(false, &[]).is_empty());
        assert_eq!(
            Path::new(&key("voter.lua"))
                .file_name()
                .and_then(|n| n.to_str()),
            Some("voter.lua")
        );
        assert!(source(&key("voter.lua")).is_some_and(|s| s.contains("nexus")));
        assert!(source("voter.lua").is_none());
    }
}
