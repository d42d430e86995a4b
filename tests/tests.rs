//! All integration tests build as one binary (faster to link, one place to
//! list them). `util` is the harness (the byte-level frames of `frames.rs`
//! and the WebSocket client of `ws_client.rs` are part of it); each other
//! module covers one layer, one binary or RELIABILITY.md (`check` brings
//! its fixture server, `check_fixture.rs`).

mod util;

mod browser;
mod chat;
mod chat_rooms;
mod chat_tell;
mod check;
mod cli;
mod cluster;
mod cluster_late;
mod cluster_names;
mod cluster_queues;
mod cluster_replay;
mod cluster_rooms;
mod cluster_sim;
mod codec;
mod discovery;
mod history;
mod identity;
mod identity_storm;
mod metrics;
mod raw;
mod reliability;
mod room_rules;
mod rooms;
mod rooms_durable;
mod router;
mod service;
mod store;
mod tls;
mod user;
mod web;
