//! The web transport, below the connection: telling HTTP from the binary
//! protocol on a new connection (`sniff`), the HTTP request head and the
//! answer to it (`http`), and WebSocket sessions (`websocket`, with the
//! frame bytes in `ws_frame`): tungstenite's `WebSocketContext` driven from
//! the connection's own buffers. Each binary WebSocket message carries
//! exactly one protocol frame; this module turns messages into protocol
//! bytes and frames into messages, and knows nothing of ids or rules.
//! PROTOCOL.md ("WebSocket transport") is the contract; `page` is the
//! browser client it serves. What the connection uses is re-exported here.

mod http;
pub mod page;
mod sniff;
mod websocket;
mod ws_frame;

pub use http::{
    Answer, Authorization, HeadError, Report, ReportAnswer, answer, bad_request, parse_head,
    report_answer, tls_required,
};
pub use sniff::{Sniff, sniff};
pub use websocket::{CloseCause, WebSocket, WsFailure, WsStatus};
pub use ws_frame::{binary_header_len, put_binary_header};

// What the tests and fuzz targets reach besides (see `crate::testing`).
#[cfg(any(test, feature = "testing"))]
pub use http::MAX_HEAD_LEN;
#[cfg(any(test, feature = "testing"))]
pub use websocket::{FeedOutcome, feed_in_reads};
