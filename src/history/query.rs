//! Reading the history: parameter parsing (every error names the parameter), paged row
//! queries (newest first, keyset cursor on the row id: pages have no gaps or repeats while
//! rows are being written) and the statistics (top talkers, activity per bucket) built on
//! the per-hour totals so a day with a million keyups answers quickly.

use std::collections::{BTreeMap, HashMap};

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, Row, params_from_iter};
use serde::Serialize;

use crate::observe::now_ms;
use crate::state::node::rfc3339;

/// Rows per page without `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 1000;
/// Most buckets one activity answer may hold.
pub const MAX_BUCKETS: u64 = 10_000;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// A bad request, naming the parameter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadParam(String),
    #[error("history database error: {0}")]
    Db(String),
}

impl From<rusqlite::Error> for QueryError {
    fn from(e: rusqlite::Error) -> QueryError {
        QueryError::Db(e.to_string())
    }
}

fn bad(param: &str, why: impl std::fmt::Display) -> QueryError {
    QueryError::BadParam(format!("parameter `{param}`: {why}"))
}

/// Parses a time: milliseconds since the Unix epoch, or RFC 3339 (`2026-11-29T18:00:00Z`).
pub fn parse_time(param: &str, v: &str) -> Result<u64, QueryError> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v
            .parse::<u64>()
            .map_err(|_| bad(param, "number of milliseconds is too large"));
    }
    humantime::parse_rfc3339_weak(v)
        .map_err(|_| {
            bad(
                param,
                format!(
                    "{:?} is neither milliseconds since 1970 nor an RFC 3339 time such as 2026-11-29T18:00:00Z",
                    crate::observe::clip(v, 40).0
                ),
            )
        })?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| bad(param, "time is before 1970"))
}

/// The common filters of the row and statistics queries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeQuery {
    pub node: Option<String>,
    pub link: Option<String>,
    pub server: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub limit: usize,
    /// Rows with an id below this (the previous page's `next_cursor`).
    pub cursor: Option<i64>,
    /// `activity` only: bucket width.
    pub bucket_ms: u64,
    /// What a caller limited to some nodes may see (`None`: everything). Set by the HTTP
    /// layer from the caller's identity, never from the query string.
    pub scope: Option<Scope>,
}

/// The part of the history a node-limited identity (`nodes:` of its token or user) may
/// read: rows of its nodes, AMI sessions of their servers, alerts about them or about no
/// node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    pub nodes: Vec<String>,
    /// The AMI servers of those nodes.
    pub servers: Vec<String>,
}

fn id_param(param: &str, v: &str) -> Result<String, QueryError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(bad(
            param,
            "must be 1-64 letters, digits or - _ . : / (a node number or link name)",
        ))
    }
}

impl RangeQuery {
    /// Parses query-string parameters; `allowed` lists the ones this route takes.
    pub fn parse(q: &HashMap<String, String>, allowed: &[&str]) -> Result<RangeQuery, QueryError> {
        let mut r = RangeQuery {
            limit: DEFAULT_LIMIT,
            bucket_ms: HOUR_MS,
            ..RangeQuery::default()
        };
        let mut keys: Vec<&String> = q.keys().collect();
        keys.sort();
        for k in keys {
            let v = &q[k];
            if !allowed.contains(&k.as_str()) {
                return Err(QueryError::BadParam(format!(
                    "unknown parameter `{}` (this route takes: {})",
                    crate::observe::clip(k, 40).0,
                    allowed.join(", ")
                )));
            }
            match k.as_str() {
                "node" => r.node = Some(id_param("node", v)?),
                "link" => r.link = Some(id_param("link", v)?),
                "server" => r.server = Some(id_param("server", v)?),
                "since" => r.since_ms = Some(parse_time("since", v)?),
                "until" => r.until_ms = Some(parse_time("until", v)?),
                "limit" => {
                    r.limit = match v.parse::<usize>() {
                        Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                        _ => return Err(bad("limit", format!("must be 1 to {MAX_LIMIT}"))),
                    }
                }
                "cursor" => {
                    r.cursor = Some(match v.parse::<i64>() {
                        Ok(n) if n > 0 => n,
                        _ => {
                            return Err(bad(
                                "cursor",
                                "must be a `next_cursor` from a previous page",
                            ));
                        }
                    })
                }
                "bucket" => {
                    let d = humantime::parse_duration(v)
                        .map_err(|_| bad("bucket", "must be a duration such as 15m, 1h or 1d"))?;
                    let ms = d.as_millis() as u64;
                    if ms < 60_000 || ms % 60_000 != 0 {
                        return Err(bad(
                            "bucket",
                            "must be a whole number of minutes, at least 1m",
                        ));
                    }
                    r.bucket_ms = ms;
                }
                _ => {}
            }
        }
        if let (Some(s), Some(u)) = (r.since_ms, r.until_ms)
            && s > u
        {
            return Err(bad("since", "is after `until`"));
        }
        Ok(r)
    }

