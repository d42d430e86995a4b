//! `evchat history`: placeholder until its issue lands.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {}

pub fn run(_args: HistoryArgs) -> ExitCode {
    eprintln!("evchat history: not built yet");
    ExitCode::FAILURE
}
