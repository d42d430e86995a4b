//! `evchat check` against servers with known faults: for each fault of the
//! fixture server (tests/check_fixture.rs), exactly the expected checks fail
//! (or, for `choices`, give a note) and every other check passes or is
//! skipped because of one of them. Against the real `server` every check
//! passes, and every check id is some fault's expected failure, so no check
//! is one that cannot fail.

#[path = "check_fixture.rs"]
mod check_fixture;
mod spawn;

use crate::util::{BrokenOutput, ReservedPort, Server, evchat_into, expect_exact};
use check_fixture::{Fault, Fixture, QUEUE_WAIT};
use evchat::proto::{Frame, Kind, SERVER_ID};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

/// The longest a whole `evchat check` run may take here; the slowest,
/// against a fixture, waits out a few 3 s deadlines.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The per-read deadline given to the checker here. Against a fixture a
/// failure often means waiting it out once; the servers answer in
/// microseconds, but on a loaded machine (mutation testing runs these tests
/// 16 at a time on 2 cores) the fixture's thread per connection took more
/// than 1 s to answer an OI.
pub(crate) const CHECK_TIMEOUT: &str = "3";

/// Each fault, the checks it must fail and the choices it must note.
const FAULTS: &[(Fault, &[&str], &[&str])] = &[
    (Fault::LittleEndian, &["wire-header"], &[]),
    (Fault::ExhibitorIdsHigh, &["oi-exhibitor"], &[]),
    (Fault::EmitterIdsHigh, &["oi-emitter"], &[]),
    (Fault::RefusePairing, &["oi-pair"], &[]),
    (Fault::NoSeqEcho, &["seq-echo"], &[]),
    (Fault::UnicastToLowest, &["route-unicast"], &[]),
    (Fault::BroadcastFirstOnly, &["route-broadcast"], &[]),
    // Ignoring pairing also accepts a pairing with an absent exhibitor.
    (
        Fault::IgnorePairing,
        &["route-paired", "flw-paired"],
        &["pair-unknown"],
    ),
    (Fault::ForwardFromServer, &["route-unchanged"], &[]),
    (Fault::OkUnknownDest, &["route-unknown"], &[]),
    (Fault::WrongClistCount, &["creq-clist"], &[]),
    (Fault::FlwNoOk, &["flw-emitter", "flw-exhibitor"], &[]),
    (Fault::PairUnknownAccepted, &[], &["pair-unknown"]),
    (Fault::SequentialIds, &[], &["lowest-free-id"]),
    (Fault::SecondOiOk, &[], &["second-oi"]),
    // A choice the server answers with silence is a note, not a failure.
    (Fault::SecondOiIgnored, &[], &["second-oi"]),
    (Fault::ClistOriginEmitter, &[], &["clist-header"]),
    (Fault::ClistDescending, &[], &["clist-order"]),
    (Fault::EarlyOk, &[], &["ok-after-ack"]),
    // Answering OK before OI answers garbage with OK too.
    (Fault::AcceptBeforeOi, &["frame-before-oi", "garbage"], &[]),
    (Fault::SingleRecv, &["split-frames"], &[]),
    (Fault::OneFramePerRead, &["many-frames"], &[]),
    (Fault::CloseOnUnknown, &["unknown-type"], &[]),
    (Fault::CrashOnEarlyGarbage, &["garbage"], &[]),
    (Fault::ForwardSpoof, &["spoof"], &[]),
    (Fault::CrashOnSpoof, &["spoof"], &[]),
    (Fault::MaxClients64, &["many-clients"], &[]),
    (Fault::BlockOnAck, &["silent-exhibitor", "slow-reader"], &[]),
    (Fault::BlockingWrite, &["slow-reader"], &[]),
    // A crash after a check that passed fails that check.
    (Fault::CrashAfterVanish, &["ok-after-ack"], &[]),
    (
        Fault::NoReplyToEmitter,
        &["route-unicast", "route-broadcast", "creq-clist"],
        &[],
    ),
    // An OK that reads as ERRO: the connection is refused, not accepted.
    (Fault::OkErroSwapped, &["oi-exhibitor", "oi-emitter"], &[]),
    (Fault::FlwFromEmitter, &["flw-paired"], &[]),
    (Fault::ClistDuplicates, &[], &["clist-order"]),
    (Fault::OkUnknownType, &["unknown-type"], &[]),
    // A close is as good an answer as ERRO before OI.
    (Fault::CloseBeforeOi, &[], &[]),
    (Fault::SilentOnVanish, &[], &["ok-after-ack"]),
    (Fault::SecondOiForgets, &[], &["second-oi"]),
    (Fault::SpoofOk, &["spoof"], &[]),
    (Fault::FlwOkNoClose, &["flw-emitter", "flw-exhibitor"], &[]),
    // The identity extension's faults; the plain protocol they serve right.
    (Fault::HelloAckVersion0, &["identity-hello"], &[]),
    (Fault::BadNameAccepted, &["identity-bad-name"], &[]),
    (Fault::NameTakenCaseSensitive, &["identity-name-taken"], &[]),
    (Fault::SecondHelloAccepted, &["identity-second-hello"], &[]),
    (Fault::HelloAfterOiCloses, &["identity-hello-after-oi"], &[]),
    // The opted-in exhibitor of plain-unchanged expects WHO first too.
    (
        Fault::WhoAfterMsg,
        &["identity-who", "identity-plain-unchanged"],
        &[],
    ),
    // The one KICK would close is a plain exhibitor: told a name too.
    (
        Fault::WhoToPlain,
        &["identity-plain-unchanged", "identity-kick-refused"],
        &[],
    ),
    (Fault::KickAccepted, &["identity-kick-refused"], &[]),
    // Rooms and queues; the rest (identity included) they serve right.
    (Fault::RoomIdsLow, &["rooms-join"], &[]),
    (Fault::RoomBadNameAccepted, &["rooms-bad-name"], &[]),
    (Fault::LeaveNotMemberOk, &["rooms-leave"], &[]),
    (Fault::RoomListNoMembers, &["rooms-list"], &[]),
    (
        Fault::RoomMsgFirstMemberOnly,
        &["rooms-msg-members", "rooms-ok-after-all"],
        &[],
    ),
    (Fault::RoomEarlyOk, &["rooms-ok-after-all"], &[]),
    (Fault::RoomMsgToNamed, &["rooms-members-only"], &[]),
    (Fault::RoomToPlain, &["rooms-plain-unchanged"], &[]),
    (
        Fault::RoomNonMemberRefused,
        &["rooms-non-member-writes"],
        &[],
    ),
    (Fault::RoomMissingOk, &["rooms-missing-id"], &[]),
    // Copied like an ordinary room's: every member has it, none waits.
    (
        Fault::QueueToAll,
        &[
            "queue-one-member",
            "queue-prefetch",
            "queue-prefetch-asked",
            "queue-waits",
        ],
        &[],
    ),
    (
        Fault::QueueNoPrefetch,
        &["queue-prefetch", "queue-prefetch-asked"],
        &[],
    ),
    (Fault::QueuePrefetchIgnored, &["queue-prefetch-asked"], &[]),
    (Fault::QueueLostOnLeave, &["queue-redelivery"], &[]),
    (Fault::QueueNoWait, &["queue-waits"], &[]),
    (Fault::QueueNeverGivesUp, &["queue-gives-up"], &[]),
    (Fault::TellOnlineStored, &["tell-online"], &[]),
    (Fault::TellStoredOk, &["tell-waits"], &[]),
    (Fault::TellNoWaiting, &["tell-waits"], &[]),
    (Fault::TellUnknownStored, &["tell-unknown"], &[]),
];

