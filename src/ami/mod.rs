//! The Asterisk Manager Interface: the wire codec and the supervised connection.

pub mod codec;

pub use codec::{Action, AmiCodec, CodecError, Frame, Incoming};
