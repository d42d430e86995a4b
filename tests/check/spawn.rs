//! `evchat check --spawn 'COMMAND {port}'`: a server that dies whenever a
//! client leaves (the fixture's `CrashOnLeave`, run as a process of its own)
//! still gets a verdict on every check; without `--spawn` the report says
//! which checks were not run and suggests it; a command that never
//! listens, one that exits at once and one without `{port}` each get a
//! clear report, within a bound.

use super::check_fixture::{Fault, Fixture};
use super::{CHECK_TIMEOUT, evchat};

/// The fixture as a process of its own, for `--spawn` to start: the test
/// binary runs this (ignored in a normal run) with `EVCHAT_FIXTURE_FAULT`
/// and `EVCHAT_FIXTURE_PORT` set. It serves until the fixture stops, then
/// exits with status 70, as a crashed server would.
#[test]
#[ignore = "not a test: the fixture server as a process, started by the --spawn tests"]
fn fixture_process() {
    let fault = match std::env::var("EVCHAT_FIXTURE_FAULT").as_deref() {
        Ok("CrashOnLeave") => Fault::CrashOnLeave,
        Ok("CrashOnSpoof") => Fault::CrashOnSpoof,
        other => panic!("EVCHAT_FIXTURE_FAULT: {other:?}"),
    };
    let port = std::env::var("EVCHAT_FIXTURE_PORT")
        .expect("EVCHAT_FIXTURE_PORT")
        .parse()
        .expect("a port");
    let fixture = Fixture::start_on(fault, port);
    fixture.wait_stopped();
    std::process::exit(70);
}

/// The `--spawn` command that runs [`fixture_process`] with `fault`.
fn fixture_command(fault: &str) -> String {
    let exe = std::env::current_exe().expect("the test binary");
    format!(
        "EVCHAT_FIXTURE_FAULT={fault} EVCHAT_FIXTURE_PORT={{port}} exec '{}' \
         check::spawn::fixture_process --exact --ignored --nocapture",
        exe.display()
    )
}

/// Each check's first line (verdict, id, title) of a text report, and
/// the lines after the checks.
fn verdict_lines(report: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

/// What `--spawn` prints under a check the server did not survive.
const STOPPED: &str = "the server stopped answering after this check";

/// The fixture that dies whenever a client leaves dies after nearly every
/// check, yet each check ran on a server of its own: every check gets the
/// verdict a correct server gets, and the report says which checks the
/// server did not survive. (Which ones varies: the probe after a check may
/// connect before the server has seen the check's clients leave.)
#[test]
fn spawn_gives_a_server_that_dies_when_a_client_leaves_a_verdict_on_every_check() {
    let correct = Fixture::start(Fault::None);
    let (code, want, _) = evchat(&["check", &correct.target(), "--timeout", CHECK_TIMEOUT]);
    assert_eq!(code, 0, "{want}");
    let command = fixture_command("CrashOnLeave");
    let (code, report, err) = evchat(&["check", "--spawn", &command, "--timeout", CHECK_TIMEOUT]);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "evchat check --spawn '{command}': {} checks",
            verdict_lines(&want).len()
        )
    );
    assert_eq!(
        verdict_lines(&report),
        verdict_lines(&want),
        "{report}\n{err}"
    );
    let summary = want.lines().last().expect("a summary");
    let at = lines
        .iter()
        .position(|l| *l == summary)
        .unwrap_or_else(|| panic!("{report}"));
    // Under a check: its verdict's details (as against the correct
    // server) or the stop; after the summary, how many stops.
    let stops = lines.iter().filter(|l| l.trim() == STOPPED).count();
    assert!(stops > 0, "{report}");
    let details_want = want.lines().filter(|l| l.starts_with("    ")).count();
    let details = lines[1..at]
        .iter()
        .filter(|l| l.starts_with("    "))
        .count();
    assert_eq!(details, details_want + stops, "{report}");
    assert_eq!(
        lines[at + 1..],
        [format!(
            "the server stopped answering after {stops} of {} checks (each ran on a server of its \
             own)",
            verdict_lines(&want).len()
        )],
        "{report}"
    );
    // A stop counts as a failure, though no check failed.
    assert_eq!(code, 3, "{report}");
}