/// How a skip says the server does not speak the identity extension.
const NOT_SPOKEN: &str =
    "not spoken: the server answers HELLO with ERRO: it does not speak the identity extension";
/// How a skip says the server does not speak rooms.
const ROOMS_NOT_SPOKEN: &str =
    "not spoken: the server answers JOIN with ERRO: it does not speak rooms";

/// `--queue-wait` as the checker is told it: the fixture's, and the real
/// server's in these tests.
pub(crate) fn queue_wait() -> String {
    QUEUE_WAIT.as_secs().to_string()
}

/// Runs `evchat ARGS` to its end, within [`RUN_LIMIT`]; (exit code,
/// stdout, stderr).
pub(crate) fn evchat(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_evchat"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn evchat");
    let (tx, rx) = channel();
    for (name, mut pipe) in [
        (
            "stdout",
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ),
        ("stderr", Box::new(child.stderr.take().unwrap())),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send((name, text));
        });
    }
    // Both pipes close when evchat exits; the run must end by then.
    let deadline = Instant::now() + RUN_LIMIT;
    let (mut out, mut err) = (String::new(), String::new());
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((name, text)) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("evchat {args:?} did not finish within {RUN_LIMIT:?}");
        };
        if name == "stdout" {
            out = text
        } else {
            err = text
        }
    }
    let status = child.wait().expect("wait evchat");
    (status.code().expect("exit code"), out, err)
}

/// Runs `evchat ARGS` (a report with --json); (exit code, stderr, report).
fn evchat_json(args: &[&str]) -> (i32, String, Value) {
    let (code, out, err) = evchat(args);
    let report =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"));
    (code, err, report)
}

/// One check's line in the JSON report.
pub(crate) struct Seen {
    verdict: String,
    detail: String,
    level: String,
}

/// Runs every check against `target` as JSON, the queue's give-up check
/// included (told the fixture's `--queue-wait`), and the stored TELL's
/// (told the server keeps history, as the fixture does); (exit code, id →
/// outcome).
pub(crate) fn check_json(target: &str, timeout: &str) -> (i32, BTreeMap<String, Seen>, Value) {
    check_json_with(target, timeout, true)
}

