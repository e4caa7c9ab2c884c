//! Unit tests of the history store: migrations from an old file, crash recovery, query
//! parameters, statistics edges.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::*;
use crate::state::{ChangeEvent, ChangeKind, EngineSender, LinkKind, LinkView};

fn temp_db(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nexus-history-unit-{tag}-{}-{}",
        std::process::id(),
        crate::observe::now_ms()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("history.db")
}

fn link(name: &str) -> LinkView {
    LinkView {
        node: name.into(),
        kind: LinkKind::of(name),
        elapsed: "00:00:00".into(),
        ..LinkView::default()
    }
}

fn unkey(node: &str, l: &str, at: u64, secs: f64) -> Arc<Published> {
    let mut ev = ChangeEvent::new(ChangeKind::LinkUnkeyed, "s", Some(node));
    ev.time_ms = at;
    ev.link = Some(link(l));
    ev.duration_seconds = Some(secs);
    Published::new(ev)
}

fn open(path: &Path, shutdown: &CancellationToken) -> History {
    // Retention off: these tests write rows dated 1970.
    let cfg = HistoryConfig {
        retention_days: 0,
        ..HistoryConfig::default()
    };
    History::open(
        path,
        &cfg,
        EngineSender::channel().0,
        Metrics::default(),
        shutdown.clone(),
    )
    .expect("open")
}

fn wait_rows(h: &History, sql: &str, n: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got: i64 = h.read(|c| c.query_row(sql, [], |r| r.get(0))).unwrap_or(-1);
        if got == n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{sql}: {got} != {n}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_processes_opening_a_new_file_at_once_both_end_at_the_current_schema() {
    let path = temp_db("race");
    let start = Arc::new(std::sync::Barrier::new(4));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (path, start) = (path.clone(), start.clone());
            std::thread::spawn(move || {
                let mut c = Connection::open(&path).expect("open");
                c.busy_timeout(Duration::from_secs(10))
                    .expect("busy timeout");
                start.wait();
                schema::migrate(&mut c)
            })
        })
        .collect();
    for w in workers {
        assert_eq!(w.join().expect("thread"), Ok(()));
    }
    let c = Connection::open(&path).expect("open");
    assert_eq!(schema::version(&c).expect("version"), schema::CURRENT);
}

#[test]
fn a_version_1_file_is_migrated_and_its_hourly_totals_backfilled() {
    let path = temp_db("migrate");
    {
        let mut c = Connection::open(&path).expect("open");
        schema::migrate_to(&mut c, 1).expect("v1");
        assert_eq!(schema::version(&c).expect("version"), 1);
        c.execute_batch(
            "INSERT INTO keyups (server, node, link, source, start_ms, end_ms, duration_s, end_reason)
             VALUES ('s', '1999', '2000', 'link', 7200000, 7203000, 3.0, 'unkeyed'),
                    ('s', '1999', '2000', 'link', 7300000, 7301500, 1.5, 'unkeyed'),
                    ('s', '1999', NULL, 'rx', 7300000, 7301000, 1.0, 'unkeyed');",
        )
        .expect("old rows");
    }
    let shutdown = CancellationToken::new();
    let h = open(&path, &shutdown);
    let (v, hours): (u32, Vec<(String, i64, f64)>) = h.read(|c| {
        let v = schema::version(c).expect("version");
        let mut st = c
            .prepare("SELECT link, keyups, talk_seconds FROM keyup_hours ORDER BY link")
            .expect("prepare");
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        (v, rows)
    });
    assert_eq!(v, schema::CURRENT);
    assert_eq!(
        hours,
        vec![("(rx)".into(), 1, 1.0), ("2000".into(), 2, 4.5)]
    );
    let q = RangeQuery {
        since_ms: Some(0),
        until_ms: Some(10 * 3_600_000),
        limit: 10,
        ..RangeQuery::default()
    };
    let t = h.read(|c| query::talkers(c, &q)).expect("talkers");
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].keyups, t[0].talk_seconds), (2, 4.5));
    shutdown.cancel();
}

