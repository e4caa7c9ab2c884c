//! History across restarts of the real binary (child processes): a clean stop (SIGTERM)
//! closes open keyups and sessions as `shutdown`; after `kill -9` the file is intact
//! (`PRAGMA integrity_check`), at most about a second of writes is lost, and the next
//! start closes what was left open as `unknown` at the last moment the daemon was alive.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use allstar_nexus::sim::SimLink;
use allstar_nexus::state::Direction;
use common::*;
use rusqlite::{Connection, OpenFlags};

fn write_config(dir: &Path, sim_port: u16) -> PathBuf {
    let path = dir.join("config.yaml");
    let yaml = format!(
        "listen: 127.0.0.1:0\nami_host: 127.0.0.1\nami_port: {sim_port}\nami_username: admin\n\
         ami_password: {SECRET}\nami_retry_interval: 1s\nami_retry_max: 2s\n\
         astdb_path: /nonexistent/astdb.txt\nscript_dirs: []\nstate_dir: {}\nnodes:\n  - node_id: 1999\n",
        dir.display()
    );
    std::fs::write(&path, yaml).expect("write config");
    path
}

fn spawn(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_allstar-nexus"))
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon")
}

/// Reads one value from the database (read-only; `None` while the file or row is missing).
fn query<T: rusqlite::types::FromSql>(db: &Path, sql: &str) -> Option<T> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(Duration::from_secs(2)).ok()?;
    conn.query_row(sql, [], |r| r.get(0)).ok()
}

async fn wait_db(db: &Path, what: &str, sql: &str) -> Duration {
    let start = Instant::now();
    loop {
        if query::<i64>(db, sql).unwrap_or(0) > 0 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "daemon did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const OPEN_KEYUP: &str = "SELECT COUNT(*) FROM keyups WHERE link = '2000' AND end_ms IS NULL";
const OPEN_SESSION: &str =
    "SELECT COUNT(*) FROM link_sessions WHERE link = '2000' AND disconnected_ms IS NULL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stop_and_kill_9_keep_rows_and_close_open_ones() {
    let sim = sim_on_tcp(&["1999"]).await;
    sim.connect_link("1999", SimLink::allstar("2000", "10.0.0.2", Direction::In));
    sim.set_link_keyed("1999", "2000", true);
    let dir = temp_dir("restart");
    let config = write_config(&dir, sim.addr().port());
    let db = dir.join("history.db");

    // 1. Clean stop: open rows are closed at shutdown, flagged.
    let mut child = spawn(&config);
    wait_db(&db, "open keyup", OPEN_KEYUP).await;
    wait_db(&db, "open session", OPEN_SESSION).await;
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    assert!(wait_exit(&mut child).success(), "clean exit");
    assert_eq!(
        query::<i64>(
            &db,
            "SELECT COUNT(*) FROM keyups WHERE end_reason = 'shutdown'"
        ),
        Some(1)
    );
    assert_eq!(
        query::<i64>(
            &db,
            "SELECT COUNT(*) FROM link_sessions WHERE end_reason = 'shutdown'"
        ),
        Some(1)
    );
    assert_eq!(
        query::<i64>(
            &db,
            "SELECT COUNT(*) FROM ami_sessions WHERE end_reason = 'shutdown'"
        ),
        Some(1)
    );
    assert_eq!(query::<i64>(&db, OPEN_KEYUP), Some(0));
    // The file is in WAL mode (kept in its header; readers never block the writer).
    assert_eq!(
        query::<String>(&db, "PRAGMA journal_mode").as_deref(),
        Some("wal")
    );

    // 2. Second run: an unkey reaches the file within about a second.
    let mut child = spawn(&config);
    wait_db(&db, "new open keyup", OPEN_KEYUP).await;
    sim.set_link_keyed("1999", "2000", false);
    let took = wait_db(
        &db,
        "unkey recorded",
        "SELECT COUNT(*) FROM keyups WHERE end_reason = 'unkeyed'",
    )
    .await;
    assert!(
        took < Duration::from_millis(1500),
        "unkey took {took:?} to reach the file"
    );
    sim.set_link_keyed("1999", "2000", true);
    wait_db(&db, "third open keyup", OPEN_KEYUP).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // let a heartbeat land
    child.kill().expect("kill -9");
    let killed_at = allstar_nexus::observe::now_ms();
    let _ = child.wait();

    // 3. The file is intact and still holds the open rows.
    assert_eq!(
        query::<String>(&db, "PRAGMA integrity_check").as_deref(),
        Some("ok")
    );
    assert_eq!(query::<i64>(&db, OPEN_KEYUP), Some(1));
    assert_eq!(query::<i64>(&db, OPEN_SESSION), Some(1));

    // 4. The next start closes them as `unknown`, at the last heartbeat.
    sim.set_link_keyed("1999", "2000", false);
    let d = start_daemon(
        sim.addr(),
        &["1999"],
        &format!("state_dir: {}\n", dir.display()),
    )
    .await;
    wait_db(
        &db,
        "unknown end",
        "SELECT COUNT(*) FROM keyups WHERE end_reason = 'unknown'",
    )
    .await;
    let end: i64 = query(
        &db,
        "SELECT end_ms FROM keyups WHERE end_reason = 'unknown'",
    )
    .expect("end");
    let lag = killed_at as i64 - end;
    assert!((0..=1600).contains(&lag), "closed {lag} ms before the kill");
    assert_eq!(
        query::<i64>(
            &db,
            "SELECT COUNT(*) FROM link_sessions WHERE end_reason = 'unknown'"
        ),
        Some(1)
    );
    // Every row of the earlier runs is still there.
    assert!(query::<i64>(&db, "SELECT COUNT(*) FROM keyups").unwrap_or(0) >= 3);
    d.shutdown.cancel();
    if let Some(h) = &d.app.history {
        h.closed().await;
    }
}
