//! Build script: records the git revision for `allstar-nexus --version`.
//!
//! Order: the `NEXUS_GIT_REVISION` environment variable (packagers building from a tarball
//! set it), else `git rev-parse --short=12 HEAD`, else `unknown`. Never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=NEXUS_GIT_REVISION");
    let revision = std::env::var("NEXUS_GIT_REVISION")
        .ok()
        .map(|r| r.trim().to_owned())
        .filter(|r| is_clean(r))
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=NEXUS_GIT_REVISION={revision}");
    for path in watch_paths() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// A revision may only be a short, printable token (it ends up in `--version`).
fn is_clean(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned())
}

fn git_revision() -> Option<String> {
    git(&["rev-parse", "--short=12", "HEAD"]).filter(|r| is_clean(r))
}

/// Files whose change means a new commit is checked out (only those that exist: cargo
/// would rerun every build for a missing one).
fn watch_paths() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]) else {
        return out;
    };
    let git_dir = PathBuf::from(git_dir);
    out.push(git_dir.join("HEAD"));
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        let common = PathBuf::from(common);
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            out.push(common.join(head_ref));
        }
        out.push(common.join("packed-refs"));
    }
    out.into_iter().filter(|p| Path::new(p).exists()).collect()
}
