//! The writer thread: the only connection that writes. Items arrive through a bounded
//! queue and are applied in one transaction per [`super::FLUSH_EVERY`]; a heartbeat
//! (`meta.last_alive_ms`) is written with every batch and at least once a second, so rows
//! a crash leaves open can be closed at the last moment the daemon was known alive.

use flume::{Receiver, RecvTimeoutError, TryRecvError};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio_util::sync::CancellationToken;

use super::{FLUSH_EVERY, Op};
use crate::audit::AuditEntry;
use crate::metrics::Metrics;
use crate::observe::now_ms;
use crate::state::engine::EngineSendError;
use crate::state::{ChangeEvent, ChangeKind, EngineInput, EngineSender, TodayCounts};

/// Most items in one transaction.
const MAX_BATCH: usize = 4096;
/// Rows deleted per table per retention step.
const PRUNE_BATCH: usize = 500;
/// Time between retention rounds.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Heartbeat interval while idle.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A link that vanishes within this long after its AMI session came back ended during the
/// outage (`end_reason = ami_lost`).
const RESYNC_WINDOW_MS: u64 = 120_000;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

pub(super) struct Parts {
    pub conn: Connection,
    pub rx: Receiver<Op>,
    pub depth: Arc<AtomicI64>,
    pub metrics: Metrics,
    /// Today's totals go to the state engine (the model's only writer).
    pub engine: EngineSender,
    pub retention_days: u32,
    pub shutdown: CancellationToken,
    pub closed: tokio::sync::watch::Sender<bool>,
}

/// What the writer remembers between batches.
#[derive(Default)]
struct Memo {
    /// When each server's AMI session last came up.
    reconnected: HashMap<String, u64>,
    /// A keyup was closed since the today-counts were last refreshed.
    today_dirty: bool,
    today_day: u64,
}

/// The writer's main loop; returns after shutdown has closed open rows.
pub(super) fn run(mut p: Parts) {
    let started = now_ms();
    match close_open(&p.conn, None, "unknown") {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            "[HISTORY] {n} row(s) left open by an unclean stop were closed as `unknown` end"
        ),
        Err(e) => tracing::error!("[HISTORY] cannot close rows left open: {e}"),
    }
    let mut memo = Memo::default();
    refresh_today(&p, &mut memo, started);
    let mut batch: Vec<Op> = Vec::with_capacity(256);
    let mut next_prune = Instant::now();
    let mut pruning = false;
    let mut last_beat = Instant::now();
    loop {
        let stopping = p.shutdown.is_cancelled();
        let open = collect(&p, &mut batch, stopping);
        let now = now_ms();
        if !batch.is_empty() || last_beat.elapsed() >= HEARTBEAT {
            flush(&mut p, &mut batch, &mut memo, now);
            last_beat = Instant::now();
        }
        if memo.today_dirty || now / DAY_MS != memo.today_day {
            refresh_today(&p, &mut memo, now);
        }
        if p.retention_days > 0 && (pruning || next_prune <= Instant::now()) {
            pruning = prune_step(&p.conn, p.retention_days, now);
            if !pruning {
                next_prune = Instant::now() + PRUNE_EVERY;
            }
        }
        if stopping || !open {
            break;
        }
    }
    match close_open(&p.conn, Some(now_ms()), "shutdown") {
        Ok(n) => tracing::info!("[HISTORY] stopped; {n} open row(s) closed at shutdown"),
        Err(e) => tracing::error!("[HISTORY] cannot close open rows at shutdown: {e}"),
    }
    let _ = p.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    let _ = p.closed.send(true);
}