    /// The range for statistics: default the last 24 hours.
    fn stats_range(&self) -> (u64, u64) {
        let until = self.until_ms.unwrap_or_else(now_ms);
        let since = self.since_ms.unwrap_or(until.saturating_sub(DAY_MS));
        (since, until)
    }
}

/// One page of rows, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A WHERE clause under construction.
#[derive(Default)]
struct Filter {
    terms: Vec<String>,
    args: Vec<Sql>,
}

impl Filter {
    fn add(&mut self, term: &str, v: Sql) {
        self.args.push(v);
        self.terms
            .push(term.replace('?', &format!("?{}", self.args.len())));
    }
    fn opt_str(&mut self, term: &str, v: &Option<String>) {
        if let Some(v) = v {
            self.add(term, Sql::Text(v.clone()));
        }
    }
    /// `column IN (…values)` (`or_null`: or `column IS NULL`); an empty set matches nothing.
    fn within(&mut self, column: &str, values: &[String], or_null: bool) {
        let mut marks = Vec::with_capacity(values.len());
        for v in values {
            self.args.push(Sql::Text(v.clone()));
            marks.push(format!("?{}", self.args.len()));
        }
        let set = if marks.is_empty() {
            "0".to_owned()
        } else {
            format!("{column} IN ({})", marks.join(", "))
        };
        self.terms.push(if or_null {
            format!("({set} OR {column} IS NULL)")
        } else {
            set
        });
    }
    /// `node = ?` when asked for, and the caller's node limit ([`Scope`]).
    fn nodes(&mut self, q: &RangeQuery, or_null: bool) {
        self.opt_str("node = ?", &q.node);
        if let Some(scope) = &q.scope {
            self.within("node", &scope.nodes, or_null);
        }
    }
    fn sql(&self) -> String {
        if self.terms.is_empty() {
            "1".into()
        } else {
            self.terms.join(" AND ")
        }
    }
}

fn ms(v: u64) -> Sql {
    Sql::Integer(v.min(i64::MAX as u64) as i64)
}

