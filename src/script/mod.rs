//! Lua automations: the script host thread, its sandbox and API, hot reload, and the
//! status registry the HTTP API reads.

mod queue;
pub mod sandbox;
pub mod status;

pub use status::{ScriptRegistry, ScriptState, ScriptStatus};