/// Gathers one batch: waits for a first item (up to the flush interval), then takes what
/// arrives until the interval is over. While stopping, takes whatever is queued. Returns
/// false once every sender is gone.
fn collect(p: &Parts, batch: &mut Vec<Op>, stopping: bool) -> bool {
    let deadline = Instant::now() + FLUSH_EVERY;
    let mut open = true;
    while batch.len() < MAX_BATCH {
        let wait = if stopping {
            Duration::ZERO
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        let got = if wait.is_zero() {
            p.rx.try_recv().map_err(|e| match e {
                TryRecvError::Empty => RecvTimeoutError::Timeout,
                TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            })
        } else {
            p.rx.recv_timeout(wait)
        };
        match got {
            Ok(op) => {
                // Someone waits for this audit entry: commit now, not at the interval's end.
                let urgent = matches!(op, Op::Audit(_, Some(_)));
                batch.push(op);
                if urgent {
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                open = false;
                break;
            }
        }
        if p.shutdown.is_cancelled() && !stopping {
            break;
        }
    }
    let d = p.depth.fetch_sub(batch.len() as i64, Ordering::Relaxed) - batch.len() as i64;
    p.metrics.history_queue_depth.set(d.max(0));
    open
}

/// Applies a batch in one transaction (and the heartbeat). A batch holding an audit entry
/// someone waits for is committed with `synchronous = FULL` (the WAL synced to disk, as
/// the JSON Lines audit file was), and each waiter is told the outcome after the commit.
fn flush(p: &mut Parts, batch: &mut Vec<Op>, memo: &mut Memo, now: u64) {
    let n = batch.len() as u64;
    let durable = batch.iter().any(|op| matches!(op, Op::Audit(_, Some(_))));
    if durable {
        let _ = p.conn.pragma_update(None, "synchronous", "FULL");
    }
    let mut acks: Vec<(super::AuditAck, Result<(), String>)> = Vec::new();
    let result = (|| -> rusqlite::Result<()> {
        let tx = p.conn.transaction()?;
        for op in batch.drain(..) {
            let applied = apply(&tx, &op, memo);
            if let Err(e) = &applied {
                p.metrics.history_write_errors.inc();
                tracing::debug!("[HISTORY] one item not recorded: {e}");
            }
            if let Op::Audit(_, Some(ack)) = op {
                acks.push((ack, applied.map_err(|e| e.to_string())));
            }
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('last_alive_ms', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [now as i64],
        )?;
        tx.commit()
    })();
    batch.clear();
    if durable {
        let _ = p.conn.pragma_update(None, "synchronous", "NORMAL");
    }
    let committed = result.as_ref().map_err(|e| e.to_string()).cloned();
    for (ack, applied) in acks {
        let _ = ack.send(committed.clone().and(applied));
    }
    match result {
        Ok(()) => p.metrics.history_writes.inc_by(n),
        Err(e) => {
            p.metrics.history_write_errors.inc();
            tracing::error!("[HISTORY] a batch of {n} item(s) could not be written: {e}");
        }
    }
}

/// One audit row (`crate::audit::AuditEntry`; `time` is derived from `time_ms` on reading).
fn insert_audit(tx: &Transaction<'_>, e: &AuditEntry) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO audit (time_ms, actor, via, source, forwarded_for, action, node, target,
                            mode, permanent, result, status, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        e.time_ms.min(i64::MAX as u64) as i64,
        e.identity,
        e.via,
        e.source,
        e.forwarded_for,
        e.action,
        e.node,
        e.target,
        e.mode,
        e.permanent,
        e.result,
        e.status,
        e.detail
    ])
    .map(drop)
}

/// Adds `entries` (from an old JSON Lines audit file) in one transaction, skipping any
/// already present (same time, identity, action, result and detail). Returns how many
/// were added.
pub(crate) fn import_audit(
    conn: &mut Connection,
    entries: &[AuditEntry],
) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let mut added = 0;
    for e in entries {
        let seen: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM audit WHERE time_ms = ?1 AND actor = ?2
                     AND action = ?3 AND result = ?4 AND detail IS ?5)",
            )?
            .query_row(
                params![
                    e.time_ms.min(i64::MAX as u64) as i64,
                    e.identity,
                    e.action,
                    e.result,
                    e.detail
                ],
                |r| r.get(0),
            )?;
        if !seen {
            insert_audit(&tx, e)?;
            added += 1;
        }
    }
    tx.commit()?;
    Ok(added)
}