/// Runs a paged query: `base_filter` already holds the route's filters.
fn page<T>(
    conn: &Connection,
    table_sql: &str,
    mut f: Filter,
    q: &RangeQuery,
    map: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
    id_of: impl Fn(&T) -> i64,
) -> Result<Page<T>, QueryError> {
    if let Some(c) = q.cursor {
        f.add("id < ?", Sql::Integer(c));
    }
    // Walk the table newest first by id and stop at `limit` matches: the unary `+` keeps
    // SQLite from using the node/time indexes, which would sort every matching row first.
    for t in &mut f.terms {
        if !t.starts_with('(') && !t.starts_with("id ") {
            t.insert(0, '+');
        }
    }
    let sql = format!(
        "{table_sql} WHERE {} ORDER BY id DESC LIMIT {}",
        f.sql(),
        q.limit
    );
    let mut st = conn.prepare(&sql)?;
    let items = st
        .query_map(params_from_iter(f.args.iter()), map)?
        .collect::<rusqlite::Result<Vec<T>>>()?;
    let next_cursor = if items.len() == q.limit {
        items.last().map(|r| id_of(r).to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

fn opt_ms(v: Option<i64>) -> (Option<u64>, Option<String>) {
    let v = v.map(|v| v.max(0) as u64);
    (v, v.map(rfc3339))
}

/// One keyup.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyupRow {
    pub id: i64,
    pub server: String,
    pub node: String,
    /// The link that keyed; `null` for the local receiver/transmitter (`source`).
    pub link: Option<String>,
    /// `link`, `rx` (local receiver) or `tx` (local transmitter).
    pub source: String,
    pub start_ms: u64,
    pub start: String,
    pub end_ms: Option<u64>,
    pub end: Option<String>,
    pub duration_seconds: Option<f64>,
    /// `unkeyed`, `disconnected`, `shutdown`, `unknown`; `null` while still keyed.
    pub end_reason: Option<String>,
}

/// Keyups starting in the range, newest first.
pub fn keyups(conn: &Connection, q: &RangeQuery) -> Result<Page<KeyupRow>, QueryError> {
    let mut f = Filter::default();
    f.nodes(q, false);
    f.opt_str("link = ?", &q.link);
    f.opt_str("server = ?", &q.server);
    if let Some(s) = q.since_ms {
        f.add("start_ms >= ?", ms(s));
    }
    if let Some(u) = q.until_ms {
        f.add("start_ms <= ?", ms(u));
    }
    page(
        conn,
        "SELECT id, server, node, link, source, start_ms, end_ms, duration_s, end_reason FROM keyups",
        f,
        q,
        |r| {
            let start: i64 = r.get(5)?;
            let (end_ms, end) = opt_ms(r.get(6)?);
            Ok(KeyupRow {
                id: r.get(0)?,
                server: r.get(1)?,
                node: r.get(2)?,
                link: r.get(3)?,
                source: r.get(4)?,
                start_ms: start.max(0) as u64,
                start: rfc3339(start.max(0) as u64),
                end_ms,
                end,
                duration_seconds: r.get(7)?,
                end_reason: r.get(8)?,
            })
        },
        |r| r.id,
    )
}

/// A change of a link during a session.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkChange {
    pub time_ms: u64,
    pub field: String,
    pub value: Option<String>,
}

/// One link session.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkSessionRow {
    pub id: i64,
    pub server: String,
    pub node: String,
    pub link: String,
    pub kind: Option<String>,
    pub ip: Option<String>,
    pub direction: Option<String>,
    pub mode: Option<String>,
    pub connected_ms: u64,
    pub connected: String,
    pub disconnected_ms: Option<u64>,
    pub disconnected: Option<String>,
    pub duration_seconds: Option<f64>,
    /// `disconnected`, `ami_lost`, `shutdown`, `unknown`; `null` while still open.
    pub end_reason: Option<String>,
    pub open: bool,
    /// When the AMI session was lost while this link was up (its fate unknown then).
    pub ami_lost_ms: Option<u64>,
    /// Mode, direction, IP… changes during the session, oldest first.
    pub changes: Vec<LinkChange>,
}

/// Link sessions overlapping the range, newest first.
pub fn links(conn: &Connection, q: &RangeQuery) -> Result<Page<LinkSessionRow>, QueryError> {
    let mut f = Filter::default();
    f.nodes(q, false);
    f.opt_str("link = ?", &q.link);
    f.opt_str("server = ?", &q.server);
    if let Some(s) = q.since_ms {
        f.add("(disconnected_ms IS NULL OR disconnected_ms >= ?)", ms(s));
    }
    if let Some(u) = q.until_ms {
        f.add("connected_ms <= ?", ms(u));
    }
    let mut p = page(
        conn,
        "SELECT id, server, node, link, kind, ip, direction, mode, connected_ms, disconnected_ms,
                end_reason, ami_lost_ms FROM link_sessions",
        f,
        q,
        |r| {
            let c: i64 = r.get(8)?;
            let d: Option<i64> = r.get(9)?;
            let (disconnected_ms, disconnected) = opt_ms(d);
            Ok(LinkSessionRow {
                id: r.get(0)?,
                server: r.get(1)?,
                node: r.get(2)?,
                link: r.get(3)?,
                kind: r.get(4)?,
                ip: r.get(5)?,
                direction: r.get(6)?,
                mode: r.get(7)?,
                connected_ms: c.max(0) as u64,
                connected: rfc3339(c.max(0) as u64),
                disconnected_ms,
                disconnected,
                duration_seconds: d.map(|d| (d - c).max(0) as f64 / 1000.0),
                end_reason: r.get(10)?,
                open: d.is_none(),
                ami_lost_ms: r.get::<_, Option<i64>>(11)?.map(|v| v.max(0) as u64),
                changes: Vec::new(),
            })
        },
        |r| r.id,
    )?;
    if !p.items.is_empty() {
        let ids: Vec<String> = p.items.iter().map(|r| r.id.to_string()).collect();
        let sql = format!(
            "SELECT session_id, time_ms, field, value FROM link_changes WHERE session_id IN ({}) ORDER BY id",
            ids.join(",")
        );
        let mut st = conn.prepare(&sql)?;
        let mut by_id: HashMap<i64, Vec<LinkChange>> = HashMap::new();
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                LinkChange {
                    time_ms: r.get::<_, i64>(1)?.max(0) as u64,
                    field: r.get(2)?,
                    value: r.get(3)?,
                },
            ))
        })?;
        for row in rows {
            let (id, c) = row?;
            by_id.entry(id).or_default().push(c);
        }
        for item in &mut p.items {
            item.changes = by_id.remove(&item.id).unwrap_or_default();
        }
    }
    Ok(p)
}

