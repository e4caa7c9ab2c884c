//! The live node model: the change vocabulary, the views readers get, and the engine that
//! reconciles app_rpt events with XStat/SawStat polls.

pub mod change;
pub mod engine;
pub mod events;
pub mod model;
pub mod node;
pub mod reconcile;
pub mod snapshot;
pub mod store;

pub use change::{ChangeEvent, ChangeKind, Published};
pub use engine::{EngineInput, EngineSender};
pub use model::{
    Direction, LinkKind, LinkState, LinkView, LinkedNode, Mode, NodeView, VoterSnapshot,
};
pub use store::{Replay, StateStore, TodayCounts};
