//! evchat: an event-driven text messaging system speaking the
//! OI/MSG/CREQ/CLIST/OK/ERRO/FLW protocol. The crate holds the wire format
//! ([`proto`]), the server's rules ([`router`]), its socket layer
//! and web transport (`connection`, `web`) and event loop ([`server`]), what
//! the clients share ([`client`]), the command-line helpers of every
//! binary ([`cli`]) and the durable message history ([`store`]).

pub mod auth;
pub mod cli;
pub mod client;
mod connection;
pub mod proto;
pub mod router;
pub mod server;
pub mod store;
mod web;

/// What the fuzz targets reach below the server: a connection driven
/// without a socket, and the web transport (the connection's business).
/// Each module is declared once, so that tools which read the source
/// without `cfg` (cargo-mutants) see it once.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::connection::{Connection, HttpOutcome, ReadStatus, Stage};
    pub use crate::web::{
        FeedOutcome, MAX_HEAD_LEN, WebConfig, WsStatus, binary_header_len, feed_in_reads,
    };
}

#[cfg(test)]
mod captured_log;

// The server's unit tests share the integration tests' raw client, which
// names this crate `evchat`.
#[cfg(test)]
extern crate self as evchat;