/// One AMI session (or a failed attempt: `up_ms == down_ms`, `end_reason = failed`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AmiRow {
    pub id: i64,
    pub server: String,
    pub up_ms: u64,
    pub up: String,
    pub down_ms: Option<u64>,
    pub down: Option<String>,
    pub duration_seconds: Option<f64>,
    /// Why it went down, in plain words.
    pub error: Option<String>,
    /// `lost`, `failed`, `shutdown`, `unknown`; `null` while up.
    pub end_reason: Option<String>,
}

/// AMI sessions overlapping the range, newest first.
pub fn ami(conn: &Connection, q: &RangeQuery) -> Result<Page<AmiRow>, QueryError> {
    let mut f = Filter::default();
    f.opt_str("server = ?", &q.server);
    if let Some(scope) = &q.scope {
        f.within("server", &scope.servers, false);
    }
    if let Some(s) = q.since_ms {
        f.add("(down_ms IS NULL OR down_ms >= ?)", ms(s));
    }
    if let Some(u) = q.until_ms {
        f.add("up_ms <= ?", ms(u));
    }
    page(
        conn,
        "SELECT id, server, up_ms, down_ms, error, end_reason FROM ami_sessions",
        f,
        q,
        |r| {
            let up: i64 = r.get(2)?;
            let d: Option<i64> = r.get(3)?;
            let (down_ms, down) = opt_ms(d);
            Ok(AmiRow {
                id: r.get(0)?,
                server: r.get(1)?,
                up_ms: up.max(0) as u64,
                up: rfc3339(up.max(0) as u64),
                down_ms,
                down,
                duration_seconds: d.map(|d| (d - up).max(0) as f64 / 1000.0),
                error: r.get(4)?,
                end_reason: r.get(5)?,
            })
        },
        |r| r.id,
    )
}

/// One recorded alert.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertRow {
    pub id: i64,
    /// The alert's id in the running daemon (`/api/alerts`); restarts from 1 each run.
    pub alert_id: i64,
    pub time_ms: u64,
    pub time: String,
    pub severity: String,
    pub title: String,
    pub message: String,
    pub node: Option<String>,
    pub key: Option<String>,
    pub source: String,
}

/// Alerts in the range, newest first.
pub fn alerts(conn: &Connection, q: &RangeQuery) -> Result<Page<AlertRow>, QueryError> {
    let mut f = Filter::default();
    f.nodes(q, true);
    if let Some(s) = q.since_ms {
        f.add("time_ms >= ?", ms(s));
    }
    if let Some(u) = q.until_ms {
        f.add("time_ms <= ?", ms(u));
    }
    page(
        conn,
        "SELECT id, alert_id, time_ms, severity, title, message, node, key, source FROM alerts",
        f,
        q,
        |r| {
            let t: i64 = r.get(2)?;
            Ok(AlertRow {
                id: r.get(0)?,
                alert_id: r.get(1)?,
                time_ms: t.max(0) as u64,
                time: rfc3339(t.max(0) as u64),
                severity: r.get(3)?,
                title: r.get(4)?,
                message: r.get(5)?,
                node: r.get(6)?,
                key: r.get(7)?,
                source: r.get(8)?,
            })
        },
        |r| r.id,
    )
}

/// Keyups and talk time of one link.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Talker {
    pub link: String,
    pub keyups: u64,
    pub talk_seconds: f64,
}

