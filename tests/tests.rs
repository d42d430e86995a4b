//! All integration tests build as one binary (faster to link, one place to
//! list them). `util` is the harness; each other module covers one layer.

mod util;

mod browser;
mod chat;
mod check;
mod cli;
mod codec;
mod history;
mod identity;
mod raw;
mod reliability;
mod router;
mod store;
mod user;
mod web;
