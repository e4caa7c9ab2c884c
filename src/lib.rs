//! AllStar Nexus: a monitor and automation engine for AllStarLink (app_rpt) nodes.
//!
//! Data flows one way: AMI sockets (`ami`) → state engine (`state`) → fan-out (WebSocket,
//! metrics, Lua scripts, alerts). See `docs/architecture.md`.

pub mod alerts;
pub mod ami;
pub mod app;
pub mod astdb;
pub mod audit;
pub mod auth;
pub mod bridge;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod fswatch;
pub mod history;
pub mod http;
pub mod linkctl;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod poller;
pub mod rpt;
pub mod script;
pub mod sim;
pub mod state;
pub mod status;

/// The module graph has no upward imports and no circle: each top-level module may use
/// only modules of a lower rank (docs/architecture.md, "Module graph").
#[cfg(test)]
mod module_graph {
    use std::collections::BTreeMap;
    use std::path::Path;

    /// Rank of each top-level module: a module may import only lower ranks.
    const RANKS: &[(&str, u8)] = &[
        ("metrics", 0),
        ("config", 0),
        ("fswatch", 0),
        ("logging", 0),
        ("observe", 1),
        ("astdb", 1),
        ("ami", 2),
        ("audit", 2),
        ("auth", 2),
        ("rpt", 3),
        ("poller", 4),
        ("state", 5),
        ("alerts", 6),
        ("sim", 6),
        ("control", 6),
        ("history", 7),
        ("bridge", 7),
        ("linkctl", 7),
        ("script", 8),
        ("app", 9),
        ("http", 10),
        ("daemon", 11),
        ("demo", 12),
        ("status", 12),
    ];

    fn sources(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            // Unit tests may use anything (the simulator, above all): only product code counts.
            let is_test = p
                .file_name()
                .is_some_and(|n| n == "tests" || n == "tests.rs");
            if is_test {
                continue;
            }
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }

    fn imports(text: &str) -> Vec<String> {
        text.match_indices("crate::")
            .map(|(i, m)| {
                text[i + m.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect()
    }

    #[test]
    fn no_upward_imports() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let ranks: BTreeMap<&str, u8> = RANKS.iter().copied().collect();
        let mut bad = Vec::new();
        for (module, rank) in RANKS {
            let mut texts = Vec::new();
            sources(&src.join(module), &mut texts);
            if let Ok(t) = std::fs::read_to_string(src.join(format!("{module}.rs"))) {
                texts.push(t);
            }
            assert!(!texts.is_empty(), "no source for module {module}");
            for dep in texts.iter().flat_map(|t| imports(t)) {
                let Some(&dep_rank) = ranks.get(dep.as_str()) else {
                    continue;
                };
                if dep != *module && dep_rank >= *rank {
                    bad.push(format!(
                        "{module} (rank {rank}) imports {dep} (rank {dep_rank})"
                    ));
                }
            }
        }
        bad.sort();
        bad.dedup();
        assert!(
            bad.is_empty(),
            "upward or sideways imports:\n{}",
            bad.join("\n")
        );
    }
}
