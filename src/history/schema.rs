//! The history database's schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! Each entry of [`MIGRATIONS`] moves the file one version up inside one transaction; a
//! file newer than this build is refused with a clear error instead of being damaged.

use rusqlite::Connection;

/// Version 1: the raw tables.
const V1: &str = "
CREATE TABLE keyups (
    id INTEGER PRIMARY KEY,
    server TEXT NOT NULL,
    node TEXT NOT NULL,
    link TEXT,
    source TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER,
    duration_s REAL,
    end_reason TEXT
);
CREATE INDEX keyups_node_start ON keyups(node, start_ms);
CREATE INDEX keyups_start ON keyups(start_ms);
CREATE INDEX keyups_open ON keyups(node, source, link) WHERE end_ms IS NULL;

CREATE TABLE link_sessions (
    id INTEGER PRIMARY KEY,
    server TEXT NOT NULL,
    node TEXT NOT NULL,
    link TEXT NOT NULL,
    kind TEXT,
    ip TEXT,
    direction TEXT,
    mode TEXT,
    connected_ms INTEGER NOT NULL,
    disconnected_ms INTEGER,
    end_reason TEXT,
    ami_lost_ms INTEGER
);
CREATE INDEX link_sessions_node ON link_sessions(node, connected_ms);
CREATE INDEX link_sessions_connected ON link_sessions(connected_ms);
CREATE INDEX link_sessions_open ON link_sessions(node, link) WHERE disconnected_ms IS NULL;

CREATE TABLE link_changes (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    field TEXT NOT NULL,
    value TEXT
);
CREATE INDEX link_changes_session ON link_changes(session_id);

CREATE TABLE ami_sessions (
    id INTEGER PRIMARY KEY,
    server TEXT NOT NULL,
    up_ms INTEGER NOT NULL,
    down_ms INTEGER,
    error TEXT,
    end_reason TEXT
);
CREATE INDEX ami_sessions_up ON ami_sessions(up_ms);

CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    alert_id INTEGER NOT NULL,
    time_ms INTEGER NOT NULL,
    severity TEXT NOT NULL,
    title TEXT NOT NULL,
    message TEXT NOT NULL,
    node TEXT,
    key TEXT,
    source TEXT NOT NULL
);
CREATE INDEX alerts_time ON alerts(time_ms);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    node TEXT,
    target TEXT,
    result TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_time ON audit(time_ms);

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 2: per-hour keyup totals (top talkers and charts without scanning every
/// keyup, backfilled from `keyups`) and the durable `nexus.store`.
const V2: &str = "
CREATE TABLE keyup_hours (
    node TEXT NOT NULL,
    link TEXT NOT NULL,
    hour_ms INTEGER NOT NULL,
    keyups INTEGER NOT NULL,
    talk_seconds REAL NOT NULL,
    PRIMARY KEY (node, hour_ms, link)
) WITHOUT ROWID;
CREATE INDEX keyup_hours_hour ON keyup_hours(hour_ms);
INSERT INTO keyup_hours (node, link, hour_ms, keyups, talk_seconds)
    SELECT node, COALESCE(link, '(' || source || ')'), (start_ms / 3600000) * 3600000, COUNT(*), TOTAL(duration_s)
    FROM keyups WHERE end_ms IS NOT NULL
    GROUP BY 1, 2, 3;

CREATE TABLE script_store (
    script TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (script, key)
) WITHOUT ROWID;
";

/// Version 3: the audit table holds every field of an audit entry (`crate::audit::AuditEntry`:
/// `actor` is its `identity`, `detail` its plain-words detail), so `GET /api/audit` answers
/// from the store with the same fields as the JSON Lines file it replaces.
const V3: &str = "
ALTER TABLE audit ADD COLUMN via TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN source TEXT;
ALTER TABLE audit ADD COLUMN forwarded_for TEXT;
ALTER TABLE audit ADD COLUMN mode TEXT;
ALTER TABLE audit ADD COLUMN permanent INTEGER;
ALTER TABLE audit ADD COLUMN status INTEGER NOT NULL DEFAULT 0;
";

/// Every migration, in order: `MIGRATIONS[i]` takes a file from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// The version this build writes.
pub const CURRENT: u32 = MIGRATIONS.len() as u32;

/// The file's schema version.
pub fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings the file up to `target` (at most [`CURRENT`]). Each step reads the version
/// inside its own write transaction (`BEGIN IMMEDIATE`), so two processes opening the
/// same new file at once take turns instead of both creating the tables.
pub fn migrate_to(conn: &mut Connection, target: u32) -> Result<(), String> {
    let target = target.min(CURRENT);
    loop {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| format!("cannot start a schema migration: {e}"))?;
        let have = version(&tx).map_err(|e| format!("cannot read the schema version: {e}"))?;
        if have > CURRENT {
            return Err(format!(
                "the database has schema version {have}, newer than this build understands ({CURRENT}); \
                 use a newer allstar-nexus or another history.path"
            ));
        }
        if have >= target {
            return Ok(());
        }
        tx.execute_batch(MIGRATIONS[have as usize])
            .map_err(|e| format!("migration to version {} failed: {e}", have + 1))?;
        tx.pragma_update(None, "user_version", have + 1)
            .map_err(|e| format!("cannot record schema version {}: {e}", have + 1))?;
        tx.commit()
            .map_err(|e| format!("cannot commit migration {}: {e}", have + 1))?;
        tracing::info!("[HISTORY] database schema migrated to version {}", have + 1);
    }
}

/// Brings the file up to date.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    migrate_to(conn, CURRENT)
}