/// As [`check_json`]; `history`: `--history` is given (the server keeps
/// history).
pub(crate) fn check_json_with(
    target: &str,
    timeout: &str,
    history: bool,
) -> (i32, BTreeMap<String, Seen>, Value) {
    let wait = queue_wait();
    let mut args = vec![
        "check",
        target,
        "--json",
        "--timeout",
        timeout,
        "--queue-wait",
        &wait,
    ];
    if history {
        args.push("--history");
    }
    let (code, _, report) = evchat_json(&args);
    let mut seen = BTreeMap::new();
    for check in report["checks"].as_array().expect("checks array") {
        let text = |key: &str| check[key].as_str().unwrap_or_default().to_string();
        seen.insert(
            text("id"),
            Seen {
                verdict: text("verdict"),
                detail: text("detail"),
                level: text("level"),
            },
        );
    }
    (code, seen, report)
}

pub(crate) fn ids_with(seen: &BTreeMap<String, Seen>, verdict: &str) -> BTreeSet<String> {
    seen.iter()
        .filter(|(_, s)| s.verdict == verdict)
        .map(|(id, _)| id.clone())
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Every skip must name its cause: a needed check that failed or was
/// skipped, the check after which the server stopped answering, or (the
/// identity level only) an extension the server does not speak.
fn assert_skips_explained(seen: &BTreeMap<String, Seen>) {
    for (id, s) in seen.iter().filter(|(_, s)| s.verdict == "skip") {
        if s.detail.starts_with("not spoken: ") {
            assert!(
                ["identity", "rooms"].contains(&s.level.as_str()),
                "{id}: {}",
                s.detail
            );
        } else if let Some(rest) = s.detail.strip_prefix("needs ") {
            let (need, why) = rest.split_once(", which ").expect("needs X, which ...");
            let want = if why == "failed" { "fail" } else { "skip" };
            assert_eq!(seen[need].verdict, want, "{id}: {}", s.detail);
        } else if let Some(after) = s.detail.strip_prefix("server stopped answering after ") {
            assert_eq!(seen[after].verdict, "fail", "{id}: {}", s.detail);
        } else if let Some(rest) = s.detail.strip_prefix("server not answering (") {
            let failed = rest.strip_suffix(" failed)").expect("(X failed)");
            assert_eq!(seen[failed].verdict, "fail", "{id}: {}", s.detail);
        } else {
            panic!("{id}: unexplained skip {:?}", s.detail);
        }
    }
}

fn run_fault(fault: Fault) {
    let (_, fails, notes) = FAULTS
        .iter()
        .find(|(f, _, _)| *f == fault)
        .expect("fault listed");
    let fixture = Fixture::start(fault);
    let (code, seen, report) = check_json(&fixture.target(), CHECK_TIMEOUT);
    assert_eq!(ids_with(&seen, "fail"), set(fails), "{fault:?}: {report:#}");
    assert_eq!(ids_with(&seen, "note"), set(notes), "{fault:?}: {report:#}");
    assert_skips_explained(&seen);
    let summary = &report["summary"];
    assert_eq!(summary["failed"], fails.len(), "{fault:?}");
    assert_eq!(summary["notes"], notes.len(), "{fault:?}");
    // Exit status: 1 for a required failure, 3 for other failures only.
    let required_failed = fails.iter().any(|id| seen[*id].level == "required");
    let want = match (required_failed, fails.is_empty()) {
        (true, _) => 1,
        (false, false) => 3,
        (false, true) => 0,
    };
    assert_eq!(code, want, "{fault:?} exit status");
}

/// A correct server of the plain protocol passes every check but the
/// identity and rooms levels', which are not spoken there: skipped, never
/// failed.
#[test]
fn correct_fixture_passes_every_check() {
    let fixture = Fixture::start(Fault::None);
    let (code, seen, report) = check_json(&fixture.target(), CHECK_TIMEOUT);
    for (id, s) in &seen {
        if s.level == "identity" || s.level == "rooms" {
            assert_eq!(
                (s.verdict.as_str(), s.detail.as_str()),
                ("skip", NOT_SPOKEN),
                "{id}"
            );
        } else {
            assert_eq!(s.verdict, "pass", "{id}: {report:#}");
        }
    }
    assert_eq!(code, 0);
}

/// Speaking the identity extension without rooms: the rooms level is not
/// spoken (JOIN is an unknown type), everything else passes.
#[test]
fn correct_fixture_speaking_identity_passes_every_check() {
    let fixture = Fixture::start(Fault::SpeaksIdentity);
    let (code, seen, report) = check_json(&fixture.target(), CHECK_TIMEOUT);
    for (id, s) in &seen {
        if s.level == "rooms" {
            assert_eq!(
                (s.verdict.as_str(), s.detail.as_str()),
                ("skip", ROOMS_NOT_SPOKEN),
                "{id}"
            );
        } else {
            assert_eq!(s.verdict, "pass", "{id}: {report:#}");
        }
    }
    assert_eq!(code, 0);
}

#[test]
fn correct_fixture_speaking_rooms_passes_every_check() {
    let fixture = Fixture::start(Fault::SpeaksRooms);
    let (code, seen, report) = check_json(&fixture.target(), CHECK_TIMEOUT);
    let not_passed: Vec<_> = seen.iter().filter(|(_, s)| s.verdict != "pass").collect();
    assert!(not_passed.is_empty(), "{report:#}");
    assert_eq!(code, 0);
}

/// The give-up check waits out the server's --queue-wait: without being
/// told it, it is not run, and says what to give.
#[test]
fn queue_gives_up_is_not_run_without_queue_wait() {
    let fixture = Fixture::start(Fault::QueueNeverGivesUp);
    let (code, out, _) = evchat(&[
        "check",
        &fixture.target(),
        "--level",
        "rooms",
        "--timeout",
        CHECK_TIMEOUT,
    ]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("  skip  queue-gives-up "))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        lines[at + 1].trim(),
        "not asked: give --queue-wait SECS (the server's) to wait a queue message out"
    );
    assert_eq!(
        lines.last(),
        Some(&"check: 16 passed, 0 failed, 0 notes, 3 skipped")
    );
}