fn apply(tx: &Transaction<'_>, op: &Op, memo: &mut Memo) -> rusqlite::Result<()> {
    match op {
        Op::Change(p) => apply_change(tx, &p.event, memo),
        Op::Alert(a) => tx
            .prepare_cached(
                "INSERT INTO alerts (alert_id, time_ms, severity, title, message, node, key, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                a.id as i64,
                a.time_ms as i64,
                a.severity.as_str(),
                a.title,
                a.message,
                a.node,
                a.key,
                a.source
            ])
            .map(drop),
        Op::Audit(e, _) => insert_audit(tx, e),
        Op::Store {
            script,
            key,
            value: Some(v),
        } => tx
            .prepare_cached(
                "INSERT INTO script_store (script, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(script, key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![script, key, v])
            .map(drop),
        Op::Store {
            script,
            key,
            value: None,
        } => tx
            .prepare_cached("DELETE FROM script_store WHERE script = ?1 AND key = ?2")?
            .execute(params![script, key])
            .map(drop),
    }
}

/// Where a keyup came from: (`source`, link name).
fn keyup_source(ev: &ChangeEvent) -> (&'static str, Option<&str>) {
    match ev.kind {
        ChangeKind::RxKeyed | ChangeKind::RxUnkeyed => ("rx", None),
        ChangeKind::TxKeyed | ChangeKind::TxUnkeyed => ("tx", None),
        _ => ("link", ev.link.as_ref().map(|l| l.node.as_str())),
    }
}

