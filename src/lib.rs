//! AllStar Nexus: a monitor and automation engine for AllStarLink (app_rpt) nodes.
//!
//! Data flows one way: AMI sockets (`ami`) → state engine (`state`) → fan-out (WebSocket,
//! metrics, Lua scripts, alerts). See `docs/architecture.md`.

pub mod alerts;
pub mod ami;
pub mod app;
pub mod astdb;
pub mod audit;
pub mod auth;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod http;
pub mod linkctl;
pub mod metrics;
pub mod observe;
pub mod poller;
pub mod rpt;
pub mod script;
pub mod sim;
pub mod state;