#[test]
fn a_newer_file_is_refused_not_damaged() {
    let path = temp_db("newer");
    {
        let c = Connection::open(&path).expect("open");
        c.pragma_update(None, "user_version", 99).expect("set");
    }
    let err = History::open(
        &path,
        &HistoryConfig::default(),
        EngineSender::channel().0,
        Metrics::default(),
        CancellationToken::new(),
    )
    .expect_err("refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[test]
fn talkers_add_partial_hours_from_raw_rows_to_whole_hours() {
    let path = temp_db("talkers");
    let shutdown = CancellationToken::new();
    let h = open(&path, &shutdown);
    let base = 1_000 * 3_600_000u64; // on an hour boundary
    // 10:30 (partial first hour), 11:10 and 12:50 (whole hours), 13:20 (partial last hour).
    for (at, secs) in [
        (base + 1_800_000, 1.0),
        (base + 4_200_000, 2.0),
        (base + 10_200_000, 4.0),
        (base + 12_000_000, 8.0),
    ] {
        h.record(unkey("1999", "2000", at, secs));
    }
    wait_rows(&h, "SELECT COUNT(*) FROM keyups", 4);
    let q = |since: u64, until: u64| RangeQuery {
        since_ms: Some(since),
        until_ms: Some(until),
        limit: 10,
        ..RangeQuery::default()
    };
    let got = |r: RangeQuery| {
        h.read(|c| query::talkers(c, &r))
            .expect("talkers")
            .first()
            .map(|t| (t.keyups, t.talk_seconds))
    };
    // Every row is counted by its start time, whichever path answers.
    assert_eq!(got(q(base + 1_700_000, base + 12_100_000)), Some((4, 15.0)));
    assert_eq!(got(q(base + 1_900_000, base + 11_000_000)), Some((2, 6.0)));
    assert_eq!(got(q(base + 4_000_000, base + 4_300_000)), Some((1, 2.0)));
    assert_eq!(got(q(base + 4_300_000, base + 4_400_000)), None);
    shutdown.cancel();
}

#[test]
fn rows_left_open_are_closed_as_unknown_at_the_last_heartbeat() {
    let path = temp_db("crash");
    {
        let mut c = Connection::open(&path).expect("open");
        schema::migrate(&mut c).expect("schema");
        c.execute_batch(
            "INSERT INTO meta (key, value) VALUES ('last_alive_ms', 5000);
             INSERT INTO keyups (server, node, link, source, start_ms) VALUES ('s', '1999', '2000', 'link', 2000);
             INSERT INTO link_sessions (server, node, link, connected_ms) VALUES ('s', '1999', '2000', 1000);
             INSERT INTO ami_sessions (server, up_ms) VALUES ('s', 500);",
        )
        .expect("rows");
    }
    let shutdown = CancellationToken::new();
    let h = open(&path, &shutdown);
    wait_rows(
        &h,
        "SELECT COUNT(*) FROM keyups WHERE end_reason = 'unknown' AND end_ms = 5000 AND duration_s = 3.0",
        1,
    );
    wait_rows(
        &h,
        "SELECT COUNT(*) FROM link_sessions WHERE end_reason = 'unknown' AND disconnected_ms = 5000",
        1,
    );
    wait_rows(
        &h,
        "SELECT COUNT(*) FROM ami_sessions WHERE end_reason = 'unknown' AND down_ms = 5000",
        1,
    );
    shutdown.cancel();
}

#[test]
fn parameters_are_checked_and_named() {
    let q = |pairs: &[(&str, &str)]| {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RangeQuery::parse(&m, &["node", "since", "until", "limit", "cursor", "bucket"])
    };
    let ok = q(&[
        ("since", "2026-11-29T18:00:00Z"),
        ("until", "1795978800000"),
        ("limit", "1000"),
    ])
    .expect("valid");
    assert_eq!(ok.since_ms, Some(1_795_975_200_000));
    assert_eq!(ok.until_ms, Some(1_795_978_800_000));
    assert_eq!(ok.limit, 1000);
    assert_eq!(q(&[]).expect("no parameters").limit, 100, "default limit");
    assert_eq!(q(&[("bucket", "15m")]).expect("bucket").bucket_ms, 900_000);
    for (k, v) in [
        ("limit", "0"),
        ("limit", "x"),
        ("since", "tomorrow"),
        ("cursor", "-1"),
        ("bucket", "90s"),
        ("node", "19 99"),
        ("link", "2000"),
    ] {
        let e = q(&[(k, v)]).expect_err("invalid").to_string();
        assert!(e.contains(&format!("`{k}`")), "{k}={v}: {e}");
    }
}

fn rx_unkey(node: &str, at: u64, secs: f64) -> Arc<Published> {
    let mut ev = ChangeEvent::new(ChangeKind::RxUnkeyed, "s", Some(node));
    ev.time_ms = at;
    ev.duration_seconds = Some(secs);
    Published::new(ev)
}

#[test]
fn the_local_receiver_is_counted_beside_the_talkers_not_among_them() {
    let path = temp_db("local-rx");
    let shutdown = CancellationToken::new();
    let h = open(&path, &shutdown);
    let base = 1_000 * 3_600_000u64;
    // Receiver: 10:30 (partial first hour), 11:10 (whole hour); a link at 11:20; the
    // transmitter (counted nowhere) at 11:30; another node's receiver.
    h.record(rx_unkey("1999", base + 1_800_000, 1.5));
    h.record(rx_unkey("1999", base + 4_200_000, 2.0));
    h.record(unkey("1999", "2000", base + 4_800_000, 4.0));
    let mut tx = ChangeEvent::new(ChangeKind::TxUnkeyed, "s", Some("1999"));
    tx.time_ms = base + 5_400_000;
    tx.duration_seconds = Some(9.0);
    h.record(Published::new(tx));
    h.record(rx_unkey("2001", base + 4_200_000, 7.0));
    wait_rows(&h, "SELECT COUNT(*) FROM keyups", 5);
    let q = RangeQuery {
        node: Some("1999".into()),
        since_ms: Some(base + 1_000_000),
        until_ms: Some(base + 9_000_000),
        limit: 10,
        ..RangeQuery::default()
    };
    let (talkers, local) = h
        .read(|c| query::talkers_and_local_rx(c, &q))
        .expect("talkers");
    assert_eq!(
        talkers
            .iter()
            .map(|t| (t.link.as_str(), t.keyups))
            .collect::<Vec<_>>(),
        [("2000", 1)]
    );
    assert_eq!((local.keyups, local.talk_seconds), (2, 3.5));
    shutdown.cancel();
}

#[test]
fn audit_rows_of_a_version_2_file_read_back_after_migration() {
    let path = temp_db("audit-v2");
    {
        let mut c = Connection::open(&path).expect("open");
        schema::migrate_to(&mut c, 2).expect("v2");
        c.execute_batch(
            "INSERT INTO audit (time_ms, actor, action, node, target, result, detail)
             VALUES (5000, 'root', 'connect', '1999', '2003', 'verified', 'old row');",
        )
        .expect("old row");
    }
    let shutdown = CancellationToken::new();
    let h = open(&path, &shutdown);
    let page = h
        .audit_blocking(&crate::audit::AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .expect("audit");
    assert_eq!(page.entries.len(), 1);
    let e = &page.entries[0];
    assert_eq!(
        (
            e.identity.as_str(),
            e.via.as_str(),
            e.status,
            e.detail.as_str()
        ),
        ("root", "", 0, "old row")
    );
    assert_eq!(e.source, None);
    shutdown.cancel();
}

mod audit_store {
    use super::*;
    use crate::audit::tests::entry;
    use crate::audit::{AuditLog, AuditQuery, AuditStore, FILE_NAME};

    fn all(limit: usize) -> AuditQuery {
        AuditQuery {
            limit,
            ..AuditQuery::default()
        }
    }

    fn store(h: &History) -> Option<Arc<dyn AuditStore>> {
        Some(Arc::new(h.clone()))
    }

    #[tokio::test]
    async fn entries_are_committed_before_append_returns_and_survive_a_restart() {
        let db = temp_db("audit-restart");
        let dir = db.parent().expect("dir").to_owned();
        let stop = CancellationToken::new();
        let h = open(&db, &stop);
        let log = AuditLog::open(&dir, store(&h));
        assert!(log.in_history());
        for i in 0..5u64 {
            let mut e = entry(
                1000 + i,
                if i % 2 == 0 { "alice" } else { "bob" },
                "verified",
            );
            e.via = "token".into();
            e.source = Some("192.0.2.9".into());
            e.mode = Some("transceive".into());
            e.permanent = Some(i == 4);
            e.status = 200;
            e.detail = format!("try {i}");
            log.append(e).await.expect("append");
            // Committed, not merely queued: a fresh connection sees it at once.
            let rows: i64 = connect(&db, true)
                .expect("reader")
                .query_row("SELECT COUNT(*) FROM audit", [], |r| r.get(0))
                .expect("count");
            assert_eq!(rows, i as i64 + 1);
        }
        assert!(
            !dir.join(FILE_NAME).exists(),
            "no JSON Lines file with history"
        );
        stop.cancel();
        h.closed().await;

        let stop = CancellationToken::new();
        let log = AuditLog::open(&dir, store(&open(&db, &stop)));
        let page = log.query(all(100)).await.expect("query");
        let times: Vec<u64> = page.entries.iter().map(|e| e.time_ms).collect();
        assert_eq!(times, [1000, 1001, 1002, 1003, 1004], "oldest first");
        let last = &page.entries[4];
        assert_eq!(
            (
                last.identity.as_str(),
                last.via.as_str(),
                last.status,
                last.permanent
            ),
            ("alice", "token", 200, Some(true))
        );
        assert_eq!(last.source.as_deref(), Some("192.0.2.9"));
        assert_eq!(last.detail, "try 4");
        assert!(
            last.time.starts_with("1970-01-01T00:00:01"),
            "{}",
            last.time
        );
        assert_eq!(page.next_cursor, None);

        // Filters as the file had them; pages of 2 walk back with no gap or repeat.
        let bob = log
            .query(AuditQuery {
                identity: Some("bob".into()),
                ..all(100)
            })
            .await
            .expect("query");
        assert_eq!(
            bob.entries.iter().map(|e| e.time_ms).collect::<Vec<_>>(),
            [1001, 1003]
        );
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = log
                .query(AuditQuery { cursor, ..all(2) })
                .await
                .expect("page");
            let mut t: Vec<u64> = p.entries.iter().map(|e| e.time_ms).collect();
            t.extend(seen);
            seen = t;
            match p.next_cursor {
                Some(c) => cursor = Some(c.parse().expect("cursor")),
                None => break,
            }
        }
        assert_eq!(seen, [1000, 1001, 1002, 1003, 1004]);
        stop.cancel();
    }

    #[tokio::test]
    async fn an_old_jsonl_file_is_imported_once_and_kept_as_an_archive() {
        let db = temp_db("audit-import");
        let dir = db.parent().expect("dir").to_owned();
        // An older run, without history, wrote three entries (and one torn line).
        let file = AuditLog::new(&dir);
        for i in 0..3 {
            file.append(entry(i, "alice", "verified"))
                .await
                .expect("append");
        }
        let text = std::fs::read_to_string(dir.join(FILE_NAME)).expect("read");
        std::fs::write(dir.join(FILE_NAME), format!("{text}{{\"torn")).expect("write");

        let stop = CancellationToken::new();
        let h = open(&db, &stop);
        let log = AuditLog::open(&dir, store(&h));
        assert!(!dir.join(FILE_NAME).exists(), "the file is moved aside");
        assert!(dir.join("audit.jsonl.imported").exists(), "and kept");
        log.append(entry(10, "bob", "refused"))
            .await
            .expect("append");
        let got = log.query(all(100)).await.expect("query");
        assert_eq!(
            got.entries.iter().map(|e| e.time_ms).collect::<Vec<_>>(),
            [0, 1, 2, 10]
        );

        // The same file showing up again (a restored backup) adds nothing twice, and its
        // archive does not overwrite the first one.
        std::fs::copy(dir.join("audit.jsonl.imported"), dir.join(FILE_NAME)).expect("copy");
        let log = AuditLog::open(&dir, store(&h));
        assert!(dir.join("audit.jsonl.imported.1").exists());
        assert_eq!(log.query(all(100)).await.expect("query").entries.len(), 4);
        stop.cancel();
    }
}

#[test]
fn a_full_queue_drops_counts_and_never_blocks() {
    let path = temp_db("overflow");
    let shutdown = CancellationToken::new();
    let metrics = Metrics::default();
    let cfg = HistoryConfig {
        retention_days: 0,
        queue: 1,
        ..HistoryConfig::default()
    };
    let h = History::open(
        &path,
        &cfg,
        EngineSender::channel().0,
        metrics.clone(),
        shutdown.clone(),
    )
    .expect("open");
    // Another connection holds the write lock: the writer's next commit waits on it, so
    // the one-item queue fills and stays full.
    let blocker = Connection::open(&path).expect("open");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("write lock");
    let (mut sent, mut refused, mut slowest) = (0u64, 0u64, Duration::ZERO);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while refused < 500 && std::time::Instant::now() < deadline {
        let t = std::time::Instant::now();
        if !h.record(unkey("1999", "2000", 1_000_000 + sent, 1.0)) {
            refused += 1;
        }
        slowest = slowest.max(t.elapsed());
        sent += 1;
    }
    assert_eq!(refused, 500, "a full queue refuses ({sent} sent)");
    assert!(
        slowest < Duration::from_millis(20),
        "record() never waits for the writer: slowest call {slowest:?}"
    );
    assert_eq!(
        metrics.history_queue_dropped.get(),
        refused,
        "every drop counted"
    );
    // The warning went through the rate limiter: the first drop wrote a line, so one more
    // within 10 s is held back.
    assert_eq!(h.inner.limiter.allow("dropped"), LogDecision::Hold);
    // The writer catches up once the disk is free again.
    blocker.execute_batch("ROLLBACK").expect("unlock");
    wait_rows(&h, "SELECT COUNT(*) > 0 FROM keyups", 1);
    shutdown.cancel();
}

/// Three of each kind of row, at t1 < t2 < t3 (sessions last 10 s; the last stays open).
#[test]
fn since_and_until_leave_rows_outside_the_range_out() {
    use crate::alerts::{Alert, Severity};
    let path = temp_db("range");
    let shutdown = CancellationToken::new();
    let h = open(&path, &shutdown);
    let t = [1_000_000u64, 2_000_000, 3_000_000];
    for (i, &at) in t.iter().enumerate() {
        h.record(unkey("1999", "2000", at + 1000, 1.0));
        let mut up = ChangeEvent::new(ChangeKind::AmiConnected, "s", None);
        up.time_ms = at;
        h.record(Published::new(up));
        let mut c = ChangeEvent::new(ChangeKind::LinkConnected, "s", Some("1999"));
        c.time_ms = at;
        c.link = Some(link("2000"));
        h.record(Published::new(c));
        if i < 2 {
            let mut d = ChangeEvent::new(ChangeKind::LinkDisconnected, "s", Some("1999"));
            d.time_ms = at + 10_000;
            d.link = Some(link("2000"));
            h.record(Published::new(d));
            let mut down = ChangeEvent::new(ChangeKind::AmiDisconnected, "s", None);
            down.time_ms = at + 10_000;
            down.error = Some("connection reset".into());
            h.record(Published::new(down));
        }
        h.record_alert(Arc::new(Alert {
            id: i as u64 + 1,
            time_ms: at,
            severity: Severity::Info,
            title: format!("t{}", i + 1),
            message: String::new(),
            node: Some("1999".into()),
            key: None,
            source: "test".into(),
            truncated: false,
        }));
    }
    wait_rows(&h, "SELECT COUNT(*) FROM alerts", 3);
    let range = |since: Option<u64>, until: Option<u64>| RangeQuery {
        since_ms: since,
        until_ms: until,
        limit: 10,
        ..RangeQuery::default()
    };
    // (since, until) → which of t1..t3 each table returns, newest first.
    for (since, until, want) in [
        (Some(t[1]), Some(t[1] + 5_000), vec![2]),
        (Some(t[1]), None, vec![3, 2]),
        (None, Some(t[1] + 5_000), vec![2, 1]),
        (Some(t[0] + 20_000), Some(t[1] - 1), vec![]),
        (None, None, vec![3, 2, 1]),
    ] {
        let q = range(since, until);
        let which = |starts: Vec<u64>| -> Vec<usize> {
            starts
                .iter()
                .map(|s| t.iter().position(|x| x == s).map_or(0, |i| i + 1))
                .collect()
        };
        let (k, l, a, al) = h.read(|c| {
            (
                query::keyups(c, &q).expect("keyups").items,
                query::links(c, &q).expect("links").items,
                query::ami(c, &q).expect("ami").items,
                query::alerts(c, &q).expect("alerts").items,
            )
        });
        let ctx = format!("since {since:?} until {until:?}");
        assert_eq!(
            which(k.iter().map(|r| r.start_ms).collect()),
            want,
            "keyups, {ctx}"
        );
        assert_eq!(
            which(l.iter().map(|r| r.connected_ms).collect()),
            want,
            "links, {ctx}"
        );
        assert_eq!(
            which(a.iter().map(|r| r.up_ms).collect()),
            want,
            "ami, {ctx}"
        );
        // An alert has an instant, not a span: `until` inside t2's 10 s still ends at t2.
        assert_eq!(
            which(al.iter().map(|r| r.time_ms).collect()),
            want,
            "alerts, {ctx}"
        );
    }
    // A session still open overlaps every later range; a keyup or alert does not.
    let q = range(Some(t[2] + 60_000), None);
    let (k, l, a, al) = h.read(|c| {
        (
            query::keyups(c, &q).expect("keyups").items.len(),
            query::links(c, &q).expect("links").items,
            query::ami(c, &q).expect("ami").items,
            query::alerts(c, &q).expect("alerts").items.len(),
        )
    });
    assert_eq!((k, al), (0, 0));
    assert_eq!(l.iter().map(|r| r.connected_ms).collect::<Vec<_>>(), [t[2]]);
    assert_eq!(a.iter().map(|r| r.up_ms).collect::<Vec<_>>(), [t[2]]);
    shutdown.cancel();
}

#[test]
fn the_read_connection_keeps_a_small_page_cache() {
    let path = temp_db("cache");
    let shutdown = CancellationToken::new();
    let h = open(&path, &shutdown);
    let size: i64 = h
        .read(|c| c.pragma_query_value(None, "cache_size", |r| r.get(0)))
        .expect("cache_size");
    assert_eq!(size, -256, "256 KiB, not SQLite's 2 MiB default");
    shutdown.cancel();
}