fn apply_change(tx: &Transaction<'_>, ev: &ChangeEvent, memo: &mut Memo) -> rusqlite::Result<()> {
    use ChangeKind as K;
    let node = ev.node.as_deref().unwrap_or("");
    let t = ev.time_ms as i64;
    match ev.kind {
        K::LinkKeyed | K::RxKeyed | K::TxKeyed => {
            let (source, link) = keyup_source(ev);
            if open_keyup(tx, node, source, link)?.is_none() {
                tx.prepare_cached(
                    "INSERT INTO keyups (server, node, link, source, start_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![ev.server, node, link, source, t])?;
            }
        }
        K::LinkUnkeyed | K::RxUnkeyed | K::TxUnkeyed => {
            let (source, link) = keyup_source(ev);
            let secs = ev.duration_seconds.unwrap_or(0.0).max(0.0);
            end_keyup(tx, ev, node, source, link, secs, "unkeyed")?;
            memo.today_dirty |= source == "link";
        }
        K::LinkConnected => link_connected(tx, ev, node, memo)?,
        K::LinkUpdated => link_updated(tx, ev, node)?,
        K::LinkDisconnected => link_disconnected(tx, ev, node, memo)?,
        // Nothing to keep: the AMI session rows already say when a node was current.
        K::NodeUpdated => {}
        K::AmiConnected => {
            memo.reconnected.insert(ev.server.clone(), ev.time_ms);
            tx.prepare_cached(
                "UPDATE ami_sessions SET down_ms = ?2, end_reason = 'unknown'
                 WHERE server = ?1 AND down_ms IS NULL",
            )?
            .execute(params![ev.server, t])?;
            tx.prepare_cached("INSERT INTO ami_sessions (server, up_ms) VALUES (?1, ?2)")?
                .execute(params![ev.server, t])?;
        }
        K::AmiDisconnected => {
            let n = tx
                .prepare_cached(
                    "UPDATE ami_sessions SET down_ms = ?2, error = ?3, end_reason = 'lost'
                     WHERE server = ?1 AND down_ms IS NULL",
                )?
                .execute(params![ev.server, t, ev.error])?;
            if n == 0 {
                // Never came up (refused, bad login…): keep the failure as a zero-length row.
                tx.prepare_cached(
                    "INSERT INTO ami_sessions (server, up_ms, down_ms, error, end_reason)
                     VALUES (?1, ?2, ?2, ?3, 'failed')",
                )?
                .execute(params![ev.server, t, ev.error])?;
            }
            tx.prepare_cached(
                "UPDATE link_sessions SET ami_lost_ms = ?2
                 WHERE server = ?1 AND disconnected_ms IS NULL AND ami_lost_ms IS NULL",
            )?
            .execute(params![ev.server, t])?;
        }
    }
    Ok(())
}

fn open_keyup(
    tx: &Transaction<'_>,
    node: &str,
    source: &str,
    link: Option<&str>,
) -> rusqlite::Result<Option<(i64, i64)>> {
    tx.prepare_cached(
        "SELECT id, start_ms FROM keyups
         WHERE node = ?1 AND source = ?2 AND link IS ?3 AND end_ms IS NULL
         ORDER BY id DESC LIMIT 1",
    )?
    .query_row(params![node, source, link], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
}

/// Closes the open keyup (or records a complete one when its start was not seen) and adds
/// it to the hourly totals.
fn end_keyup(
    tx: &Transaction<'_>,
    ev: &ChangeEvent,
    node: &str,
    source: &str,
    link: Option<&str>,
    secs: f64,
    reason: &str,
) -> rusqlite::Result<()> {
    let end = ev.time_ms as i64;
    let start = match open_keyup(tx, node, source, link)? {
        Some((id, start)) => {
            tx.prepare_cached(
                "UPDATE keyups SET end_ms = ?2, duration_s = ?3, end_reason = ?4 WHERE id = ?1",
            )?
            .execute(params![id, end, secs, reason])?;
            start
        }
        None => {
            let start = end - (secs * 1000.0).round() as i64;
            tx.prepare_cached(
                "INSERT INTO keyups (server, node, link, source, start_ms, end_ms, duration_s, end_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![ev.server, node, link, source, start, end, secs, reason])?;
            start
        }
    };
    add_hour(tx, node, source, link, start, secs)
}

/// The `keyup_hours.link` key: the link's name, or `(rx)` / `(tx)` for the local radio.
pub(crate) fn hour_key(source: &str, link: Option<&str>) -> String {
    match link {
        Some(l) if source == "link" => l.to_owned(),
        _ => format!("({source})"),
    }
}

fn add_hour(
    tx: &Transaction<'_>,
    node: &str,
    source: &str,
    link: Option<&str>,
    start_ms: i64,
    secs: f64,
) -> rusqlite::Result<()> {
    let hour = start_ms.max(0) / HOUR_MS as i64 * HOUR_MS as i64;
    tx.prepare_cached(
        "INSERT INTO keyup_hours (node, link, hour_ms, keyups, talk_seconds) VALUES (?1, ?2, ?3, 1, ?4)
         ON CONFLICT(node, hour_ms, link) DO UPDATE
         SET keyups = keyups + 1, talk_seconds = talk_seconds + excluded.talk_seconds",
    )?
    .execute(params![node, hour_key(source, link), hour, secs])
    .map(drop)
}

fn link_connected(
    tx: &Transaction<'_>,
    ev: &ChangeEvent,
    node: &str,
    memo: &Memo,
) -> rusqlite::Result<()> {
    let Some(l) = &ev.link else { return Ok(()) };
    // A session still open for this link ended unseen (e.g. during an AMI outage).
    close_session(tx, ev, node, &l.node, memo)?;
    let connected = (ev.time_ms as i64) - (l.connected_seconds as i64) * 1000;
    tx.prepare_cached(
        "INSERT INTO link_sessions (server, node, link, kind, ip, direction, mode, connected_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        ev.server,
        node,
        l.node,
        json_word(&l.kind),
        l.ip,
        l.direction.as_ref().map(json_word),
        l.mode.as_ref().map(json_word),
        connected
    ])
    .map(drop)
}

/// A serde enum's wire word (`IN`, `T`, `allstar`).
fn json_word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn link_updated(tx: &Transaction<'_>, ev: &ChangeEvent, node: &str) -> rusqlite::Result<()> {
    let Some(l) = &ev.link else { return Ok(()) };
    let id: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM link_sessions WHERE node = ?1 AND link = ?2 AND disconnected_ms IS NULL
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row(params![node, l.node], |r| r.get(0))
        .optional()?;
    let Some(id) = id else { return Ok(()) };
    let (ip, dir, mode) = (
        l.ip.clone(),
        l.direction.as_ref().map(json_word),
        l.mode.as_ref().map(json_word),
    );
    tx.prepare_cached(
        "UPDATE link_sessions SET ip = ?2, direction = ?3, mode = ?4, ami_lost_ms = NULL WHERE id = ?1",
    )?
    .execute(params![id, ip, dir, mode])?;
    for f in &ev.fields {
        let value = match *f {
            "ip" => ip.clone(),
            "direction" => dir.clone(),
            "mode" => mode.clone(),
            "state" => l.state.as_ref().map(json_word),
            "reconnects" => Some(l.reconnects.to_string()),
            _ => None,
        };
        tx.prepare_cached(
            "INSERT INTO link_changes (session_id, time_ms, field, value) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![id, ev.time_ms as i64, f, value])?;
    }
    Ok(())
}

fn link_disconnected(
    tx: &Transaction<'_>,
    ev: &ChangeEvent,
    node: &str,
    memo: &mut Memo,
) -> rusqlite::Result<()> {
    let Some(l) = &ev.link else { return Ok(()) };
    close_session(tx, ev, node, &l.node, memo)?;
    // A link that goes away while keyed: its keyup ends with it.
    if open_keyup(tx, node, "link", Some(&l.node))?.is_some() {
        let secs = ev
            .duration_seconds
            .unwrap_or_else(|| l.last_keyed_seconds.map(|s| s as f64).unwrap_or(0.0));
        end_keyup(tx, ev, node, "link", Some(&l.node), secs, "disconnected")?;
        memo.today_dirty = true;
    }
    Ok(())
}

/// Closes the open session of `link`: `ami_lost` when it vanished in the resync after an
/// AMI outage, `disconnected` otherwise.
fn close_session(
    tx: &Transaction<'_>,
    ev: &ChangeEvent,
    node: &str,
    link: &str,
    memo: &Memo,
) -> rusqlite::Result<()> {
    let after_outage = memo
        .reconnected
        .get(&ev.server)
        .is_some_and(|&up| ev.time_ms.saturating_sub(up) <= RESYNC_WINDOW_MS);
    tx.prepare_cached(
        "UPDATE link_sessions SET disconnected_ms = ?3,
             end_reason = CASE WHEN ami_lost_ms IS NOT NULL AND ?4 THEN 'ami_lost' ELSE 'disconnected' END
         WHERE node = ?1 AND link = ?2 AND disconnected_ms IS NULL",
    )?
    .execute(params![node, link, ev.time_ms as i64, after_outage])
    .map(drop)
}

/// Closes every open row: at `at`, or (after a crash, `None`) at the last heartbeat.
/// Returns how many rows were closed.
pub(crate) fn close_open(
    conn: &Connection,
    at: Option<u64>,
    reason: &str,
) -> rusqlite::Result<usize> {
    let at = match at {
        Some(t) => t as i64,
        None => conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'last_alive_ms'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(now_ms() as i64),
    };
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "INSERT INTO keyup_hours (node, link, hour_ms, keyups, talk_seconds)
         SELECT node, COALESCE(link, '(' || source || ')'), (start_ms / 3600000) * 3600000,
                COUNT(*), TOTAL(MAX(0, (?1 - start_ms) / 1000.0))
         FROM keyups WHERE end_ms IS NULL GROUP BY 1, 2, 3
         ON CONFLICT(node, hour_ms, link) DO UPDATE
         SET keyups = keyups + excluded.keyups, talk_seconds = talk_seconds + excluded.talk_seconds",
        [at],
    )?;
    let mut n = tx.execute(
        "UPDATE keyups SET end_ms = MAX(?1, start_ms), duration_s = MAX(0, (?1 - start_ms) / 1000.0),
             end_reason = ?2 WHERE end_ms IS NULL",
        params![at, reason],
    )?;
    n += tx.execute(
        "UPDATE link_sessions SET disconnected_ms = MAX(?1, connected_ms), end_reason = ?2
         WHERE disconnected_ms IS NULL",
        params![at, reason],
    )?;
    n += tx.execute(
        "UPDATE ami_sessions SET down_ms = MAX(?1, up_ms), end_reason = ?2 WHERE down_ms IS NULL",
        params![at, reason],
    )?;
    tx.commit()?;
    Ok(n)
}

/// Re-reads today's (UTC) per-link totals from the store and hands them to the state
/// engine, which installs them in the node model. A full engine queue leaves them due, so
/// the next round tries again.
fn refresh_today(p: &Parts, memo: &mut Memo, now: u64) {
    let midnight = now / DAY_MS * DAY_MS;
    let read = || -> rusqlite::Result<TodayCounts> {
        let mut st = p.conn.prepare_cached(
            "SELECT node, link, SUM(keyups), TOTAL(talk_seconds) FROM keyup_hours
             WHERE hour_ms >= ?1 AND link NOT IN ('(rx)', '(tx)') GROUP BY node, link",
        )?;
        let rows = st.query_map([midnight as i64], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                (r.get::<_, i64>(2)?.max(0) as u64, r.get::<_, f64>(3)?),
            ))
        })?;
        rows.collect()
    };
    memo.today_dirty = false;
    match read() {
        Ok(counts) => match p.engine.try_send(EngineInput::Today(counts)) {
            Ok(()) | Err(EngineSendError::Stopped) => {}
            Err(EngineSendError::Full) => memo.today_dirty = true,
        },
        Err(e) => tracing::warn!("[HISTORY] cannot read today's totals: {e}"),
    }
    memo.today_day = now / DAY_MS;
}

