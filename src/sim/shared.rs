//! State shared by the handle, the accept loop and every session: the truth, the session
//! registry with its per-session bounded event queues, the fault switches, and the record
//! of received actions.
//!
//! One `std::sync::Mutex` guards the truth *and* the registry, so events reach every
//! session in exactly the order the truth changed. It is never held across an `.await`:
//! mutators format the events and `try_send` them into each session's queue while
//! holding it, which cannot block. A session whose queue is full is closed (like
//! Asterisk's write timeout on a client that stopped reading) instead of slowing anyone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::format;
use super::rng::SimRng;
use super::truth::{Emitted, Now, SimTruth};
use super::{RecordedAction, SimConfig};
use crate::ami::Frame;

/// Default depth of a session's event queue before the session is dropped.
pub(crate) const DEFAULT_QUEUE_LIMIT: usize = 4096;

/// Seed of the event-drop RNG: fixed so a given ratio drops the same events every run.
const DROP_SEED: u64 = 0x05EE_DA11_57A2;

/// The simulator's clock: monotonic tokio time (pausable in tests) plus the wall time at
/// start, so ctime text advances with paused time too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
    wall: SystemTime,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// Now, on both clocks.
    pub(crate) fn now(&self) -> Now {
        let at = Instant::now();
        Now {
            at,
            wall: self.wall + at.saturating_duration_since(self.start),
        }
    }

    /// Whole seconds since the simulator started (`core show uptime`, RptUptime).
    pub(crate) fn uptime(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_secs()
    }

    /// Start time in Unix seconds (channel `Uniqueid`s).
    pub(crate) fn epoch(&self) -> u64 {
        self.wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// Fault switches read by sessions on every write or request.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) refuse: AtomicBool,
    /// 0 = whole writes.
    pub(crate) chunk: AtomicUsize,
    pub(crate) coalesce: AtomicBool,
    pub(crate) fail_login: AtomicBool,
    pub(crate) abort_rptstatus: AtomicBool,
    pub(crate) reject_commands: AtomicBool,
    pub(crate) queue_limit: AtomicUsize,
}

impl Faults {
    /// The write piece size, when chunking is on.
    pub(crate) fn chunk(&self) -> Option<usize> {
        Some(self.chunk.load(Ordering::Relaxed)).filter(|n| *n > 0)
    }

    /// Reads a flag.
    pub(crate) fn on(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }
}

/// One registered session.
struct Slot {
    tx: mpsc::Sender<Bytes>,
    kill: CancellationToken,
    logged_in: bool,
    mask: u32,
}

/// What the mutex guards.
struct State {
    truth: SimTruth,
    sessions: BTreeMap<u64, Slot>,
    rng: SimRng,
    drop_ratio: f64,
    recorded: Vec<RecordedAction>,
}

/// A running accept loop: its stop token and task.
pub(crate) type ListenerTask = (CancellationToken, JoinHandle<()>);

/// Everything a `SimHandle` points at.
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) clock: Clock,
    state: Mutex<State>,
    pub(crate) faults: Faults,
    /// `true` while sessions are hung (`set_stall`).
    pub(crate) stall: watch::Sender<bool>,
    /// Cancelled by `shutdown`: the accept loop and every session end.
    pub(crate) shutdown: CancellationToken,
    next_session: AtomicU64,
    /// Connections accepted by the listener (refused ones included).
    pub(crate) accepted: AtomicU64,
    /// Number of logged-in sessions, for `wait_for_session_count`.
    pub(crate) logged_in: watch::Sender<usize>,
    /// Number of recorded actions, for `wait_for_recorded`.
    pub(crate) recorded_count: watch::Sender<usize>,
    /// The bound address (kept across pause/resume).
    pub(crate) addr: Mutex<Option<SocketAddr>>,
    pub(crate) listener: Mutex<Option<ListenerTask>>,
    /// chan_echolink's directory for `echolink dbget nodename <n>`: number → (callsign, IP).
    pub(crate) echolink: Mutex<BTreeMap<u32, (String, String)>>,
}

impl Shared {
    /// Fresh state hosting `config.nodes`.
    pub(crate) fn new(config: SimConfig) -> Shared {
        let faults = Faults::default();
        faults
            .queue_limit
            .store(DEFAULT_QUEUE_LIMIT, Ordering::Relaxed);
        let shared = Shared {
            clock: Clock::new(),
            state: Mutex::new(State {
                truth: SimTruth::default(),
                sessions: BTreeMap::new(),
                rng: SimRng::new(DROP_SEED),
                drop_ratio: 0.0,
                recorded: Vec::new(),
            }),
            faults,
            stall: watch::Sender::new(false),
            shutdown: CancellationToken::new(),
            next_session: AtomicU64::new(1),
            accepted: AtomicU64::new(0),
            logged_in: watch::Sender::new(0),
            recorded_count: watch::Sender::new(0),
            addr: Mutex::new(None),
            listener: Mutex::new(None),
            echolink: Mutex::new(
                [
                    (123_456, ("W1AW-L", "192.0.2.10")),
                    (345_678, ("K2XYZ-R", "192.0.2.11")),
                    (987_654, ("N0CALL", "192.0.2.12")),
                ]
                .into_iter()
                .map(|(n, (c, ip))| (n, (c.to_owned(), ip.to_owned())))
                .collect(),
            ),
            config,
        };
        for node in shared.config.nodes.clone() {
            shared.mutate(|t, now| ((), t.add_node(&node, now, shared.clock.epoch())));
        }
        shared
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a truth mutation and delivers the events it emits, atomically.
    pub(crate) fn mutate<R>(&self, f: impl FnOnce(&mut SimTruth, Now) -> (R, Emitted)) -> R {
        let now = self.clock.now();
        let mut st = self.lock();
        let (result, events) = f(&mut st.truth, now);
        self.deliver(&mut st, &events);
        result
    }

    /// Reads the truth.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&SimTruth) -> R) -> R {
        f(&self.lock().truth)
    }

