//! Link control: connect, disconnect and disconnect-all, for the REST API and Lua alike.
//!
//! Every request goes through [`LinkControl::execute`]: role and node checks, typed
//! validation ([`command`]), the per-identity rate limit, idempotence (a link already in
//! the asked state sends nothing), one `Action: Command` on the node's AMI session, then
//! verification against the engine's own view (polls are requested until the link shows
//! in the asked mode, or is gone, within `control.verify_timeout`). A disconnect sends
//! `ilink 11` for a link this daemon made permanent ([`permanent`], kept across restarts),
//! and `ilink 1` otherwise; app_rpt ignores `ilink 1` on a permanent link, so when a poll
//! at least a second after it still shows the link, `ilink 11` follows (a link made
//! permanent by another tool). Every attempt, refused
//! or not, is written to the audit log before the answer is returned, counted in
//! `nexus_control_actions_total{action,result}`, and announced to admin WebSocket clients
//! ([`LinkControl::subscribe_controls`], the `control` message).

pub mod command;
pub mod permanent;
pub mod ratelimit;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::ami::{Action, ActionError};
use crate::audit::{AuditEntry, AuditLog, AuditStore};
use crate::auth::{Auth, Identity, Role};
use crate::config::Config;
use crate::control::Control;
use crate::control::ControlError;
use crate::metrics::Metrics;
use crate::state::StateStore;
use crate::state::model::{LinkView, NodeView};
use crate::state::node::rfc3339;
pub use command::{LinkAction, LinkCommand, LinkMode, RawRequest};
use permanent::PermanentLinks;
use ratelimit::RateLimiter;

/// Who is asking, and from where (for the audit).
#[derive(Debug, Clone)]
pub struct Actor {
    pub identity: Identity,
    /// Peer address.
    pub source: Option<String>,
    pub forwarded_for: Option<String>,
}

/// How an accepted request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    Verified,
    Unverified,
    Already,
}

impl Verification {
    pub fn as_str(self) -> &'static str {
        match self {
            Verification::Verified => "verified",
            Verification::Unverified => "unverified",
            Verification::Already => "already",
        }
    }
}

/// The answer to an accepted request (`200`), as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub result: Verification,
    pub action: LinkAction,
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<LinkMode>,
    /// Connect: as asked. Disconnect: `true` when `ilink 11` was sent (a permanent link).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permanent: Option<bool>,
    /// The link as `/api/nodes` shows it, when it exists after the command.
    pub link: Option<LinkView>,
    pub detail: String,
}

/// A request that was not carried out, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// 400, 401, 403, 404, 429, 502 or 503.
    pub status: u16,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `refused` for 4xx, `failed` for 5xx (the metric and audit `result`).
    pub fn result(&self) -> &'static str {
        if self.status >= 500 {
            "failed"
        } else {
            "refused"
        }
    }
}

/// Link control for one daemon. Cheap to clone.
#[derive(Clone)]
pub struct LinkControl {
    inner: Arc<Inner>,
}

/// What link control works with (no `App`: `linkctl` sits below it).
struct Parts {
    config: Arc<Config>,
    state: StateStore,
    control: Control,
    metrics: Metrics,
}

struct Inner {
    app: Parts,
    auth: Auth,
    audit: AuditLog,
    limiter: RateLimiter,
    /// Each finished control attempt's audit entry, for admin WebSocket clients.
    controls: tokio::sync::broadcast::Sender<Arc<AuditEntry>>,
    verify_timeout: Duration,
    /// Links this daemon made permanent (disconnected with ilink 11), kept on disk.
    permanent: PermanentLinks,
    /// One command at a time per node, so checks and verification do not interleave.
    node_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How long between polls while waiting for a result; also how long after `ilink 1` a
/// poll must be before a link it still shows counts as left up (app_rpt drops a link
/// asynchronously, so the poll right after the command may still show it).
const REPOLL: Duration = Duration::from_secs(1);

/// Which disconnect commands went out.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    /// `ilink 11` was sent (the link is known or found to be permanent).
    ilink_11: bool,
    /// It followed an `ilink 1` that left the link up.
    fallback: bool,
}
/// Control announcements a slow admin WebSocket client may fall behind by (it misses the
/// older ones; the audit log keeps them all).
const CONTROL_BACKLOG: usize = 64;

