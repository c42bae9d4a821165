//! The helper socket protocol (docs/protocol.md): frames on the stream, and
//! requests and replies inside them.

pub mod frame;
pub mod message;

pub use frame::{read_frame, read_frame_into, FrameReadError};
pub use message::{error_reply, ok_reply, parse_request, Request, RequestError};
