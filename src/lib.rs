//! evchat: an event-driven text messaging system speaking the
//! OI/MSG/CREQ/CLIST/OK/ERRO/FLW protocol. The crate holds the wire format
//! ([`proto`]), the server's rules (`router`), its socket layer
//! and web transport (`connection`, `web`) and event loop ([`server`]), TLS
//! for the server and the clients ([`tls`]), what
//! the clients share ([`client`]), the command-line helpers of every
//! binary ([`cli`]), the durable message history ([`store`]), LAN
//! discovery's datagrams ([`discovery`]) and systemd's readiness message
//! ([`sd_notify`]).
//!
//! The binaries see only what they use; the insides the tests, benches and
//! fuzz targets drive directly are in `testing`, behind the feature of
//! that name.

pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
mod connection;
pub mod discovery;
mod priority;
pub mod proto;
mod router;
pub mod sd_notify;
pub mod server;
pub mod store;
pub mod tls;
mod web;

/// What the tests, benches and fuzz targets reach below the binaries' API:
/// the rules driven without a loop, a connection driven without a socket,
/// the web transport (the connection's business), the history's log and
/// writer without a server, and a raw client for byte-exact tests. Each
/// module is declared once, so that tools which read the source without
/// `cfg` (cargo-mutants) see it once.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::connection::{
        Accepts, Connection, Ending, HttpOutcome, PlainRefusal, ReadStatus, Stage, TransportStatus,
        WebConfig,
    };
    pub use crate::router::{
        CloseReason, ConnId, NameAnswer, Outbox, PairNotice, REPLAY_FRAMING, ROOM_IDS, RoomClaim,
        RoomEvent, RoomFacts, RoomLimits, Router, Sender, TellLimits,
    };
    pub use crate::store::format::Record;
    pub use crate::store::log::{Log, Notice, Opened, Options};
    pub use crate::store::writer::{Ticket, Writer};
    pub use crate::web::{FeedOutcome, MAX_HEAD_LEN, binary_header_len, feed_in_reads};

    // The clients' bounded line reader, for the `input` fuzz target.
    pub use crate::client::input::read_bounded_line;

    /// The history's on-disk format piece by piece: the tests and the fuzz
    /// target build segments and read them with its cursor directly.
    pub mod store_format {
        pub use crate::store::format::*;
    }

    pub mod raw_client;

    /// The loop's conversions between the router's pair notices and the
    /// batch's records, and between its room claims and the engine's
    /// requests and answers, for the cluster simulations.
    pub mod cluster_glue {
        pub use crate::server::cluster::{room_answer, room_request, to_notice, to_record};
    }
}

#[cfg(test)]
mod captured_log;
