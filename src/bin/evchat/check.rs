//! `evchat check HOST:PORT`: checks any server of the protocol, evchat's or
//! anyone's, rule by rule. This file owns the command line and the run:
//! which checks, in what order, which to skip because a check they need
//! failed, and the liveness probe after each check that turns a crashed
//! server into "stopped answering after CHECK" instead of a cascade of
//! failures. The checks are in `catalogue`, the blocking client
//! with deadlines in `wire`, the output in `report`, the server started
//! afresh for each check (`--spawn`) in `spawn`.

// A `Failure` is the cold path (a check stops at its first) and carries the
// whole report of it; boxing it would only move the allocation.
#![allow(clippy::result_large_err)]

mod catalogue;
mod identity;
mod report;
mod rooms;
mod spawn;
mod wire;

use catalogue::{CATALOGUE, Check, Done, Level};
use evchat::tls::client::{Endpoint, TlsArgs};
use report::{Outcome, Style, Verdict};
use spawn::Spawner;
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;
use wire::{Conn, Ctx, Failure};

/// Exit status when checks failed but no required one did (a required
/// failure is 1). A `choices` check fails only when it cannot run at all.
const EXIT_OTHER_FAILED: u8 = 3;
/// Exit status for a bad command line or an address that does not resolve.
const EXIT_USAGE: u8 = 2;
/// Exit status when the `--spawn` command did not start a server.
const EXIT_NOT_STARTED: u8 = 4;
/// Exit status when nothing could be connected to at the address given.
const EXIT_UNREACHABLE: u8 = 5;

#[derive(clap::Args, Debug)]
// The subcommand's one-line about comes from main.rs; everything else a
// user needs before running it goes after the options.
#[command(after_help = "\
Each check runs on fresh connections; every read has a deadline (--timeout).
Levels: `required` checks what the 2017 statement fixes; `choices` notes where
the server decides differently from evchat on points the statement leaves open
(never a failure); `identity` checks the identity extension (HELLO, names, WHO,
KICK) on a server without accounts, and is reported as not spoken (skipped, never
failed) when the server answers HELLO with ERRO; `rooms` checks rooms and work
queues (JOIN, LEAVE, ROOMS, MSG to a room id), not spoken when the server answers
JOIN with ERRO; the queue's give-up check runs only with --queue-wait (the
server's own, which it waits out), and the checks of a TELL to an offline name
only with --history (a server without history refuses it); `robust` checks what a server
exposed to a network must survive. After each check the server must still answer
an OI.

With --spawn 'COMMAND {port}' each check runs on a server of its own: the
command is run by /bin/sh with a free port (chosen by the kernel) in place of
{port}, in a process group of its own; the check starts once a socket listens
on that port (read from /proc/net/tcp, without connecting: --spawn-wait bounds
the wait) and the group gets SIGTERM after it, SIGKILL 2 s later. A command that
exits saying its address is in use is started again on another port (3 tries).
A server that stops answering after a check then still gets a verdict on every
other: the stop is reported under that check and counts as a failure.

WARNING: the `robust` level sends hostile input (frames split byte by byte,
unknown types, forged origins), opens hundreds of connections at once and
pushes megabytes at a client that does not read. Point it only at a server
you are allowed to test.

Exit status: 0 when no check failed (notes never fail), 1 when a required
check failed, 3 when only other checks failed (or the server stopped after a
check), 2 on a usage error, 4 when the --spawn command did not start a server,
5 when nothing answers a connection at the address (no check is run).

Examples:
  evchat check 127.0.0.1:5000                    every check, 2 s per read
  evchat check localhost:5000 --level required   only what the statement fixes
  evchat check 10.0.0.7:5000 --only route-broadcast,seq-echo
  evchat check 127.0.0.1:5000 --json > report.json
  evchat check --spawn './server {port}'         a fresh server for each check
  evchat check --list                            the checks, without running them")]