    fn deliver(&self, st: &mut State, events: &Emitted) {
        if events.is_empty() || *self.stall.borrow() {
            return;
        }
        let State {
            sessions,
            rng,
            drop_ratio,
            ..
        } = &mut *st;
        let mut overflowed = false;
        for ev in events {
            let Some(text) = format::event(self.config.era, ev) else {
                continue;
            };
            for (id, slot) in sessions.iter_mut() {
                if !slot.logged_in || slot.mask & text.class == 0 {
                    continue;
                }
                if *drop_ratio > 0.0 && rng.chance(*drop_ratio) {
                    continue;
                }
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    slot.tx.try_send(text.bytes.clone())
                {
                    tracing::warn!(
                        session = id,
                        "simulator: event queue full, closing the session"
                    );
                    slot.kill.cancel();
                    slot.logged_in = false;
                    overflowed = true;
                }
            }
        }
        if overflowed {
            self.publish_count(st);
        }
    }

    fn publish_count(&self, st: &State) {
        let n = st.sessions.values().filter(|s| s.logged_in).count();
        self.logged_in.send_replace(n);
    }

    /// Registers a new session: its id, event queue and kill token.
    pub(crate) fn register(&self) -> (u64, mpsc::Receiver<Bytes>, CancellationToken) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let limit = self.faults.queue_limit.load(Ordering::Relaxed).max(1);
        let (tx, rx) = mpsc::channel(limit);
        let kill = self.shutdown.child_token();
        let slot = Slot {
            tx,
            kill: kill.clone(),
            logged_in: false,
            mask: 0,
        };
        self.lock().sessions.insert(id, slot);
        (id, rx, kill)
    }

    /// Removes a session (it ended).
    pub(crate) fn unregister(&self, id: u64) {
        let mut st = self.lock();
        if st.sessions.remove(&id).is_some_and(|s| s.logged_in) {
            self.publish_count(&st);
        }
    }

    /// Marks a session logged in with its event mask.
    pub(crate) fn set_logged_in(&self, id: u64, mask: u32) {
        let mut st = self.lock();
        if let Some(slot) = st.sessions.get_mut(&id) {
            slot.logged_in = true;
            slot.mask = mask;
        }
        self.publish_count(&st);
    }

    /// Changes a session's event mask (`Action: Events`).
    pub(crate) fn set_mask(&self, id: u64, mask: u32) {
        if let Some(slot) = self.lock().sessions.get_mut(&id) {
            slot.mask = mask;
        }
    }

    /// Logged-in sessions now.
    pub(crate) fn session_count(&self) -> usize {
        self.lock()
            .sessions
            .values()
            .filter(|s| s.logged_in)
            .count()
    }

    /// Closes every session.
    pub(crate) fn drop_sessions(&self) {
        for slot in self.lock().sessions.values() {
            slot.kill.cancel();
        }
    }

    /// Queues raw bytes to every session (not subject to the drop ratio). A full queue
    /// closes the session, as for events.
    pub(crate) fn inject_raw(&self, bytes: Bytes) {
        let st = self.lock();
        for slot in st.sessions.values() {
            if let Err(mpsc::error::TrySendError::Full(_)) = slot.tx.try_send(bytes.clone()) {
                slot.kill.cancel();
            }
        }
    }

    /// Sets the event drop ratio (clamped to `[0, 1]`).
    pub(crate) fn set_drop_ratio(&self, ratio: f64) {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.lock().drop_ratio = ratio;
    }

    /// Records a received request, secrets redacted.
    pub(crate) fn record(&self, session: u64, frame: &Frame) {
        let headers = frame
            .headers()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("Secret") {
                    "********"
                } else {
                    v
                };
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let mut st = self.lock();
        st.recorded.push(RecordedAction { session, headers });
        self.recorded_count.send_replace(st.recorded.len());
    }

    /// Every recorded request, in order.
    pub(crate) fn recorded(&self) -> Vec<RecordedAction> {
        self.lock().recorded.clone()
    }

    /// Forgets the recorded requests.
    pub(crate) fn clear_recorded(&self) {
        let mut st = self.lock();
        st.recorded.clear();
        self.recorded_count.send_replace(0);
    }
}