impl LinkControl {
    /// Link control over the daemon's model and AMI sessions: one per daemon, shared by
    /// the REST API and Lua (one rate limiter, one audit writer). The audit goes to
    /// `audit_store` (the history database) when there is one (see [`crate::audit`]).
    pub fn new(
        config: Arc<Config>,
        state: StateStore,
        control: Control,
        metrics: Metrics,
        audit_store: Option<Arc<dyn AuditStore>>,
    ) -> LinkControl {
        let app = Parts {
            config,
            state,
            control,
            metrics,
        };
        let c = &app.config;
        LinkControl {
            inner: Arc::new(Inner {
                auth: Auth::new(c),
                audit: AuditLog::open(&c.state_dir, audit_store),
                limiter: RateLimiter::new(c.control.rate_limit_per_minute),
                controls: tokio::sync::broadcast::channel(CONTROL_BACKLOG).0,
                verify_timeout: c.control.verify_timeout.0,
                permanent: PermanentLinks::load(&c.state_dir),
                node_locks: Mutex::new(HashMap::new()),
                app,
            }),
        }
    }

    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    /// Whether control can be used at all (some token or user exists).
    pub fn enabled(&self) -> bool {
        self.inner.auth.enabled()
    }

    /// Writes an audit entry; a write failure is logged and returned.
    pub async fn record(&self, entry: AuditEntry) -> Result<(), Refusal> {
        self.inner.audit.append(entry).await.map_err(|e| {
            tracing::error!(
                "[CONTROL] cannot write the audit log {}: {e}",
                self.inner.audit.path().display()
            );
            Refusal::new(
                503,
                "the audit log cannot be written, so no control action is taken (see the daemon log)",
            )
        })
    }

    /// Finished control attempts (any result), for the WebSocket `control` message.
    pub fn subscribe_controls(&self) -> tokio::sync::broadcast::Receiver<Arc<AuditEntry>> {
        self.inner.controls.subscribe()
    }

    /// Audits a finished control attempt, then announces it. When the audit cannot be
    /// written the announcement says so (result `failed`, status 503), as the answer does.
    async fn record_control(&self, mut entry: AuditEntry) -> Result<(), Refusal> {
        let written = self.record(entry.clone()).await;
        if let Err(r) = &written {
            entry.result = r.result().to_owned();
            entry.status = r.status;
            entry.detail = format!("{} (was: {})", r.message, entry.detail);
        }
        // No admin listening is not an error.
        let _ = self.inner.controls.send(Arc::new(entry));
        written
    }

    /// A fresh audit entry for `actor` about `req`.
    pub fn entry(actor: &Actor, req: &RawRequest) -> AuditEntry {
        let now = crate::observe::now_ms();
        AuditEntry {
            time_ms: now,
            time: rfc3339(now),
            identity: AuditEntry::clip(&actor.identity.name),
            via: actor.identity.via.as_str().to_owned(),
            source: actor.source.clone(),
            forwarded_for: actor.forwarded_for.as_deref().map(AuditEntry::clip),
            action: req.action.as_str().to_owned(),
            node: Some(AuditEntry::clip(&req.node)),
            target: req.target.as_deref().map(AuditEntry::clip),
            mode: req.mode.as_deref().map(AuditEntry::clip),
            permanent: req.permanent,
            ..AuditEntry::default()
        }
    }

    /// Audits and counts a request refused before [`LinkControl::execute`] could run
    /// (no credential, bad CSRF token, unreadable body). A failed audit write turns it
    /// into a 503.
    pub async fn refuse(&self, actor: &Actor, req: &RawRequest, refusal: Refusal) -> Refusal {
        let mut e = Self::entry(actor, req);
        e.result = refusal.result().to_owned();
        e.status = refusal.status;
        e.detail = refusal.message.clone();
        self.count(req.action, refusal.result());
        match self.record_control(e).await {
            Ok(()) => refusal,
            Err(r) => r,
        }
    }

    fn count(&self, action: LinkAction, result: &str) {
        self.inner
            .app
            .metrics
            .control_actions
            .with_label_values(&[action.as_str(), result])
            .inc();
    }

