//! The Lua thread's inbox: a bounded lane of changes and an unbounded lane of commands.
//!
//! Changes are offered with [`Inbox::try_push_change`]: when the lane is full the change is
//! refused (the caller counts it) so the AMI read loop and HTTP never wait on Lua. Commands
//! (reload, voter replies, calls, shutdown) are few and always accepted; they are taken
//! before changes so a flood of changes never delays a reload or shutdown.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use crate::control::VoterSnapshot;
use crate::state::Published;

/// Work for the Lua thread other than changes.
pub enum Command {
    /// Re-read the script directories; `force` reloads even unchanged files.
    Rescan { force: bool },
    /// A `nexus.voter_status` request finished.
    VoterReply {
        script: String,
        generation: u64,
        call: u64,
        result: Result<VoterSnapshot, String>,
    },
    /// Call a global function of a script with JSON arguments.
    Call {
        script: String,
        function: String,
        args: Vec<serde_json::Value>,
        reply: oneshot::Sender<CallResult>,
    },
    /// Stop the thread.
    Shutdown,
}

/// The result of [`Command::Call`].
pub type CallResult = Result<serde_json::Value, String>;

/// One unit of work.
pub enum Item {
    Change(Arc<Published>),
    Command(Command),
}

enum Slot {
    Change(Arc<Published>),
    Barrier(oneshot::Sender<()>),
}

struct Lanes {
    changes: VecDeque<Slot>,
    commands: VecDeque<Command>,
}

/// Shared between producers (tokio tasks, the watcher) and the Lua thread.
pub struct Inbox {
    lanes: Mutex<Lanes>,
    ready: Condvar,
    cap: usize,
}

impl Inbox {
    /// An inbox holding at most `cap` changes.
    pub fn new(cap: usize) -> Arc<Inbox> {
        Arc::new(Inbox {
            lanes: Mutex::new(Lanes {
                changes: VecDeque::with_capacity(cap.min(4096)),
                commands: VecDeque::new(),
            }),
            ready: Condvar::new(),
            cap: cap.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a change; `false` when the lane is full (the change is dropped).
    pub fn try_push_change(&self, p: Arc<Published>) -> bool {
        let mut lanes = self.lock();
        if lanes.changes.len() >= self.cap {
            return false;
        }
        lanes.changes.push_back(Slot::Change(p));
        drop(lanes);
        self.ready.notify_one();
        true
    }

    /// Queues a barrier behind the changes already waiting (never refused).
    pub fn push_barrier(&self, tx: oneshot::Sender<()>) {
        self.lock().changes.push_back(Slot::Barrier(tx));
        self.ready.notify_one();
    }

    /// Queues a command (never refused).
    pub fn push_command(&self, c: Command) {
        self.lock().commands.push_back(c);
        self.ready.notify_one();
    }

    /// The next item, commands first; waits until `deadline` (forever if `None`).
    /// Barriers are answered here, in order. `None` when the deadline passed.
    pub fn pop(&self, deadline: Option<Instant>) -> Option<Item> {
        let mut lanes = self.lock();
        loop {
            if let Some(c) = lanes.commands.pop_front() {
                return Some(Item::Command(c));
            }
            match lanes.changes.pop_front() {
                Some(Slot::Change(p)) => return Some(Item::Change(p)),
                Some(Slot::Barrier(tx)) => {
                    let _ = tx.send(());
                    continue;
                }
                None => {}
            }
            lanes = match deadline {
                None => self.ready.wait(lanes).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    self.ready
                        .wait_timeout(lanes, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Changes waiting.
    pub fn len(&self) -> usize {
        self.lock().changes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ChangeEvent, ChangeKind};

    fn change(seq: u64) -> Arc<Published> {
        let mut e = ChangeEvent::new(ChangeKind::TxKeyed, "default", Some("1999"));
        e.seq = seq;
        Published::new(e)
    }

    #[test]
    fn full_lane_refuses_changes_but_not_commands() {
        let inbox = Inbox::new(2);
        assert!(inbox.try_push_change(change(1)));
        assert!(inbox.try_push_change(change(2)));
        assert!(!inbox.try_push_change(change(3)));
        inbox.push_command(Command::Shutdown);
        assert!(matches!(
            inbox.pop(None),
            Some(Item::Command(Command::Shutdown))
        ));
        assert!(matches!(inbox.pop(None), Some(Item::Change(p)) if p.event.seq == 1));
        assert_eq!(inbox.len(), 1);
    }

    #[test]
    fn pop_times_out_and_barriers_follow_changes() {
        let inbox = Inbox::new(4);
        let start = Instant::now();
        assert!(
            inbox
                .pop(Some(start + std::time::Duration::from_millis(20)))
                .is_none()
        );
        assert!(start.elapsed() >= std::time::Duration::from_millis(20));
        let (tx, mut rx) = oneshot::channel();
        assert!(inbox.try_push_change(change(1)));
        inbox.push_barrier(tx);
        assert!(rx.try_recv().is_err());
        assert!(matches!(inbox.pop(None), Some(Item::Change(_))));
        assert!(inbox.pop(Some(Instant::now())).is_none());
        assert!(rx.try_recv().is_ok());
    }
}