/// With accounts every HELLO needs a secret the checker does not have: the
/// level cannot claim names there, and says so.
#[test]
fn a_server_with_accounts_is_not_checked_for_identity() {
    let dir = crate::util::TempDir::new("check-auth");
    let path = dir.path().join("accounts");
    evchat::auth::Accounts::default().save(&path).unwrap();
    let server = Server::start(&["--auth", path.to_str().unwrap()]);
    let (code, out, _) = evchat(&["check", &server.target(), "--level", "identity"]);
    assert_eq!(code, 0);
    let why = "not spoken: the server requires accounts (server --auth): these checks claim \
               names, which needs a server without";
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[1].split_whitespace().take(2).collect::<Vec<_>>(),
        ["skip", "identity-hello"]
    );
    assert_eq!(lines[2].trim(), why);
    assert_eq!(
        lines.last(),
        Some(&"check: 0 passed, 0 failed, 0 notes, 8 skipped")
    );
}

#[test]
fn real_server_passes_every_check() {
    // Without history (which would replay broadcasts to each new
    // exhibitor): the checks of a TELL to an offline name are not asked,
    // and are run below.
    let server = Server::start(&["--queue-wait", &queue_wait()]);
    let (code, seen, report) = check_json_with(&server.target(), CHECK_TIMEOUT, false);
    let mut listed: BTreeSet<String> = listed_ids().into_iter().collect();
    for id in HISTORY_ONLY {
        listed.remove(*id);
    }
    assert_eq!(ids_with(&seen, "pass"), listed, "{report:#}");
    assert_eq!(report["summary"]["passed"], listed.len());
    assert_eq!(
        seen["tell-waits"].detail,
        "not asked: give --history when the server keeps history: only then is a TELL to an \
         offline name stored"
    );
    assert_eq!(
        seen["tell-unknown"].detail,
        "not asked: give --history when the server keeps history: without it a TELL to any \
         offline name is refused with ERRO, known or not"
    );
    assert_eq!(code, 0);
}

/// The checks run only against a server with `--history`.
pub(crate) const HISTORY_ONLY: &[&str] = &["tell-waits", "tell-unknown"];

/// The real server with `--history` stores a TELL to an offline name it
/// knows, sends it behind WAITING, and refuses one to a name it does not.
#[test]
fn real_server_with_history_passes_the_stored_tell_checks() {
    let dir = crate::util::TempDir::new("check-tell");
    let server = Server::start(&["--history", dir.arg()]);
    let (code, out, _) = evchat(&[
        "check",
        &server.target(),
        "--only",
        "tell-waits,tell-unknown",
        "--history",
        "--timeout",
        CHECK_TIMEOUT,
    ]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        lines[1],
        "pass  tell-waits          a TELL to an offline name is stored (ROOMACK code 9) and sent behind \
         WAITING when it is back"
    );
    assert_eq!(
        lines[2],
        "pass  tell-unknown        a TELL to a name the server does not know is refused with \
         ROOMACK code 10"
    );
    assert_eq!(
        lines.last(),
        Some(&"check: 2 passed, 0 failed, 0 notes, 0 skipped")
    );
}

/// A server with history replays recent broadcasts, the checker's own
/// among them, to each new exhibitor: with `--history` the checker passes
/// over them and every check passes, on a second run too (which meets the
/// first run's broadcasts from its first exhibitor on).
#[test]
fn real_server_with_history_passes_every_check_twice() {
    let dir = crate::util::TempDir::new("check-replay");
    let server = Server::start(&["--history", dir.arg(), "--queue-wait", &queue_wait()]);
    let listed: BTreeSet<String> = listed_ids().into_iter().collect();
    for run in 1..=2 {
        let (code, seen, report) = check_json_with(&server.target(), CHECK_TIMEOUT, true);
        assert_eq!(ids_with(&seen, "pass"), listed, "run {run}: {report:#}");
        assert_eq!(code, 0, "run {run}");
    }
}