pub struct CheckArgs {
    /// The server to check (tls://HOST:PORT for TLS)
    #[arg(value_name = "HOST:PORT", required_unless_present_any = ["list", "spawn"])]
    target: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Start the server under test for each check: a shell command with {port} where the
    /// port to listen on goes
    #[arg(long, value_name = "COMMAND", conflicts_with = "target")]
    spawn: Option<String>,
    /// How long a --spawn server may take to listen
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_timeout)]
    spawn_wait: Duration,
    /// How long any single read, write or connect may take
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_timeout)]
    timeout: Duration,
    /// Which checks: `required`, `robust` (required + robust), `identity` (the identity
    /// extension's only), `rooms` (rooms and queues only) or `all`
    #[arg(long, value_enum, default_value_t = LevelArg::All)]
    level: LevelArg,
    /// The server's --queue-wait: check that a queue message nobody can take is given up
    /// on (ERRO) within it (the check waits that long; without this flag it is not run)
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    queue_wait: Option<Duration>,
    /// The server keeps history (its --history): check that a TELL to an offline name is
    /// stored and sent behind WAITING when the name is back (without this flag it is not run),
    /// and pass over the checker's earlier broadcasts that the server replays to each new
    /// exhibitor
    #[arg(long)]
    history: bool,
    /// Run exactly these checks (comma-separated ids), whatever --level
    #[arg(long, value_name = "ID,...", value_delimiter = ',')]
    only: Vec<String>,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// List the checks --level or --only choose, without running them
    #[arg(long)]
    list: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LevelArg {
    Required,
    Robust,
    Identity,
    Rooms,
    All,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = evchat::cli::parse_secs(text)?;
    if timeout.is_zero() {
        return Err("the timeout must be more than 0".to_string());
    }
    Ok(timeout)
}