/// Whose keyups a statistic counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyers {
    /// Links only (activity, today's totals).
    Links,
    /// Links per link, and the node's local receiver (`source = rx`, someone keying up on
    /// the repeater itself) as one more key, [`LOCAL_RX`]: top talkers, in one pass.
    LinksAndLocalRx,
}

/// The key of the local receiver in per-link totals (never a link name: `(` is not
/// allowed in one).
const LOCAL_RX: &str = "(rx)";

impl Keyers {
    /// The condition on raw `keyups` rows.
    fn raw(self) -> &'static str {
        match self {
            Keyers::Links => "source = 'link'",
            Keyers::LinksAndLocalRx => "source IN ('link', 'rx')",
        }
    }
    /// The condition on `keyup_hours` rows.
    fn hours(self) -> &'static str {
        match self {
            Keyers::Links => "link NOT IN ('(rx)', '(tx)')",
            Keyers::LinksAndLocalRx => "link <> '(tx)'",
        }
    }
}

/// Adds closed keyups of `who` starting in `[from, to)` from the raw table, per `group`.
fn raw_totals(
    conn: &Connection,
    (q, who): (&RangeQuery, Keyers),
    from: u64,
    to: u64,
    group: &str,
    out: &mut BTreeMap<String, (u64, f64)>,
) -> Result<(), QueryError> {
    if from >= to {
        return Ok(());
    }
    let mut f = Filter::default();
    f.nodes(q, false);
    f.add("start_ms >= ?", ms(from));
    f.add("start_ms < ?", ms(to));
    let sql = format!(
        "SELECT {group}, COUNT(*), TOTAL(duration_s) FROM keyups
         WHERE {} AND {} AND end_ms IS NOT NULL GROUP BY 1",
        f.sql(),
        who.raw()
    );
    add_rows(conn, &sql, &f, out)
}

/// Runs a `SELECT key, count, seconds … GROUP BY 1` and adds its rows to `out`.
fn add_rows(
    conn: &Connection,
    sql: &str,
    f: &Filter,
    out: &mut BTreeMap<String, (u64, f64)>,
) -> Result<(), QueryError> {
    let mut st = conn.prepare(sql)?;
    let rows = st.query_map(params_from_iter(f.args.iter()), |r| {
        Ok((
            r.get::<_, Sql>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, f64>(2)?,
        ))
    })?;
    for row in rows {
        let (k, n, s) = row?;
        let k = match k {
            Sql::Text(t) => t,
            Sql::Integer(i) => i.to_string(),
            _ => continue,
        };
        let e = out.entry(k).or_default();
        e.0 += n.max(0) as u64;
        e.1 += s;
    }
    Ok(())
}

/// Adds whole hours `[from, to)` (both on hour boundaries) from the per-hour totals.
fn hour_totals(
    conn: &Connection,
    (q, who): (&RangeQuery, Keyers),
    from: u64,
    to: u64,
    group: &str,
    out: &mut BTreeMap<String, (u64, f64)>,
) -> Result<(), QueryError> {
    if from >= to {
        return Ok(());
    }
    let mut f = Filter::default();
    f.nodes(q, false);
    f.add("hour_ms >= ?", ms(from));
    f.add("hour_ms < ?", ms(to));
    let sql = format!(
        "SELECT {group}, SUM(keyups), TOTAL(talk_seconds) FROM keyup_hours
         WHERE {} AND {} GROUP BY 1",
        f.sql(),
        who.hours()
    );
    add_rows(conn, &sql, &f, out)
}

/// Totals over `[since, until]` per link, and of the local receiver under [`LOCAL_RX`]:
/// whole hours from the per-hour table, the partial hours at either end from the keyups.
fn totals(
    conn: &Connection,
    q: &RangeQuery,
    (since, until): (u64, u64),
) -> Result<BTreeMap<String, (u64, f64)>, QueryError> {
    let who = Keyers::LinksAndLocalRx;
    let raw_group = "CASE WHEN source = 'rx' THEN '(rx)' ELSE link END";
    let end = until.saturating_add(1);
    let first_full = since.div_ceil(HOUR_MS) * HOUR_MS;
    let last_full = end / HOUR_MS * HOUR_MS;
    let mut out = BTreeMap::new();
    let sel = (q, who);
    if first_full < last_full {
        raw_totals(conn, sel, since, first_full, raw_group, &mut out)?;
        hour_totals(conn, sel, first_full, last_full, "link", &mut out)?;
        raw_totals(conn, sel, last_full, end, raw_group, &mut out)?;
    } else {
        raw_totals(conn, sel, since, end, raw_group, &mut out)?;
    }
    Ok(out)
}