/// Deletes one small batch of expired rows from each table. Returns whether more remain.
pub(crate) fn prune_step(conn: &Connection, days: u32, now: u64) -> bool {
    let cutoff = now.saturating_sub(u64::from(days) * DAY_MS) as i64;
    let tables: [(&str, &str); 6] = [
        ("keyups", "start_ms"),
        ("link_sessions", "disconnected_ms"),
        ("link_changes", "time_ms"),
        ("ami_sessions", "down_ms"),
        ("alerts", "time_ms"),
        ("audit", "time_ms"),
    ];
    let mut more = false;
    for (table, col) in tables {
        let sql = format!(
            "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {col} < ?1 LIMIT {PRUNE_BATCH})"
        );
        match conn.execute(&sql, [cutoff]) {
            Ok(n) => more |= n >= PRUNE_BATCH,
            Err(e) => tracing::warn!("[HISTORY] retention: cannot prune {table}: {e}"),
        }
    }
    let hour_cutoff = cutoff / HOUR_MS as i64 * HOUR_MS as i64;
    match conn.execute(
        &format!(
            "DELETE FROM keyup_hours WHERE (node, hour_ms, link) IN
             (SELECT node, hour_ms, link FROM keyup_hours WHERE hour_ms < ?1 LIMIT {PRUNE_BATCH})"
        ),
        [hour_cutoff],
    ) {
        Ok(n) => more |= n >= PRUNE_BATCH,
        Err(e) => tracing::warn!("[HISTORY] retention: cannot prune keyup_hours: {e}"),
    }
    more
}