pub fn run(args: CheckArgs) -> ExitCode {
    let selected = match select(&args) {
        Ok(selected) => selected,
        Err(message) => {
            eprintln!("evchat check: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if args.list {
        let listing = if args.json {
            report::list_json(&selected)
        } else {
            report::list_text(&selected)
        };
        return print(&listing);
    }
    let (target, outcomes, not_started) = if let Some(command) = &args.spawn {
        let spawner = match Spawner::new(command, args.spawn_wait) {
            Ok(spawner) => spawner,
            Err(message) => {
                eprintln!("evchat check: {message}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let (outcomes, not_started) = run_spawned(
            &spawner,
            (args.timeout, args.queue_wait, args.history),
            &selected,
        );
        let target = format!("--spawn '{}'", spawner.command());
        (target, outcomes, not_started)
    } else {
        let target = args.target.unwrap_or_default();
        let endpoint = match Endpoint::parse(&target, &args.tls) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                eprintln!("evchat check: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let addr = match resolve(&endpoint.addr) {
            Ok(addr) => addr,
            Err(message) => {
                eprintln!("evchat check: {message}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let ctx = Ctx {
            addr,
            timeout: args.timeout,
            tls: endpoint.is_tls().then_some(endpoint),
            queue_wait: args.queue_wait,
            history: args.history,
        };
        let outcomes = run_checks(&ctx, &selected);
        // Nothing to check: one line, not a failure and every check skipped.
        if let Some(why) = unreachable(&outcomes) {
            eprintln!("evchat check: cannot connect to {target}: {why}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
        (target, outcomes, None)
    };
    let shown = if args.json {
        report::json(&target, &outcomes)
    } else {
        let colour = std::io::stdout().is_terminal() && !evchat::cli::no_color();
        report::text(&target, &outcomes, &Style { colour })
    };
    let printed = print(&shown);
    if let Some(why) = not_started {
        eprintln!("evchat check: {why}");
        return ExitCode::from(EXIT_NOT_STARTED);
    }
    let failed = |required: bool| {
        outcomes.iter().any(|o| {
            (o.check.level == Level::Required) == required && matches!(o.verdict, Verdict::Fail(_))
        })
    };
    if failed(true) {
        ExitCode::FAILURE
    } else if failed(false) || outcomes.iter().any(|o| o.stopped_after) {
        ExitCode::from(EXIT_OTHER_FAILED)
    } else {
        printed
    }
}

/// Writes the report; a closed stdout (`| head`) is not an error.
fn print(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("evchat check: cannot write the report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The checks to run, in catalogue order.
fn select(args: &CheckArgs) -> Result<Vec<&'static Check>, String> {
    if !args.only.is_empty() {
        if let Some(unknown) = args.only.iter().find(|id| catalogue::find(id).is_none()) {
            let ids: Vec<&str> = CATALOGUE.iter().map(|c| c.id).collect();
            return Err(format!(
                "no check '{unknown}'; the checks are: {}",
                ids.join(", ")
            ));
        }
        return Ok(CATALOGUE
            .iter()
            .filter(|c| args.only.iter().any(|id| id == c.id))
            .collect());
    }
    Ok(CATALOGUE
        .iter()
        .filter(|c| match args.level {
            LevelArg::Required => c.level == Level::Required,
            LevelArg::Robust => matches!(c.level, Level::Required | Level::Robust),
            LevelArg::Identity => c.level == Level::Identity,
            LevelArg::Rooms => c.level == Level::Rooms,
            LevelArg::All => true,
        })
        .collect())
}

/// The one address every connection goes to.
fn resolve(target: &str) -> Result<SocketAddr, String> {
    target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{target}' (expected HOST:PORT): {e}"))?
        .next()
        .ok_or_else(|| format!("'{target}' resolves to no address"))
}

/// Is the server still there? It must accept a connection and answer an
/// OI with anything at all (a wrong answer is some check's business).
fn probe(ctx: &Ctx) -> Result<(), Failure> {
    Conn::probe(ctx)
}

/// Runs `selected` in order. A check whose needed check did not pass is
/// skipped, saying which. After each check that ran the server must answer
/// a probe; once it stops, that check fails (whatever it saw: a crash may
/// come just after an answer) and every later check is skipped with that
/// reason.
fn run_checks(ctx: &Ctx, selected: &[&'static Check]) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(selected.len());
    let mut stopped: Option<String> = None;
    // The server has answered at least once (a pass or a probe): only then
    // can it "stop" answering.
    let mut answered = false;
    for &check in selected {
        if let Some(reason) = &stopped {
            outcomes.push(Outcome::skipped(check, reason.clone()));
            continue;
        }
        if let Some(reason) = unmet_need(check, &outcomes) {
            outcomes.push(Outcome::skipped(check, reason));
            continue;
        }
        let mut verdict = verdict_of(check, ctx);
        let mut stopped_here = false;
        answered |= !matches!(verdict, Verdict::Fail(_));
        match probe(ctx) {
            Ok(()) => answered = true,
            Err(probe_failure) if answered => {
                stopped = Some(format!("server stopped answering after {}", check.id));
                verdict = stopped_after(verdict, probe_failure);
                stopped_here = true;
            }
            Err(_) => stopped = Some(format!("server not answering ({} failed)", check.id)),
        }
        outcomes.push(Outcome {
            check,
            verdict,
            stopped_after: stopped_here,
        });
    }
    outcomes
}

/// Runs `selected` in order, each on a server `spawner` starts for it and
/// stops after it. A check keeps the verdict of what it saw; a server that
/// no longer answers a probe after it is reported beside that verdict, and
/// the next check has a server of its own. A server that does not start
/// ends the run: that check and the rest are skipped, and the reason is
/// returned.
/// `(timeout, queue_wait, history)`: as the flags gave them.
fn run_spawned(
    spawner: &Spawner,
    (timeout, queue_wait, history): (Duration, Option<Duration>, bool),
    selected: &[&'static Check],
) -> (Vec<Outcome>, Option<String>) {
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(selected.len());
    let mut not_started: Option<(&str, String)> = None;
    for &check in selected {
        if let Some((first, _)) = &not_started {
            let reason = format!("the server did not start for {first}");
            outcomes.push(Outcome::skipped(check, reason));
            continue;
        }
        if let Some(reason) = unmet_need(check, &outcomes) {
            outcomes.push(Outcome::skipped(check, reason));
            continue;
        }
        let mut server = match spawner.start() {
            Ok(server) => server,
            Err(why) => {
                let reason = format!("the server did not start: {why}");
                outcomes.push(Outcome::skipped(check, reason));
                not_started = Some((check.id, why));
                continue;
            }
        };
        // A spawned server is checked over plain TCP on loopback.
        let ctx = Ctx {
            addr: server.addr,
            timeout,
            tls: None,
            queue_wait,
            history,
        };
        let verdict = verdict_of(check, &ctx);
        let stopped_after = probe(&ctx).is_err();
        server.stop();
        outcomes.push(Outcome {
            check,
            verdict,
            stopped_after,
        });
    }
    let not_started =
        not_started.map(|(id, why)| format!("the server did not start for {id}: {why}"));
    (outcomes, not_started)
}

/// Runs one check against the server at `ctx`.
fn verdict_of(check: &Check, ctx: &Ctx) -> Verdict {
    match (check.run)(ctx) {
        Ok(Done::Pass) => Verdict::Pass,
        Ok(Done::Note(note)) => Verdict::Note(note),
        Ok(Done::NotSpoken(why)) => Verdict::Skip(format!("{NOT_SPOKEN}{why}")),
        Ok(Done::NotAsked(why)) => Verdict::Skip(format!("{NOT_ASKED}{why}")),
        Err(failure) => Verdict::Fail(failure),
    }
}

/// How a skip says the server does not speak an extension; the checks that
/// need that one say the same.
const NOT_SPOKEN: &str = "not spoken: ";

/// How a skip says the check needs an option that was not given.
const NOT_ASKED: &str = "not asked: ";

/// Why `check` cannot run: a check it needs ran and did not pass.
fn unmet_need(check: &Check, outcomes: &[Outcome]) -> Option<String> {
    check.needs.iter().find_map(|need| {
        let outcome = outcomes.iter().find(|o| o.check.id == *need)?;
        match &outcome.verdict {
            Verdict::Pass | Verdict::Note(_) => None,
            Verdict::Fail(_) => Some(format!("needs {need}, which failed")),
            Verdict::Skip(why) if why.starts_with(NOT_SPOKEN) => Some(why.clone()),
            Verdict::Skip(_) => Some(format!("needs {need}, which was skipped")),
        }
    })
}

/// Why nothing could be checked, when the first check that ran could not
/// even connect and none got further (the rest were skipped for it). No
/// connection of its own is made to find out: a server that falls over
/// when a client hangs up must meet the first check, not a probe.
fn unreachable(outcomes: &[Outcome]) -> Option<&str> {
    let mut ran = outcomes
        .iter()
        .filter(|o| !matches!(o.verdict, Verdict::Skip(_)));
    let first = ran.next()?;
    if ran.next().is_some() {
        return None;
    }
    match &first.verdict {
        Verdict::Fail(failure) if !first.stopped_after => failure.unreachable.as_deref(),
        _ => None,
    }
}

/// A check after which the liveness probe failed fails, whatever it saw.
fn stopped_after(verdict: Verdict, probe_failure: Failure) -> Verdict {
    const STOPPED: &str = "server stopped answering after this check";
    match verdict {
        Verdict::Fail(mut failure) => {
            failure.summary = format!("{}; and the {STOPPED}", failure.summary);
            Verdict::Fail(failure)
        }
        _ => Verdict::Fail(Failure {
            summary: format!("the {STOPPED}"),
            sent: Vec::new(),
            expected: "the server still accepts a connection and answers OI".to_string(),
            received: probe_failure.summary,
            received_bytes: None,
            hint: Some(
                "one client's input must never crash or stop the server for everyone".to_string(),
            ),
            unreachable: None,
        }),
    }
}
