//! What the clients (emitter, exhibitor, `evchat chat`) share, one job a
//! file: frames over a blocking socket (`wire`), registration with the
//! server and its errors (`register`), the emitter's input syntax
//! (`command`), line input (`input`: the line editor of `editor` and `keys`
//! on a terminal, bounded plain reads otherwise), output that does not
//! garble the line being typed (`printer`), the books on requests awaiting
//! their replies (`replies`), the terminal itself (`terminal`: raw mode,
//! echo off, reads, its width), secrets for a HELLO (`secret`), and the
//! names behind ids (`names`). Clients are simple blocking programs; only the
//! server needs an event loop.

mod command;
mod editor;
pub(crate) mod input;
mod keys;
mod names;
mod printer;
mod register;
mod replies;
mod secret;
mod terminal;
mod wire;

pub use command::{Command, SyntaxError, parse_command};
pub use editor::Entered;
pub use input::{InputLine, LineInput};
pub use names::{NameLookupError, Names};
pub use printer::Printer;
pub use register::{
    Hello, Opened, RegisterError, Registered, Welcome, connect_reason, open_with, register,
    register_with,
};
pub use replies::{Book, Farewell, Replies, Settled};
pub use secret::{
    GivenSecretError, SecretLineError, ask_secret, read_secret_line, secret_from_env,
    secret_from_file,
};
pub use terminal::{EchoOff, exit_process};
pub use wire::{FrameReader, FrameWriter, Incoming, IncomingError, parse_incoming};

use std::time::Duration;

/// How long a client waits for the OK to its own FLW.
pub const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);
