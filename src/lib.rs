//! AllStar Nexus: a monitor and automation engine for AllStarLink (app_rpt) nodes.
//!
//! Data flows one way: AMI sockets (`ami`) → state engine (`state`) → fan-out (WebSocket,
//! metrics, Lua scripts, alerts). See `docs/architecture.md`.

pub mod ami;
pub mod metrics;
pub mod rpt;
pub mod sim;
pub mod state;
pub mod config;