/// Keyups and talk time of the local receiver: people keying up on the node's own radio,
/// who are not a link and so not among the [`talkers`].
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LocalTotals {
    pub keyups: u64,
    pub talk_seconds: f64,
}

/// Top talkers: keyups and talk seconds per link over the range (default: the last 24 h),
/// most talk time first. Counts closed keyups from links; see [`talkers_and_local_rx`].
pub fn talkers(conn: &Connection, q: &RangeQuery) -> Result<Vec<Talker>, QueryError> {
    Ok(talkers_and_local_rx(conn, q)?.0)
}

/// [`talkers`], and the local receiver's totals over the same range, from one pass over
/// the rows (the receiver is reported apart so every talker stays a link).
pub fn talkers_and_local_rx(
    conn: &Connection,
    q: &RangeQuery,
) -> Result<(Vec<Talker>, LocalTotals), QueryError> {
    let round = |s: f64| (s * 1000.0).round() / 1000.0;
    let mut by_link = totals(conn, q, q.stats_range())?;
    let local = by_link
        .remove(LOCAL_RX)
        .map(|(keyups, s)| LocalTotals {
            keyups,
            talk_seconds: round(s),
        })
        .unwrap_or_default();
    let mut v: Vec<Talker> = by_link
        .into_iter()
        .map(|(link, (keyups, s))| Talker {
            link,
            keyups,
            talk_seconds: round(s),
        })
        .collect();
    v.sort_by(|a, b| {
        b.talk_seconds
            .total_cmp(&a.talk_seconds)
            .then(b.keyups.cmp(&a.keyups))
            .then(a.link.cmp(&b.link))
    });
    v.truncate(q.limit);
    Ok((v, local))
}

/// One bucket of the activity chart.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    pub start_ms: u64,
    pub keyups: u64,
    pub talk_seconds: f64,
}

/// Keyups and talk seconds per bucket (buckets aligned on multiples of the bucket width
/// since the epoch; the range is widened to whole buckets; empty buckets included).
pub fn activity(conn: &Connection, q: &RangeQuery) -> Result<Vec<Bucket>, QueryError> {
    let (since, until) = q.stats_range();
    let b = q.bucket_ms.max(60_000);
    let first = since / b * b;
    let end = (until / b + 1) * b;
    if (end - first) / b > MAX_BUCKETS {
        return Err(bad(
            "bucket",
            format!(
                "the range holds more than {MAX_BUCKETS} buckets: use a wider bucket or a shorter range"
            ),
        ));
    }
    let mut out = BTreeMap::new();
    let group = format!("(start_ms / {b}) * {b}");
    if b % HOUR_MS == 0 {
        let hgroup = format!("(hour_ms / {b}) * {b}");
        hour_totals(conn, (q, Keyers::Links), first, end, &hgroup, &mut out)?;
    } else {
        raw_totals(conn, (q, Keyers::Links), first, end, &group, &mut out)?;
    }
    let mut buckets = Vec::with_capacity(((end - first) / b) as usize);
    let mut t = first;
    while t < end {
        let (keyups, s) = out.get(&t.to_string()).copied().unwrap_or_default();
        buckets.push(Bucket {
            start_ms: t,
            keyups,
            talk_seconds: (s * 1000.0).round() / 1000.0,
        });
        t += b;
    }
    Ok(buckets)
}

