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
    /// Answer once every change before it has been handled.
    Barrier(oneshot::Sender<()>),
}

/// Changes taken per lock acquisition.
const BATCH: usize = 256;

struct Lanes {
    /// Changes and barriers, in order.
    changes: VecDeque<Item>,
    commands: VecDeque<Command>,
    /// The Lua thread is waiting on the condvar (only then is a wake-up needed).
    waiting: bool,
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
                // Grows as it fills: a ring allocated up front is touched slot by slot
                // as it turns, and most of the time it holds a few changes.
                changes: VecDeque::new(),
                commands: VecDeque::new(),
                waiting: false,
            }),
            ready: Condvar::new(),
            cap: cap.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases the lock and wakes the Lua thread if it is waiting.
    fn wake(&self, lanes: MutexGuard<'_, Lanes>) {
        let waiting = lanes.waiting;
        drop(lanes);
        if waiting {
            self.ready.notify_one();
        }
    }

    /// Queues a change; `false` when the lane is full (the change is dropped).
    pub fn try_push_change(&self, p: Arc<Published>) -> bool {
        let mut lanes = self.lock();
        if lanes.changes.len() >= self.cap {
            return false;
        }
        lanes.changes.push_back(Item::Change(p));
        self.wake(lanes);
        true
    }

    /// Queues a barrier behind the changes already waiting (never refused).
    pub fn push_barrier(&self, tx: oneshot::Sender<()>) {
        let mut lanes = self.lock();
        lanes.changes.push_back(Item::Barrier(tx));
        self.wake(lanes);
    }

    /// Queues a command (never refused).
    pub fn push_command(&self, c: Command) {
        let mut lanes = self.lock();
        lanes.commands.push_back(c);
        self.wake(lanes);
    }

    /// Moves waiting work into `out`: every command first, then up to a batch of changes
    /// and barriers, in order. When there is none, waits until `deadline` (forever if
    /// `None`) and returns with `out` unchanged once it has passed.
    pub fn pop_batch(&self, deadline: Option<Instant>, out: &mut VecDeque<Item>) {
        let mut lanes = self.lock();
        loop {
            if !lanes.commands.is_empty() || !lanes.changes.is_empty() {
                let commands: Vec<Command> = lanes.commands.drain(..).collect();
                out.extend(commands.into_iter().map(Item::Command));
                let n = lanes.changes.len().min(BATCH);
                out.extend(lanes.changes.drain(..n));
                return;
            }
            let wait = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return,
                },
            };
            lanes.waiting = true;
            lanes = match wait {
                None => self.ready.wait(lanes).unwrap_or_else(|p| p.into_inner()),
                Some(left) => {
                    self.ready
                        .wait_timeout(lanes, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            lanes.waiting = false;
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
    use std::time::Duration;

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
        let mut out = VecDeque::new();
        inbox.pop_batch(None, &mut out);
        assert!(matches!(
            out.pop_front(),
            Some(Item::Command(Command::Shutdown))
        ));
        assert!(matches!(out.pop_front(), Some(Item::Change(p)) if p.event.seq == 1));
        assert!(matches!(out.pop_front(), Some(Item::Change(p)) if p.event.seq == 2));
        assert_eq!(inbox.len(), 0);
    }

    #[test]
    fn pop_times_out_and_barriers_stay_in_order() {
        let inbox = Inbox::new(4);
        let mut out = VecDeque::new();
        let start = Instant::now();
        inbox.pop_batch(Some(start + Duration::from_millis(20)), &mut out);
        assert!(out.is_empty() && start.elapsed() >= Duration::from_millis(20));
        let (tx, _rx) = oneshot::channel();
        assert!(inbox.try_push_change(change(1)));
        inbox.push_barrier(tx);
        inbox.pop_batch(None, &mut out);
        assert!(matches!(out.pop_front(), Some(Item::Change(_))));
        assert!(matches!(out.pop_front(), Some(Item::Barrier(_))));
    }

    #[test]
    fn a_waiting_consumer_is_woken() {
        let inbox = Inbox::new(4);
        let producer = inbox.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            producer.try_push_change(change(7))
        });
        let mut out = VecDeque::new();
        inbox.pop_batch(None, &mut out);
        assert!(t.join().unwrap_or(false));
        assert!(matches!(out.pop_front(), Some(Item::Change(p)) if p.event.seq == 7));
    }
}
