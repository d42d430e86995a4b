//! What the clients (emitter, exhibitor, `evchat chat`) share, one job a
//! file: frames over a blocking socket (`wire`), registration with the
//! server and its errors (`register`), the emitter's input syntax
//! (`command`), line input (`input`: the line editor of `editor` and `keys`
//! on a terminal, bounded plain reads otherwise), output that does not
//! garble the line being typed (`printer`), the books on requests awaiting
//! their replies (`replies`) and the terminal itself (`terminal`: raw mode,
//! reads, its width). Clients are simple blocking programs; only the
//! server needs an event loop.

mod command;
mod editor;
pub(crate) mod input;
mod keys;
mod printer;
mod register;
mod replies;
mod terminal;
mod wire;

pub use command::{Command, SyntaxError, parse_command};
pub use editor::Entered;
pub use input::{InputLine, LineInput};
pub use printer::Printer;
pub use register::{RegisterError, Registered, register};
pub use replies::{Book, Farewell, Replies, Settled};
pub use terminal::exit_process;
pub use wire::{FrameReader, FrameWriter};

use std::time::Duration;

/// How long a client waits for the OK to its own FLW.
pub const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);
