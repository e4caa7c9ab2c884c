//! What the two file watchers (script hot reload and `astdb.txt`) share: which directory
//! to watch for a file, which events mean "content may have changed", and the debounce
//! that turns a burst of events into one reload.
//!
//! Both watchers watch directories, not files (editors and the astdb updater replace a
//! file by renaming a new one over it). Reading a file makes the kernel report an *access*
//! (open, read, close without writing): those events are ignored, or every reload would
//! announce the next one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::EventKind;
use notify::event::{AccessKind, AccessMode};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The directory to watch for `file`: its parent, or `.` when it has none (a bare file
/// name such as `astdb.txt`, relative to the working directory).
pub fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A directory as given, or `.` for an empty path.
pub fn dir(d: &Path) -> PathBuf {
    if d.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        d.to_path_buf()
    }
}

/// Whether an event may mean a file's content or presence changed. Accesses (open, read,
/// close after reading) do not; a close after writing does.
pub fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Calls `fire` once per burst of signals on `rx`: after `quiet` without a new one, or at
/// the latest `max` after the burst began. Ends on `shutdown` or when `rx` closes.
pub async fn debounce(
    mut rx: mpsc::Receiver<()>,
    quiet: Duration,
    max: Duration,
    shutdown: CancellationToken,
    mut fire: impl FnMut(),
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = rx.recv() => if got.is_none() { return },
        }
        let burst_end = tokio::time::Instant::now() + max;
        loop {
            let until = (tokio::time::Instant::now() + quiet).min(burst_end);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(until) => break,
                got = rx.recv() => if got.is_none() { return },
            }
        }
        fire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_bare_file_name_is_watched_in_the_working_directory() {
        assert_eq!(dir_of(Path::new("astdb.txt")), PathBuf::from("."));
        assert_eq!(
            dir_of(Path::new("/var/lib/astdb.txt")),
            PathBuf::from("/var/lib")
        );
        assert_eq!(dir_of(Path::new("sub/astdb.txt")), PathBuf::from("sub"));
        assert_eq!(dir(Path::new("")), PathBuf::from("."));
        assert_eq!(dir(Path::new("scripts")), PathBuf::from("scripts"));
    }

    #[test]
    fn access_events_are_ignored() {
        for k in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Any),
        ] {
            assert!(!changes_content(&k), "{k:?}");
        }
        for k in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(notify::event::RemoveKind::File),
        ] {
            assert!(changes_content(&k), "{k:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_fire_per_burst_and_none_while_idle() {
        let (tx, rx) = mpsc::channel(16);
        let fired = Arc::new(AtomicU32::new(0));
        let f = fired.clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(debounce(
            rx,
            Duration::from_millis(500),
            Duration::from_secs(2),
            shutdown.clone(),
            move || {
                f.fetch_add(1, Ordering::SeqCst);
            },
        ));
        // A burst of events (the updater writes, then renames): one reload.
        for _ in 0..5 {
            let _ = tx.try_send(());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        // An idle minute: nothing more.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(fired.load(Ordering::SeqCst), 1);
        // An endless stream still reloads at least every `max`.
        for _ in 0..30 {
            let _ = tx.try_send(());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(fired.load(Ordering::SeqCst) >= 2);
        shutdown.cancel();
        let _ = task.await;
    }
}
