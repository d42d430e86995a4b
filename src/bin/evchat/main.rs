//! `evchat <command>`: the user-facing tools in one binary, so nothing
//! installs under a generic name. `chat` is both clients in one terminal,
//! `check` tests any server of the protocol rule by rule, `history` reads a
//! server's message log, `stats` shows a running server's `/stats`, `find`
//! lists the servers that answer LAN discovery, `user` edits accounts, `cert`
//! makes throwaway TLS certificates. The protocol's own clients (`emitter`,
//! `exhibitor`) and the `server` keep their own binaries.

mod cert;
mod chat;
mod check;
mod find;
mod history;
mod stats;
mod user;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "evchat tools: chat, check a server, read its history, and more (the commands below)",
    after_help = "Examples:\n  \
evchat chat 127.0.0.1:5000              chat in this terminal\n  \
evchat check 127.0.0.1:5000             check a server of the protocol, rule by rule\n  \
evchat history /var/lib/evchat --json   a server's history (server --history DIR)\n  \
evchat user add users bob --roles emit  an account in the file users (server --auth users)\n  \
evchat stats 127.0.0.1:5000             a running server's clients and traffic, live\n  \
evchat find                             servers on the LAN that announce themselves\n  \
evchat cert --out tls chat.example      a test CA and certificate (server --tls-cert)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Chat in one terminal: an exhibitor and an emitter paired with it
    Chat(chat::ChatArgs),
    /// Check any server of this protocol against its rules
    Check(check::CheckArgs),
    /// Print a server's message history
    History(history::HistoryArgs),
    /// Add, list or remove accounts in a server's accounts file
    User(user::UserArgs),
    /// A running server's statistics: a live view like top, or one screen
    Stats(stats::StatsArgs),
    /// Make a throwaway CA and a server certificate for trying TLS
    Cert(cert::CertArgs),
    /// List the servers on the LAN that answer discovery (server --announce)
    Find(find::FindArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Chat(args) => chat::run(args),
        Command::Check(args) => check::run(args),
        Command::History(args) => history::run(args),
        Command::User(args) => user::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Cert(args) => cert::run(args),
        Command::Find(args) => find::run(args),
    }
}
