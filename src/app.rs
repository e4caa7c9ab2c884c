//! The running daemon's shared parts, handed to the HTTP server and the Lua host.

use std::sync::Arc;

use crate::alerts::AlertHub;
use crate::config::Config;
use crate::control::Control;
use crate::metrics::Metrics;
use crate::script::{ScriptEnv, ScriptRegistry};
use crate::state::StateStore;

/// Everything readers and commanders need. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    /// The node model (read side) and the change stream.
    pub state: StateStore,
    /// Poll now, polling intervals, voter status, AMI sessions.
    pub control: Control,
    pub alerts: AlertHub,
    pub scripts: ScriptRegistry,
    pub metrics: Metrics,
    /// Process start, ms since the Unix epoch.
    pub started_ms: u64,
    /// The durable history store (`None` when `history.enabled` is false).
    pub history: Option<crate::history::History>,
    /// Link control (identities, typed ilink commands, audit), shared by REST and Lua.
    pub linkctl: crate::linkctl::LinkControl,
}

impl App {
    /// Assembles the shared parts; link control is built over them, and the script
    /// registry starts empty.
    pub fn assemble(
        config: Arc<Config>,
        state: StateStore,
        control: Control,
        alerts: AlertHub,
        metrics: Metrics,
        history: Option<crate::history::History>,
    ) -> App {
        let linkctl = crate::linkctl::LinkControl::new(
            config.clone(),
            state.clone(),
            control.clone(),
            metrics.clone(),
            history
                .clone()
                .map(|h| Arc::new(h) as Arc<dyn crate::audit::AuditStore>),
        );
        App {
            config,
            state,
            control,
            alerts,
            scripts: ScriptRegistry::default(),
            metrics,
            started_ms: crate::observe::now_ms(),
            history,
            linkctl,
        }
    }

    /// The narrow environment the Lua scripts get (`script::spawn`).
    pub fn script_env(&self) -> ScriptEnv {
        ScriptEnv::new(
            &self.config,
            self.state.clone(),
            self.control.clone(),
            self.alerts.clone(),
            self.scripts.clone(),
            self.metrics.clone(),
        )
        .with_history(self.history.clone())
        .with_linkctl(self.linkctl.clone())
    }
}