/// A long replay comes in several reads, each opted-in exhibitor's with a
/// WHO before each sender's first broadcast, some of which fall at a read's
/// end: the checker still passes over every replay of its own, WHOs
/// included (what a remote server or TLS brings about with a short one).
#[test]
fn replays_of_its_own_that_span_reads_are_passed_over_whos_included() {
    let dir = crate::util::TempDir::new("check-replay-long");
    let server = Server::start(&["--history", dir.arg(), "--queue-wait", &queue_wait()]);
    let mut ex = server.raw();
    let ex_id = ex.identify_exhibitor();
    // 50 named senders (the replay's length), each a broadcast of about
    // 1 KB in the checker's own words: some 51 KB of replay.
    for i in 0..50u16 {
        let name = format!("fill{i}");
        let mut em = server.raw();
        em.send(&crate::identity::hello(name.as_bytes(), b""));
        expect_exact(&mut em, &crate::identity::helloack(0, 7, name.as_bytes()));
        let em_id = em.identify_emitter(1);
        let text = format!("evchat check: filler {i} {}", "x".repeat(1000));
        let sent = Frame::msg(em_id, 0, 0, text.into_bytes())
            .unwrap()
            .to_bytes();
        em.send(&sent);
        expect_exact(&mut ex, &sent);
        ex.send(&Frame::bare(Kind::Ok, ex_id, em_id, 0).to_bytes());
        expect_exact(
            &mut em,
            &Frame::bare(Kind::Ok, SERVER_ID, em_id, 0).to_bytes(),
        );
    }
    drop(ex);
    let listed: BTreeSet<String> = listed_ids().into_iter().collect();
    let (code, seen, report) = check_json_with(&server.target(), CHECK_TIMEOUT, true);
    assert_eq!(ids_with(&seen, "pass"), listed, "{report:#}");
    assert_eq!(code, 0);
}

/// Without `--history`, a replayed broadcast is a failure whose hint names
/// the replay and the flag, not the rule the check was about.
#[test]
fn a_replayed_broadcast_without_history_is_told_as_one() {
    let dir = crate::util::TempDir::new("check-replay-hint");
    let server = Server::start(&["--history", dir.arg()]);
    let (code, _, _) = evchat(&[
        "check",
        &server.target(),
        "--only",
        "route-broadcast",
        "--timeout",
        CHECK_TIMEOUT,
    ]);
    assert_eq!(code, 0);
    let (code, out, _) = evchat(&[
        "check",
        &server.target(),
        "--only",
        "route-unicast",
        "--timeout",
        CHECK_TIMEOUT,
    ]);
    assert_eq!(code, 1, "{out}");
    let hint = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("hint:"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        hint.trim(),
        "this is a broadcast an earlier check sent, replayed: the server keeps history and \
         replays recent broadcasts to each new exhibitor; give --history to evchat check (or \
         start the server with --replay 0)"
    );
    assert!(out.contains("\"evchat check: to everyone\""), "{out}");
}

/// The ids `--list --json` names, in order.
pub(crate) fn listed_ids() -> Vec<String> {
    let (code, out, _) = evchat(&["check", "--list", "--json"]);
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).expect("JSON");
    list["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn every_check_is_some_faults_expected_failure() {
    let listed = listed_ids();
    let unique: BTreeSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "duplicate ids: {listed:?}");
    let caught: BTreeSet<String> = FAULTS
        .iter()
        .flat_map(|(_, fails, notes)| fails.iter().chain(notes.iter()))
        .map(|id| id.to_string())
        .collect();
    let listed: BTreeSet<String> = listed.into_iter().collect();
    assert_eq!(
        listed, caught,
        "checks no fault catches, or faults naming unknown checks"
    );
}

#[test]
fn crash_on_spoof_skips_the_rest_as_stopped() {
    let fixture = Fixture::start(Fault::CrashOnSpoof);
    let (code, seen, report) = check_json(&fixture.target(), CHECK_TIMEOUT);
    assert_eq!(code, 3, "{report:#}");
    let stopped: BTreeSet<String> = seen
        .iter()
        .filter(|(_, s)| s.detail == "server stopped answering after spoof")
        .map(|(id, _)| id.clone())
        .collect();
    // Every check after it, the identity level's included.
    let after: Vec<String> = listed_ids()
        .into_iter()
        .skip_while(|id| id != "spoof")
        .skip(1)
        .collect();
    assert_eq!(
        after[..3],
        ["many-clients", "silent-exhibitor", "slow-reader"]
    );
    assert_eq!(stopped, after.into_iter().collect(), "{report:#}");
    // The check's own failure is kept, with the stop added to it.
    let spoof = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "spoof")
        .expect("spoof");
    let detail = spoof["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("exhibitor ")
            && detail.ends_with(
                ": the server closed the connection; and the server stopped answering after this \
                 check"
            ),
        "{report:#}"
    );
    assert_eq!(spoof["received"], "connection closed", "{report:#}");
}