/// A check whose input kills the server keeps its own failure and the
/// stop; the next check runs on a new server and passes.
#[test]
fn spawn_runs_the_check_after_a_crash_on_a_new_server() {
    let command = fixture_command("CrashOnSpoof");
    let (code, report, err) = evchat(&[
        "check",
        "--spawn",
        &command,
        "--only",
        "spoof,slow-reader",
        "--json",
        "--timeout",
        CHECK_TIMEOUT,
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&report).unwrap_or_else(|e| panic!("{e}: {report}\n{err}"));
    let checks = report["checks"].as_array().expect("checks");
    let seen: Vec<(&str, &str, bool)> = checks
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap();
            (
                id,
                c["verdict"].as_str().unwrap(),
                c["stopped_after"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("spoof", "fail", true), ("slow-reader", "pass", false)],
        "{report:#}"
    );
    assert_eq!(
        report["note"],
        "the server stopped answering after 1 of 2 checks (each ran on a server of its own)"
    );
    assert_eq!(code, 3, "{report:#}");
}

/// Without --spawn, the report says how many checks were not run after
/// the server stopped, and how to have them run.
#[test]
fn without_spawn_a_stopped_server_leaves_checks_not_run_and_spawn_is_suggested() {
    let fixture = Fixture::start(Fault::CrashOnLeave);
    let (code, report, _) = evchat(&["check", &fixture.target(), "--timeout", CHECK_TIMEOUT]);
    assert_eq!(code, 1, "{report}");
    let lines: Vec<&str> = report.lines().collect();
    // The probe after the first check may still find the server: the
    // check the stop is blamed on is the one after which it was gone.
    let after = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("server stopped answering after "))
        .unwrap_or_else(|| panic!("{report}"));
    let not_run = lines
        .iter()
        .filter(|l| l.trim() == format!("server stopped answering after {after}"))
        .count();
    assert!(not_run > 20, "{report}");
    assert_eq!(
        lines.last().copied(),
        Some(
            format!(
                "{not_run} checks were not run: the server stopped answering after {after}; \
                 --spawn 'COMMAND {{port}}' starts a fresh server for each check"
            )
            .as_str()
        ),
        "{report}"
    );
}

/// `evchat check --spawn COMMAND` with no other check than the first, so
/// that a bad command is reported once; (exit code, stdout, stderr).
fn spawn_first_check(command: &str, wait: &str) -> (i32, String, String) {
    evchat(&[
        "check",
        "--spawn",
        command,
        "--spawn-wait",
        wait,
        "--only",
        "wire-header,oi-exhibitor",
        "--timeout",
        CHECK_TIMEOUT,
    ])
}

/// The port a report line names after "port ".
fn port_in(line: &str) -> u16 {
    let rest = line
        .split("port ")
        .nth(1)
        .unwrap_or_else(|| panic!("{line}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{line}"))
}

#[test]
fn spawn_of_a_command_that_never_listens_ends_after_the_wait() {
    let command = "echo starting; exec sleep 60 # {port}";
    let (code, out, err) = spawn_first_check(command, "1");
    assert_eq!(code, 4, "{out}\n{err}");
    let port = port_in(&err);
    let started = command.replace("{port}", &port.to_string());
    let why =
        format!("'{started}' did not listen on port {port} within 1s; its last output: starting");
    assert_eq!(
        err,
        format!("evchat check: the server did not start for wire-header: {why}\n")
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[1..],
        [
            "  skip  wire-header         frames start with an 8-byte header of big-endian u16 fields",
            &format!("                          the server did not start: {why}"),
            "  skip  oi-exhibitor        OI with origin 0 gets OK with an exhibitor id (4096..=8191)",
            "                          the server did not start for wire-header",
            "check: 0 passed, 0 failed, 0 notes, 2 skipped",
        ],
        "{out}"
    );
    // The shell's `sleep` was stopped with its group: nobody listens there
    // and no process of that command is left.
    let left = std::process::Command::new("pgrep")
        .args(["-f", &started])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn spawn_of_a_command_that_exits_at_once_says_how_and_what_it_printed() {
    let command = "echo no such config >&2; exit 3 # {port}";
    let (code, out, err) = spawn_first_check(command, "5");
    assert_eq!(code, 4, "{out}\n{err}");
    let port = port_in(&err);
    let started = command.replace("{port}", &port.to_string());
    assert_eq!(
        err,
        format!(
            "evchat check: the server did not start for wire-header: '{started}' exited (exit \
             status: 3) before listening on port {port}; its last output: no such config\n"
        )
    );
}

#[test]
fn spawn_without_a_port_mark_is_a_usage_error() {
    let (code, out, err) = spawn_first_check("./server 5000", "5");
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(
        err,
        "evchat check: --spawn needs {port} in the command, where the port to listen on goes \
         (e.g. --spawn './server {port}')\n"
    );
}

#[test]
fn spawn_and_an_address_together_are_a_usage_error() {
    let (code, _, err) = evchat(&["check", "127.0.0.1:5000", "--spawn", "./server {port}"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
}

/// Ctrl-C during a `--spawn` run stops the server it started (which is in
/// a process group of its own, out of the terminal's reach) and exits 130.
#[test]
fn interrupting_a_spawn_run_leaves_no_server_behind() {
    use crate::util::{Proc, wait_until};
    // A name no other process has: sleep takes a fraction.
    let marker = format!("sleep 3600.{}", std::process::id());
    let command = format!("exec {marker} # {{port}}");
    let running = || {
        let found = std::process::Command::new("pgrep")
            .args(["-fx", &marker])
            .output()
            .unwrap();
        !found.stdout.is_empty()
    };
    let mut check = Proc::spawn(
        "evchat",
        &[
            "check",
            "--spawn",
            &command,
            "--spawn-wait",
            "60",
            "--only",
            "wire-header",
        ],
    );
    wait_until("the spawned command runs", running);
    check.signal(libc::SIGINT);
    assert_eq!(check.wait().code(), Some(130));
    wait_until("the spawned command is gone", || !running());
}