/// Audit entries matching `q`, the newest `q.limit` (below `q.cursor`), oldest first.
pub fn audit(
    conn: &Connection,
    q: &crate::audit::AuditQuery,
) -> Result<crate::audit::AuditPage, QueryError> {
    let mut f = Filter::default();
    f.opt_str("actor = ?", &q.identity);
    f.opt_str("node = ?", &q.node);
    f.opt_str("action = ?", &q.action);
    f.opt_str("result = ?", &q.result);
    if let Some(s) = q.since_ms {
        f.add("time_ms >= ?", ms(s));
    }
    if let Some(u) = q.until_ms {
        f.add("time_ms < ?", ms(u));
    }
    let limit = q.limit.max(1);
    let rq = RangeQuery {
        limit,
        cursor: q.cursor,
        ..RangeQuery::default()
    };
    let mut p = page(
        conn,
        "SELECT id, time_ms, actor, via, source, forwarded_for, action, node, target, mode,
                permanent, result, status, detail FROM audit",
        f,
        &rq,
        |r| {
            let t = r.get::<_, i64>(1)?.max(0) as u64;
            Ok(crate::audit::AuditEntry {
                id: Some(r.get(0)?),
                time_ms: t,
                time: rfc3339(t),
                identity: r.get(2)?,
                via: r.get(3)?,
                source: r.get(4)?,
                forwarded_for: r.get(5)?,
                action: r.get(6)?,
                node: r.get(7)?,
                target: r.get(8)?,
                mode: r.get(9)?,
                permanent: r.get(10)?,
                result: r.get(11)?,
                status: r.get::<_, Option<u16>>(12)?.unwrap_or(0),
                detail: r.get::<_, Option<String>>(13)?.unwrap_or_default(),
            })
        },
        |e| e.id.unwrap_or(0),
    )?;
    p.items.reverse();
    Ok(crate::audit::AuditPage {
        entries: p.items,
        next_cursor: p.next_cursor,
    })
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    /// A node-limited scope keeps every query to its nodes (and its servers' AMI
    /// sessions, and alerts about no node), whatever else is asked.
    #[test]
    fn a_scope_limits_rows_and_statistics_to_its_nodes() {
        let mut conn = Connection::open_in_memory().expect("db");
        crate::history::schema::migrate(&mut conn).expect("schema");
        conn.execute_batch(
            "INSERT INTO keyups (server, node, link, source, start_ms, end_ms, duration_s, end_reason)
             VALUES ('a', '1999', '2100', 'link', 1000, 2000, 1.0, 'unkeyed'),
                    ('b', '2000', '2200', 'link', 1000, 3000, 2.0, 'unkeyed');
             INSERT INTO ami_sessions (server, up_ms) VALUES ('a', 1000), ('b', 1000);
             INSERT INTO alerts (alert_id, time_ms, severity, title, message, node, key, source)
             VALUES (1, 1000, 'warning', 't', 'm', '1999', NULL, 'x'),
                    (2, 1000, 'warning', 't', 'm', '2000', NULL, 'x'),
                    (3, 1000, 'warning', 't', 'm', NULL, NULL, 'x');",
        )
        .expect("rows");
        let q = RangeQuery {
            since_ms: Some(0),
            until_ms: Some(10_000),
            limit: 10,
            bucket_ms: 60_000,
            scope: Some(Scope {
                nodes: vec!["2000".into()],
                servers: vec!["b".into()],
            }),
            ..RangeQuery::default()
        };
        let nodes = |v: Vec<Option<String>>| {
            v.into_iter()
                .map(|n| n.unwrap_or_default())
                .collect::<Vec<_>>()
        };
        let k = keyups(&conn, &q).expect("keyups").items;
        assert_eq!(
            nodes(k.into_iter().map(|r| Some(r.node)).collect()),
            ["2000"]
        );
        let a = ami(&conn, &q).expect("ami").items;
        assert_eq!(
            a.iter().map(|r| r.server.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        let al = alerts(&conn, &q).expect("alerts").items;
        assert_eq!(
            nodes(al.into_iter().map(|r| r.node).collect()),
            ["", "2000"]
        );
        let t = talkers(&conn, &q).expect("talkers");
        assert_eq!(
            t.iter().map(|t| t.link.as_str()).collect::<Vec<_>>(),
            ["2200"]
        );
        let act: u64 = activity(&conn, &q)
            .expect("activity")
            .iter()
            .map(|b| b.keyups)
            .sum();
        assert_eq!(act, 1);
        // An explicit node outside the scope finds nothing (the HTTP layer answers 403).
        let outside = RangeQuery {
            node: Some("1999".into()),
            ..q.clone()
        };
        assert!(keyups(&conn, &outside).expect("keyups").items.is_empty());
        let all = RangeQuery { scope: None, ..q };
        assert_eq!(keyups(&conn, &all).expect("keyups").items.len(), 2);
    }
}