#[test]
fn a_crash_after_a_passing_check_fails_that_check() {
    let fixture = Fixture::start(Fault::CrashAfterVanish);
    let (code, _, report) = evchat_json(&[
        "check",
        &fixture.target(),
        "--only",
        "ok-after-ack,frame-before-oi",
        "--json",
        "--timeout",
        CHECK_TIMEOUT,
    ]);
    assert_eq!(code, 3, "{report:#}");
    let [ok_after_ack, frame_before_oi] = &report["checks"].as_array().unwrap()[..] else {
        panic!("two checks: {report:#}");
    };
    // The check saw its ERRO: the probe after it is what finds the server
    // gone, and the next check is not run against nothing.
    assert_eq!(ok_after_ack["verdict"], "fail", "{report:#}");
    assert_eq!(
        ok_after_ack["detail"],
        "the server stopped answering after this check"
    );
    assert_eq!(
        ok_after_ack["expected"],
        "the server still accepts a connection and answers OI"
    );
    assert_eq!(frame_before_oi["verdict"], "skip");
    assert_eq!(
        frame_before_oi["detail"],
        "server stopped answering after ok-after-ack"
    );
}

#[test]
fn a_failure_shows_what_was_sent_expected_and_received() {
    let fixture = Fixture::start(Fault::BroadcastFirstOnly);
    let (code, out, _) = evchat(&[
        "check",
        &fixture.target(),
        "--only",
        "route-broadcast",
        "--timeout",
        CHECK_TIMEOUT,
    ]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("  FAIL  route-broadcast "))
        .unwrap_or_else(|| panic!("{out}"));
    let detail: Vec<&str> = lines[at + 1..].iter().map(|l| l.trim_start()).collect();
    assert!(
        detail[0].starts_with("exhibitor ") && detail[0].ends_with(": nothing arrived within 3s"),
        "{out}"
    );
    assert_eq!(detail[1], "rule:      PROTOCOL.md, Server rules 3");
    assert!(
        detail[2].starts_with("statement: \"Se o campo destino possuir o valor zero"),
        "{out}"
    );
    // The emitter's MSG first, then what the exhibitor that got nothing sent.
    assert_eq!(
        detail[3],
        "sent:      emitter 1: 00 05 00 01 00 00 00 01 00 19 65 76 63 68 61 74 20 63 68 65 63 6b \
         3a 20 74 6f 20 65 76 65 72 79 6f 6e 65   MSG(origin 1, dest 0, seq 1) \"evchat check: to \
         everyone\""
    );
    assert_eq!(
        detail[4],
        "sent:      exhibitor 4097: 00 03 00 00 ff ff 00 00   OI(origin 0, dest 65535, seq 0)"
    );
    assert!(
        detail[5].starts_with(
            "expected:  MSG with the text of MSG(origin 1, dest 0, seq 1) \"evchat check: to \
             everyone\""
        ),
        "{out}"
    );
    assert_eq!(detail[6], "received:  nothing within 3s");
    assert_eq!(
        detail[7],
        "hint:      a broadcast loop must visit every exhibitor, not stop after the first"
    );
    assert_eq!(detail[8], "check: 0 passed, 1 failed, 0 notes, 0 skipped");
    assert!(
        !out.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
}

#[test]
fn little_endian_failure_is_shown_in_hex_and_decoded_both_ways() {
    let fixture = Fixture::start(Fault::LittleEndian);
    let (_, seen, report) = check_json(&fixture.target(), CHECK_TIMEOUT);
    assert_eq!(seen["wire-header"].verdict, "fail");
    let check = &report["checks"][0];
    assert_eq!(check["received_hex"], "02 00 ff ff 00 00 00 00");
    assert_eq!(
        check["received"],
        "unknown type 512; read little-endian it would be ERRO(origin 65535, dest 0, seq 0)"
    );
    assert_eq!(check["sent"][0]["hex"], "00 03 00 00 ff ff 00 00");
}

#[test]
fn unknown_only_id_is_a_usage_error() {
    let (code, out, err) = evchat(&["check", "127.0.0.1:9", "--only", "route-unicast,nope"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(
        err.starts_with("evchat check: no check 'nope'; the checks are: wire-header, "),
        "{err}"
    );
}

#[test]
fn help_warns_about_robust_and_ends_with_examples() {
    let (code, out, _) = evchat(&["check", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("WARNING: the `robust` level sends hostile input"),
        "{out}"
    );
    assert!(
        out.contains("opens hundreds of connections at once"),
        "{out}"
    );
    let examples = out.rfind("Examples:").expect("examples");
    assert!(
        out[examples..].contains("evchat check 127.0.0.1:5000"),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with("the checks, without running them"),
        "{out}"
    );
}

#[test]
fn level_required_runs_only_required_checks() {
    let fixture = Fixture::start(Fault::None);
    let (code, out, _) = evchat(&["check", &fixture.target(), "--level", "required", "--json"]);
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&out).expect("JSON");
    let levels: BTreeSet<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, BTreeSet::from(["required"]));
    assert_eq!(report["summary"]["passed"], 14);
}

/// Nothing listening: no check can run, so one line says why, and a
/// status of its own tells a script a dead server from a broken one.
#[test]
fn nothing_listening_is_one_line_and_a_status_of_its_own() {
    let unused = ReservedPort::new();
    let target = unused.target();
    for json in [false, true] {
        let mut args = vec!["check", target.as_str(), "--timeout", CHECK_TIMEOUT];
        if json {
            args.push("--json");
        }
        let (code, out, err) = evchat(&args);
        assert_eq!(code, 5, "{out}{err}");
        assert_eq!(out, "");
        assert_eq!(
            err,
            format!(
                "evchat check: cannot connect to {target}: nothing is listening there \
                 (connection refused) — is the server running?\n"
            )
        );
    }
}

macro_rules! fault_tests {
    ($($name:ident: $fault:ident,)*) => {
        $(
            #[test]
            fn $name() {
                run_fault(Fault::$fault);
            }
        )*
    };
}

fault_tests! {
    fault_little_endian: LittleEndian,
    fault_exhibitor_ids_high: ExhibitorIdsHigh,
    fault_emitter_ids_above_4095: EmitterIdsHigh,
    fault_refuse_pairing: RefusePairing,
    fault_no_seq_echo: NoSeqEcho,
    fault_unicast_to_lowest: UnicastToLowest,
    fault_broadcast_first_only: BroadcastFirstOnly,
    fault_ignore_pairing: IgnorePairing,
    fault_forward_from_server: ForwardFromServer,
    fault_ok_unknown_dest: OkUnknownDest,
    fault_wrong_clist_count: WrongClistCount,
    fault_flw_no_ok: FlwNoOk,
    fault_pair_unknown_accepted: PairUnknownAccepted,
    fault_sequential_ids: SequentialIds,
    fault_second_oi_ok: SecondOiOk,
    fault_second_oi_ignored: SecondOiIgnored,
    fault_clist_origin_emitter: ClistOriginEmitter,
    fault_clist_descending: ClistDescending,
    fault_early_ok: EarlyOk,
    fault_accept_before_oi: AcceptBeforeOi,
    fault_single_recv_header: SingleRecv,
    fault_one_frame_per_read: OneFramePerRead,
    fault_close_on_unknown_type: CloseOnUnknown,
    fault_crash_on_early_garbage: CrashOnEarlyGarbage,
    fault_forward_spoof: ForwardSpoof,
    fault_crash_on_spoof: CrashOnSpoof,
    fault_max_64_clients: MaxClients64,
    fault_block_on_exhibitor_ack: BlockOnAck,
    fault_blocking_write: BlockingWrite,
    fault_crash_after_vanish: CrashAfterVanish,
    fault_no_reply_to_emitter: NoReplyToEmitter,
    fault_ok_and_erro_swapped: OkErroSwapped,
    fault_flw_from_emitter: FlwFromEmitter,
    fault_clist_duplicates: ClistDuplicates,
    fault_ok_unknown_type: OkUnknownType,
    fault_close_before_oi: CloseBeforeOi,
    fault_silent_on_vanish: SilentOnVanish,
    fault_second_oi_forgets_the_client: SecondOiForgets,
    fault_spoof_answered_ok: SpoofOk,
    fault_flw_ok_without_close: FlwOkNoClose,
    fault_helloack_version_0: HelloAckVersion0,
    fault_bad_name_accepted: BadNameAccepted,
    fault_name_taken_case_sensitive: NameTakenCaseSensitive,
    fault_second_hello_accepted: SecondHelloAccepted,
    fault_hello_after_oi_closes: HelloAfterOiCloses,
    fault_who_after_msg: WhoAfterMsg,
    fault_who_to_plain_clients: WhoToPlain,
    fault_kick_accepted_without_admin: KickAccepted,
    fault_room_ids_low: RoomIdsLow,
    fault_room_bad_name_accepted: RoomBadNameAccepted,
    fault_leave_not_member_ok: LeaveNotMemberOk,
    fault_room_list_no_members: RoomListNoMembers,
    fault_room_msg_first_member_only: RoomMsgFirstMemberOnly,
    fault_room_early_ok: RoomEarlyOk,
    fault_room_msg_to_named: RoomMsgToNamed,
    fault_room_to_plain: RoomToPlain,
    fault_room_non_member_refused: RoomNonMemberRefused,
    fault_room_missing_ok: RoomMissingOk,
    fault_queue_to_all: QueueToAll,
    fault_queue_no_prefetch: QueueNoPrefetch,
    fault_queue_prefetch_ignored: QueuePrefetchIgnored,
    fault_queue_lost_on_leave: QueueLostOnLeave,
    fault_queue_no_wait: QueueNoWait,
    fault_queue_never_gives_up: QueueNeverGivesUp,
    fault_tell_online_stored: TellOnlineStored,
    fault_tell_stored_answered_ok: TellStoredOk,
    fault_tell_delivered_without_waiting: TellNoWaiting,
    fault_tell_unknown_stored: TellUnknownStored,
}

/// Runs `evchat ARGS` with its stdout on a pseudo-terminal; what it wrote.
fn on_terminal(args: &[&str], envs: &[(&str, &str)]) -> String {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the given ints; the other
    // arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both descriptors were just opened and are owned here only.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_evchat"));
    cmd.args(args)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .stderr(Stdio::null());
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().expect("spawn evchat");
    // The parent's copy of the terminal's slave side goes with `cmd`, so
    // the master reads end (EIO) once evchat exits.
    drop(cmd);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut chunk) {
            out.extend_from_slice(&chunk[..n]);
        }
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(RUN_LIMIT)
        .expect("evchat output on the terminal");
    child.wait().expect("wait evchat");
    String::from_utf8(out).expect("UTF-8")
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let fixture = Fixture::start(Fault::None);
    let target = fixture.target();
    let args = ["check", target.as_str(), "--only", "wire-header"];
    let coloured = on_terminal(&args, &[]);
    assert!(
        coloured.contains("  \x1b[32mpass\x1b[0m  wire-header "),
        "{coloured:?}"
    );
    let plain = on_terminal(&args, &[("NO_COLOR", "1")]);
    assert!(plain.contains("  pass  wire-header "), "{plain:?}");
    assert!(!plain.contains('\x1b'), "{plain:?}");
}

#[test]
fn protocol_md_names_every_check_exactly_once() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md");
    let protocol = std::fs::read_to_string(path).expect("PROTOCOL.md");
    for id in listed_ids() {
        let named = protocol.matches(&format!("`{id}`")).count();
        assert_eq!(named, 1, "PROTOCOL.md names `{id}` {named} times");
    }
}