    /// Runs one request end to end; see the module documentation.
    pub async fn execute(&self, actor: &Actor, req: &RawRequest) -> Result<Outcome, Refusal> {
        let cmd = match self.admit(actor, req) {
            Ok(cmd) => cmd,
            Err(r) => return Err(self.refuse(actor, req, r).await),
        };
        let lock = self.node_lock(cmd.node());
        let _held = lock.lock().await;
        let result = self.carry_out(&cmd).await;
        let mut e = Self::entry(actor, req);
        match &result {
            Ok(o) => {
                e.result = o.result.as_str().to_owned();
                e.status = 200;
                e.detail = o.detail.clone();
                if let (Some(m), LinkCommand::Connect { permanent, .. }) = (o.mode, &cmd) {
                    e.mode = Some(m.as_str().to_owned());
                    e.permanent = Some(*permanent);
                }
                if let LinkCommand::Disconnect { .. } = &cmd {
                    // `true`: the link was permanent and ilink 11 was sent.
                    e.permanent = o.permanent;
                }
            }
            Err(r) => {
                e.result = r.result().to_owned();
                e.status = r.status;
                e.detail = r.message.clone();
            }
        }
        let label = match &result {
            Ok(o) => o.result.as_str(),
            Err(r) => r.result(),
        };
        self.count(req.action, label);
        self.record_control(e).await?;
        if let Ok(o) = &result {
            tracing::info!(
                "[CONTROL] {} {} node {} {}: {}",
                actor.identity.name,
                req.action.as_str(),
                o.node,
                o.target.as_deref().unwrap_or(""),
                o.result.as_str()
            );
        }
        result
    }

