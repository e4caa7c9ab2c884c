//! Lua automations: the script host thread, its sandbox and API, hot reload, and the
//! status registry the HTTP API reads.

pub mod status;

pub use status::{ScriptRegistry, ScriptState, ScriptStatus};
