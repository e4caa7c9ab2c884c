//! Build script: records the git revision for `allstar-nexus --version`.
//!
//! Order: the `NEXUS_GIT_REVISION` environment variable (packagers building from a tarball
//! set it), else `git rev-parse --short=12 HEAD`, else `unknown`. Never fails the build.
//!
//! Release builds for glibc also pack the binary's relative relocations (`-z
//! pack-relative-relocs`, DT_RELR): the dynamic loader reads the whole relocation table at
//! every start, and packed it is a few KiB instead of 600 KiB of resident memory (issue 13,
//! docs/performance.md). Only where it is safe: a native build on glibc 2.36 or newer (the
//! loader that understands DT_RELR; older linkers ignore the flag). `NEXUS_NO_RELR=1` turns
//! it off.

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
    if pack_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    for path in watch_paths() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// Whether to link the binaries with packed relative relocations (see the module doc).
fn pack_relocations() -> bool {
    println!("cargo:rerun-if-env-changed=NEXUS_NO_RELR");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if !var("NEXUS_NO_RELR").is_empty()
        || var("PROFILE") != "release"
        || var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("HOST") != var("TARGET")
    {
        return false;
    }
    // `ldd --version` prints e.g. "ldd (Debian GLIBC 2.36-9+deb12u14) 2.36" first.
    let Ok(out) = Command::new("ldd").arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next().and_then(|l| l.rsplit(' ').next());
    let mut parts = version
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    matches!((parts.next(), parts.next()), (Some(Some(2)), Some(Some(minor))) if minor >= 36)
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
