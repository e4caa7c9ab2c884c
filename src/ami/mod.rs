//! The Asterisk Manager Interface: the wire codec, the reconnect ladder, and the supervised
//! connection that everything else talks through.

pub mod backoff;
pub mod codec;
pub mod connection;
pub mod events;

pub use codec::{Action, AmiCodec, CodecError, Frame, Incoming};
pub use connection::{
    ActionError, AmiEvent, AmiHandle, ConnectError, ConnectionStatus, ErrorKind, Reply,
};