#[test]
fn list_shows_every_check_under_its_level_without_connecting() {
    let (code, out, _) = evchat(&["check", "--list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "required:");
    assert_eq!(
        lines[1],
        "  wire-header               frames start with an 8-byte header of big-endian u16 \
         fields  (PROTOCOL.md, Wire format)"
    );
    let headings: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with(' '))
        .collect();
    assert_eq!(
        headings,
        ["required:", "choices:", "robust:", "identity:", "rooms:"]
    );
    let listed: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("  "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(listed, listed_ids());
    // Each level lists its own checks and those below it.
    for (level, want) in [
        ("required", &["required:"][..]),
        ("robust", &["required:", "robust:"][..]),
        ("identity", &["identity:"][..]),
        ("rooms", &["rooms:"][..]),
    ] {
        let (code, out, _) = evchat(&["check", "--list", "--level", level]);
        assert_eq!(code, 0);
        let headings: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
        assert_eq!(headings, want, "--level {level}");
    }
}

#[test]
fn a_target_is_required_unless_listing() {
    let (code, out, err) = evchat(&["check"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("<HOST:PORT>"), "{err}");
    let (code, _, err) = evchat(&["check", "no-port-here"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "evchat check: 'no-port-here' is not HOST:PORT (a host name or address, then a port: \
         127.0.0.1:5000)\n"
    );
    let (code, _, err) = evchat(&["check", "127.0.0.1:9", "--timeout", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("the timeout must be more than 0"), "{err}");
}

#[test]
fn a_report_into_a_closed_pipe_is_not_an_error() {
    // `evchat check --list | head -0`: the reader is gone before the write.
    let done = evchat_into(BrokenOutput::ClosedPipe, &["check", "--list"]);
    assert_eq!(done, (Some(0), String::new()));
}

#[test]
fn a_report_that_cannot_be_written_is_an_error() {
    let done = evchat_into(BrokenOutput::FullDisk, &["check", "--list"]);
    assert_eq!(
        done,
        (
            Some(1),
            "evchat check: cannot write the report: No space left on device (os error 28)\n"
                .to_string()
        )
    );
}

/// A server that takes a JOIN's prefetch but holds every member to one
/// message fails `queue-prefetch-asked`, and the report says which message
/// came instead of the second one held, and what to do.
#[test]
fn a_server_ignoring_the_prefetch_fails_its_check_with_this_report() {
    let fixture = Fixture::start(Fault::QueuePrefetchIgnored);
    let (code, out, _) = evchat(&[
        "check",
        &fixture.target(),
        "--level",
        "rooms",
        "--timeout",
        CHECK_TIMEOUT,
    ]);
    assert_eq!(code, 3, "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL  queue-prefetch-asked "))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        lines[at],
        "FAIL  queue-prefetch-asked     a member whose JOIN asked prefetch 2 holds two \
         unacknowledged messages, not three"
    );
    // The member's exhibitor id depends on whether the server has freed an
    // earlier check's exhibitor by the time this one's OI arrives.
    let exhibitor = lines[at + 1]
        .strip_prefix("exhibitor ")
        .and_then(|l| l.strip_suffix(": not the message sent, unchanged"))
        .and_then(|id| id.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(evchat::proto::EXHIBITOR_IDS.contains(&exhibitor), "{out}");
    let field = |name: &str| {
        lines[at..]
            .iter()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .trim()
    };
    assert_eq!(
        field("rule:"),
        "PROTOCOL.md, Extension: rooms and queues, Work queues, Prefetch"
    );
    assert!(
        field("expected:").ends_with("\"evchat check: prefetch 2 of 2\""),
        "{out}"
    );
    assert!(
        field("received:").ends_with("\"evchat check: while two are held\""),
        "{out}"
    );
    assert_eq!(
        field("hint:"),
        "a member whose JOIN carried prefetch P holds up to P unacknowledged messages of the \
         queue: give it the second before the first's OK"
    );
    assert_eq!(
        lines.last(),
        Some(&"check: 15 passed, 1 failed, 0 notes, 3 skipped")
    );
}
