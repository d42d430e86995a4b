//! `evchat check`: placeholder until its issue lands.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {}

pub fn run(_args: CheckArgs) -> ExitCode {
    eprintln!("evchat check: not built yet");
    ExitCode::FAILURE
}