    /// Every check before anything is sent: role, syntax, node, rate limit.
    fn admit(&self, actor: &Actor, req: &RawRequest) -> Result<LinkCommand, Refusal> {
        let id = &actor.identity;
        if !self.enabled() {
            return Err(Refusal::new(403, DISABLED));
        }
        if id.role.is_none() {
            return Err(Refusal::new(
                401,
                "link control needs a credential: send Authorization: Bearer <token> or log in",
            ));
        }
        if !id.has(Role::Control) {
            return Err(Refusal::new(
                403,
                format!(
                    "{} has the read role; link control needs the control or admin role",
                    id.name
                ),
            ));
        }
        let cmd = req.validate().map_err(|m| Refusal::new(400, m))?;
        let node = cmd.node();
        match self.inner.app.control.ami_for(node) {
            Ok(_) => {}
            Err(ControlError::UnknownNode(_)) => {
                return Err(Refusal::new(
                    404,
                    format!("node {node} is not a configured local node"),
                ));
            }
            Err(e @ ControlError::RemoteNode { .. }) => {
                return Err(Refusal::new(409, e.to_string()));
            }
            Err(e) => return Err(Refusal::new(503, e.to_string())),
        }
        if !id.may_node(node) {
            return Err(Refusal::new(
                403,
                format!("{} may not control node {node}", id.name),
            ));
        }
        if let Err(wait) = self.inner.limiter.take(&id.name) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(Refusal {
                status: 429,
                message: format!(
                    "rate limit: at most {} control actions a minute for {}; retry in {secs} s",
                    self.inner.app.config.control.rate_limit_per_minute, id.name
                ),
                retry_after: Some(secs),
            });
        }
        Ok(cmd)
    }

    fn node_lock(&self, node: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .node_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        locks.entry(node.to_owned()).or_default().clone()
    }

    fn is_permanent(&self, node: &str, target: &str) -> bool {
        self.inner.permanent.contains(node, target)
    }

    /// Idempotence check, send, verify (with the `ilink 11` fallback for disconnects).
    async fn carry_out(&self, cmd: &LinkCommand) -> Result<Outcome, Refusal> {
        let node = cmd.node().to_owned();
        let view = self.inner.app.state.node(&node);
        if let Some(detail) = self.already(cmd, view.as_ref()) {
            return Ok(self.outcome(cmd, Verification::Already, view.as_ref(), detail));
        }
        let deadline = tokio::time::Instant::now() + self.inner.verify_timeout;
        let mut sent = Sent::default();
        match cmd {
            LinkCommand::Connect {
                target, permanent, ..
            } => {
                self.send(&node, &cmd.cli(false)).await?;
                let existed = view
                    .as_ref()
                    .is_some_and(|v| v.links.iter().any(|l| &l.node == target));
                // A mode change without a permanent code leaves app_rpt's flag as it was.
                if *permanent || !existed {
                    self.inner.permanent.set(&node, target, *permanent);
                }
            }
            LinkCommand::Disconnect { target, .. } => {
                sent.ilink_11 = self.is_permanent(&node, target);
                self.send(&node, &cmd.cli(sent.ilink_11)).await?;
                if !sent.ilink_11 && self.left_up(cmd, deadline).await {
                    self.send(&node, &cmd.cli(true)).await?;
                    sent = Sent {
                        ilink_11: true,
                        fallback: true,
                    };
                }
            }
            LinkCommand::DisconnectAll { .. } => self.send(&node, &cmd.cli(false)).await?,
        }
        let (ok, view) = self
            .watch(&node, deadline, |v| done(cmd, v))
            .await
            .map_or_else(|v| (false, v), |v| (true, Some(v)));
        match cmd {
            LinkCommand::Disconnect { target, .. } if ok => {
                self.inner.permanent.set(&node, target, false)
            }
            LinkCommand::DisconnectAll { .. } if ok => self.inner.permanent.clear_node(&node),
            _ => {}
        }
        let mut detail = describe(cmd, view.as_ref(), ok, self.inner.verify_timeout);
        if sent.fallback {
            detail = format!(
                "ilink 1 left the link up (permanent, made by another tool); sent ilink 11. {detail}"
            );
        } else if sent.ilink_11 {
            detail = format!("sent ilink 11 (a permanent link). {detail}");
        }
        let result = if ok {
            Verification::Verified
        } else {
            Verification::Unverified
        };
        let mut o = self.outcome(cmd, result, view.as_ref(), detail);
        if sent.ilink_11 {
            o.permanent = Some(true);
        }
        Ok(o)
    }

    /// After `ilink 1`: whether a poll made at least [`REPOLL`] after it still shows the
    /// link (app_rpt ignored it: a permanent link). `false` when the link goes, or when
    /// time is up first.
    async fn left_up(&self, cmd: &LinkCommand, deadline: tokio::time::Instant) -> bool {
        let node = cmd.node();
        let settle = deadline.min(tokio::time::Instant::now() + REPOLL);
        if self.watch(node, settle, |v| done(cmd, v)).await.is_ok() {
            return false;
        }
        let before = self.inner.app.state.node(node).and_then(|v| v.last_poll);
        match self
            .watch(node, deadline, |v| done(cmd, v) || v.last_poll != before)
            .await
        {
            Ok(v) => !done(cmd, &v),
            Err(_) => false,
        }
    }

    /// `Some(detail)` when the node already is as asked (nothing is sent).
    fn already(&self, cmd: &LinkCommand, view: Option<&NodeView>) -> Option<String> {
        let view = view?;
        match cmd {
            LinkCommand::Connect {
                node,
                target,
                mode,
                permanent,
            } => {
                let link = view.links.iter().find(|l| &l.node == target)?;
                let same = link.mode == Some(mode.letter())
                    && (!permanent || self.is_permanent(node, target));
                same.then(|| {
                    format!(
                        "{target} is already linked to {node} in {} mode; nothing was sent",
                        mode.as_str()
                    )
                })
            }
            LinkCommand::Disconnect { node, target } => {
                (!view.links.iter().any(|l| &l.node == target))
                    .then(|| format!("{target} is not linked to {node}; nothing was sent"))
            }
            LinkCommand::DisconnectAll { node } => view
                .links
                .is_empty()
                .then(|| format!("{node} has no links; nothing was sent")),
        }
    }

    async fn send(&self, node: &str, cli: &str) -> Result<(), Refusal> {
        let ami = self
            .inner
            .app
            .control
            .ami_for(node)
            .map_err(|e| Refusal::new(404, e.to_string()))?;
        let action = Action::new("Command")
            .and_then(|a| a.header("Command", cli))
            .map_err(|e| Refusal::new(400, format!("command refused by the codec: {e}")))?;
        match ami.send(action).await {
            Ok(_) => Ok(()),
            Err(e @ ActionError::NotConnected { .. }) => Err(Refusal::new(503, e.to_string())),
            Err(e) => Err(Refusal::new(502, e.to_string())),
        }
    }

    /// Polls `node` until its view satisfies `until` (`Ok` with that view) or `deadline`
    /// passes (`Err` with the last view).
    async fn watch(
        &self,
        node: &str,
        deadline: tokio::time::Instant,
        until: impl Fn(&NodeView) -> bool,
    ) -> Result<NodeView, Option<NodeView>> {
        let app = &self.inner.app;
        let mut changes = app.state.subscribe();
        let _ = app.control.poll_now(node);
        let mut repoll = tokio::time::interval_at(tokio::time::Instant::now() + REPOLL, REPOLL);
        loop {
            let view = app.state.node(node);
            if let Some(v) = view.filter(|v| until(v)) {
                return Ok(v);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Err(app.state.node(node)),
                _ = changes.recv() => {}
                _ = repoll.tick() => { let _ = app.control.poll_now(node); }
            }
        }
    }

    fn outcome(
        &self,
        cmd: &LinkCommand,
        result: Verification,
        view: Option<&NodeView>,
        detail: String,
    ) -> Outcome {
        let (action, target, mode, permanent) = match cmd {
            LinkCommand::Connect {
                target,
                mode,
                permanent,
                ..
            } => (
                LinkAction::Connect,
                Some(target.clone()),
                Some(*mode),
                Some(*permanent),
            ),
            LinkCommand::Disconnect { target, .. } => {
                (LinkAction::Disconnect, Some(target.clone()), None, None)
            }
            LinkCommand::DisconnectAll { .. } => (LinkAction::DisconnectAll, None, None, None),
        };
        let link = target
            .as_ref()
            .and_then(|t| view?.links.iter().find(|l| &l.node == t).cloned());
        Outcome {
            result,
            action,
            node: cmd.node().to_owned(),
            target,
            mode,
            permanent,
            link,
            detail,
        }
    }
}

