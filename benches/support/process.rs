//! The daemon and the simulator as real child processes, for the benchmarks that measure
//! them from outside (`load_profile`, `history`, `fleet`): started with JSON logs, with the
//! address they log read back; stopped (SIGTERM, then SIGKILL) when dropped; their CPU time
//! and memory read from `/proc`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `allstar-nexus` binary cargo built for this benchmark.
pub const BIN: &str = env!("CARGO_BIN_EXE_allstar-nexus");

/// A child process killed (SIGTERM, then SIGKILL after 10 s) when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: sending a signal to our own child by its pid has no memory effects.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `BIN args…` with JSON logs and waits for the first log line carrying `field`
/// (`"address"` for the simulator, `"http"` for the daemon's listening address); returns
/// the process and that value. The log is drained afterwards so the child never blocks.
pub fn spawn_and_read<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    args: &[S],
    field: &str,
) -> (Proc, String) {
    let mut child = Command::new(BIN)
        .args(["--log-format", "json"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let stderr = child.stderr.take().expect("stderr is piped");
    let proc = Proc { child };
    let mut lines = BufReader::new(stderr).lines();
    let found = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("{BIN} {args:?} ended before logging {field:?}");
        };
        if let Some(v) = find_field(&line, field) {
            break v;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (proc, found)
}

/// `field` of a JSON log line (top level or under `fields`), or for `"http"` the address in
/// a "listening on http://…" message.
fn find_field(line: &str, field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields").unwrap_or(&v);
    if let Some(s) = fields.get(field).and_then(|s| s.as_str()) {
        return Some(s.to_owned());
    }
    let msg = fields.get("message").and_then(|m| m.as_str())?;
    let rest = msg.split("listening on http://").nth(1)?;
    (field == "http").then(|| rest.split_whitespace().next().unwrap_or("").to_owned())
}

/// User + system CPU seconds of a process.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)` (which may hold spaces): state is field 3, utime 14,
    // stime 15, i.e. 11 and 12 after the state.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// (VmRSS, VmHWM) of a process, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// (VmRSS, VmHWM) of a process, in MiB.
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let (rss, hwm) = memory_kib(pid);
    (rss as f64 / 1024.0, hwm as f64 / 1024.0)
}
