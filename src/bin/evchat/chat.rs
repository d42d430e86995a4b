//! `evchat chat`: placeholder until its issue lands.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ChatArgs {}

pub fn run(_args: ChatArgs) -> ExitCode {
    eprintln!("evchat chat: not built yet");
    ExitCode::FAILURE
}