/// The answer while no token or user is configured.
pub const DISABLED: &str = "link control is disabled: no api_tokens or users are configured. \
     Add a token with role control or admin (api_tokens in the config file, see docs/security.md) \
     and restart";

/// Whether the view shows the command done.
fn done(cmd: &LinkCommand, v: &NodeView) -> bool {
    match cmd {
        LinkCommand::Connect { target, mode, .. } => v
            .links
            .iter()
            .any(|l| &l.node == target && l.mode == Some(mode.letter())),
        LinkCommand::Disconnect { target, .. } => !v.links.iter().any(|l| &l.node == target),
        LinkCommand::DisconnectAll { .. } => v.links.is_empty(),
    }
}

/// Plain words about what the engine's view shows after the command.
fn describe(cmd: &LinkCommand, v: Option<&NodeView>, ok: bool, timeout: Duration) -> String {
    let node = cmd.node();
    let waited = format!("after {:.1} s", timeout.as_secs_f64());
    match cmd {
        LinkCommand::Connect { target, mode, .. } => {
            let link = v.and_then(|v| v.links.iter().find(|l| &l.node == target));
            match (ok, link) {
                (true, _) => format!(
                    "XStat shows {target} linked to {node} in {} mode",
                    mode.as_str()
                ),
                (false, Some(l)) => format!(
                    "{waited} XStat shows {target} linked to {node} with mode {}, not {}",
                    l.mode
                        .map(|m| format!("{m:?}"))
                        .unwrap_or_else(|| "unknown".into()),
                    mode.as_str()
                ),
                (false, None) => format!("{waited} XStat shows no link {target} on {node}"),
            }
        }
        LinkCommand::Disconnect { target, .. } if ok => {
            format!("XStat shows {target} no longer linked to {node}")
        }
        LinkCommand::Disconnect { target, .. } => {
            format!("{waited} XStat still shows {target} linked to {node}")
        }
        LinkCommand::DisconnectAll { .. } if ok => format!("XStat shows no links on {node}"),
        LinkCommand::DisconnectAll { .. } => format!(
            "{waited} XStat still shows {} link(s) on {node}",
            v.map(|v| v.links.len()).unwrap_or(0)
        ),
    }
}
