//! evchat: an event-driven text messaging system speaking the
//! OI/MSG/CREQ/CLIST/OK/ERRO/FLW protocol. The crate holds the wire format
//! ([`proto`]), the server's rules ([`router`]), its socket layer
//! and web transport (`connection`, `web`) and event loop ([`server`]), what
//! the clients share ([`client`]), the command-line helpers of every
//! binary ([`cli`]) and the durable message history ([`store`]).

pub mod cli;
pub mod client;
// The fuzz target drives a connection without a socket.
#[cfg(feature = "testing")]
pub mod connection;
#[cfg(not(feature = "testing"))]
mod connection;
pub mod proto;
pub mod router;
pub mod server;
pub mod store;
// The web transport is the connection's business; the fuzz targets and
// tests reach its parsers directly.
#[cfg(feature = "testing")]
pub mod web;
#[cfg(not(feature = "testing"))]
mod web;

// The server's unit tests share the integration tests' raw client, which
// names this crate `evchat`.
#[cfg(test)]
extern crate self as evchat;
