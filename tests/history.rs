//! The server with `--history` and `evchat history`, end to end through the
//! real binaries: what an emitter's OK promises in each fsync mode, replay
//! to late exhibitors (across restarts too), the lock, recovery, a crash
//! and a full disk under a live server, and the exact output of `evchat
//! history`. The store's own tests are in `store`. Every wait is bounded by
//! a deadline; none is a sleep.

use crate::store::{
    FULL_DISK_LIMIT, big_log, evchat, named, numbered, open_log, read_all, record, record_offsets,
    records, segment_bytes, segment_bytes_v1, segment_path, start_writer, wait_settled, write_log,
};
use crate::util::*;
use evchat::proto::{ClientId, Frame, Kind, SERVER_ID};
use evchat::store::Fsync;
use evchat::store::rooms::RoomRecord;
use evchat::testing::REPLAY_FRAMING;
use evchat::testing::Record;
use evchat::testing::store_format::{Batches, SEGMENT_MAGIC_V3, encode_unsealed, seal_records};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;

/// A raw exhibitor and an unpaired raw emitter on `server`, with their ids.
fn exhibitor_and_emitter(server: &Server) -> (Raw, ClientId, Raw, ClientId) {
    let mut a = server.raw();
    let a_id = a.identify_exhibitor();
    let mut e = server.raw();
    let e_id = e.identify_emitter(1);
    (a, a_id, e, e_id)
}

// ---- evchat history --------------------------------------------------------

/// Three messages as a server would have logged them.
fn sample_log(dir: &Path) {
    write_log(
        dir,
        &[
            record(1_764_596_702_123, 1, 0, b"hello everyone"),
            record(1_764_596_703_000, 2, 4096, b"Oi, \"tudo\" bem?\n"),
            record(1_764_596_704_500, 1, 0, b"tab\there \x1b[31m\xff"),
        ],
    );
}

#[test]
fn history_prints_each_message_as_the_exhibitor_shows_it_with_time_and_ids() {
    let dir = TempDir::new("cli-text");
    sample_log(dir.path());
    let (code, out, err) = evchat(&["history", dir.path().to_str().unwrap()]);
    assert_eq!((code, err), (0, Vec::<String>::new()));
    assert_eq!(
        out,
        [
            r"2025-12-01T13:45:02.123Z Message from 1 to all: hello everyone",
            r#"2025-12-01T13:45:03.000Z Message from 2 to 4096: Oi, "tudo" bem?\n"#,
            r"2025-12-01T13:45:04.500Z Message from 1 to all: tab\there \x1b[31m\xff",
        ]
    );
}

#[test]
fn history_into_a_closed_pipe_is_no_error_into_a_full_disk_is() {
    let dir = TempDir::new("cli-output");
    sample_log(dir.path());
    let d = dir.path().to_str().unwrap();
    // `evchat history DIR | head -0`: the reader is gone before the write.
    let closed = evchat_into(BrokenOutput::ClosedPipe, &["history", d]);
    assert_eq!(closed, (Some(0), String::new()));
    let full = evchat_into(BrokenOutput::FullDisk, &["history", d]);
    assert_eq!(
        full,
        (
            Some(1),
            "evchat history: writing the output: No space left on device (os error 28)\n"
                .to_string()
        )
    );
}

#[test]
fn history_json_gives_utf8_text_or_base64() {
    let dir = TempDir::new("cli-json");
    sample_log(dir.path());
    let (code, out, _) = evchat(&["history", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        [
            concat!(
                r#"{"record":0,"time":"2025-12-01T13:45:02.123Z","time_ms":1764596702123,"#,
                r#""origin":1,"dest":0,"text":"hello everyone"}"#,
            ),
            concat!(
                r#"{"record":1,"time":"2025-12-01T13:45:03.000Z","time_ms":1764596703000,"#,
                r#""origin":2,"dest":4096,"text":"Oi, \"tudo\" bem?\n"}"#,
            ),
            concat!(
                r#"{"record":2,"time":"2025-12-01T13:45:04.500Z","time_ms":1764596704500,"#,
                r#""origin":1,"dest":0,"text_base64":"dGFiCWhlcmUgG1szMW3/"}"#,
            ),
        ]
    );
}

/// A log from before names were kept, then one message from alice, one
/// from a plain client and one from bob, who has alice's old id.
fn named_log(dir: &Path) {
    let old = [record(1_764_596_700_000, 1, 0, b"before names")];
    fs::write(segment_path(dir, 0), segment_bytes_v1(&old)).unwrap();
    write_log(
        dir,
        &[
            named(1_764_596_702_123, 1, 0, "alice", b"hi all"),
            record(1_764_596_703_000, 2, 4096, b"plain to 4096"),
            named(1_764_596_704_500, 1, 0, "Bob_2.0", b"same id, not alice"),
        ],
    );
}

#[test]
fn history_shows_the_senders_name_as_the_chat_does_and_the_id_without_one() {
    let dir = TempDir::new("cli-names");
    named_log(dir.path());
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = evchat(&["history", d]);
    assert_eq!((code, err), (0, Vec::<String>::new()));
    assert_eq!(
        out,
        [
            "2025-12-01T13:45:00.000Z Message from 1 to all: before names",
            "2025-12-01T13:45:02.123Z Message from alice to all: hi all",
            "2025-12-01T13:45:03.000Z Message from 2 to 4096: plain to 4096",
            "2025-12-01T13:45:04.500Z Message from Bob_2.0 to all: same id, not alice",
        ]
    );
    let (code, out, _) = evchat(&["history", d, "--json", "--from", "1"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        [
            concat!(
                r#"{"record":0,"time":"2025-12-01T13:45:00.000Z","time_ms":1764596700000,"#,
                r#""origin":1,"dest":0,"text":"before names"}"#,
            ),
            concat!(
                r#"{"record":1,"time":"2025-12-01T13:45:02.123Z","time_ms":1764596702123,"#,
                r#""origin":1,"name":"alice","dest":0,"text":"hi all"}"#,
            ),
            concat!(
                r#"{"record":3,"time":"2025-12-01T13:45:04.500Z","time_ms":1764596704500,"#,
                r#""origin":1,"name":"Bob_2.0","dest":0,"text":"same id, not alice"}"#,
            ),
        ]
    );
    // --from takes a name too, ignoring case, as names are unique.
    let (code, out, _) = evchat(&["history", d, "--from", "ALICE"]);
    assert_eq!(
        (code, out),
        (
            0,
            vec!["2025-12-01T13:45:02.123Z Message from alice to all: hi all".to_string()]
        )
    );
    // Bad input: a clear error, exit 2, nothing printed.
    let too_long = "a".repeat(25);
    for (bad, why) in [
        ("99999", "'99999' is not an id (0 to 65535)"),
        ("", "'' is neither an id nor a name: the name is empty"),
        (
            "al ice",
            "'al ice' is neither an id nor a name: the name may only hold letters",
        ),
        (
            "1alice",
            "'1alice' is neither an id nor a name: the name must start with a letter",
        ),
        (
            &too_long,
            "is neither an id nor a name: the name is longer than 24 characters",
        ),
    ] {
        let (code, out, err) = evchat(&["history", d, "--from", bad]);
        assert_eq!((code, out), (2, vec![]), "{bad:?}");
        assert!(err[0].contains(why), "{bad:?}: {err:?}");
    }
}

/// A log with rooms in it (HISTORY.md, "Rooms and waiting messages"), as a
/// server writes it: two rooms, messages to them, a TELL stored for a name,
/// and records that are not messages (memberships, a settlement). Written
/// in batches (format 4, through the log), or with `v3` a record each, as
/// evchat wrote it before batches (format 3, as a file).
fn rooms_log(dir: &Path, v3: bool) {
    enum Written {
        Room(u64, RoomRecord<'static>),
        Message(Record),
    }
    let waiting = |wait, origin, seq, room, to, sender, text| RoomRecord::Waiting {
        wait,
        origin,
        seq,
        room,
        to,
        sender,
        roles: 7,
        text,
    };
    let log = [
        Written::Room(
            1_000,
            RoomRecord::Joined {
                room: 0x4000,
                room_name: "Ops",
                queue: false,
                online: true,
                member: "alice",
            },
        ),
        Written::Room(
            1_000,
            RoomRecord::Joined {
                room: 0x4001,
                room_name: "jobs",
                queue: true,
                online: true,
                member: "bob",
            },
        ),
        Written::Message(named(2_000, 1, 0x4000, "alice", b"deploy done")),
        Written::Message(named(3_000, 2, 0, "bob", b"hello all")),
        Written::Room(4_000, waiting(0, 2, 5, 0x4001, "", "bob", b"job 1")),
        Written::Room(5_000, waiting(1, 1, 6, 0, "bob", "alice", b"see you")),
        Written::Room(6_000, RoomRecord::Settled { wait: 0 }),
        Written::Message(record(7_000, 3, 0x4000, b"late")),
    ];
    if v3 {
        let mut bytes = Vec::new();
        for written in &log {
            match written {
                Written::Room(time, room) => room.encode_unsealed(*time, &mut bytes),
                Written::Message(m) => encode_unsealed(&mut bytes, &m.view()),
            }
        }
        seal_records(&mut bytes);
        let mut file = SEGMENT_MAGIC_V3.to_vec();
        file.extend(bytes);
        fs::write(segment_path(dir, 0), file).unwrap();
        return;
    }
    let mut batches = Batches::new();
    for written in &log {
        match written {
            Written::Room(time, room) => batches.push_room(*time, room),
            Written::Message(m) => batches.push(&m.view()),
        }
    }
    let mut opened = open_log(dir, big_log()).unwrap();
    opened.log.append(batches.seal()).unwrap();
}

/// The same output from a log of batches (format 4) as from one of single
/// records (format 3): the format changes no byte of `evchat history`.
#[test]
fn history_names_rooms_marks_waiting_messages_and_filters_by_room() {
    for v3 in [false, true] {
        let dir = TempDir::new(if v3 { "cli-rooms-v3" } else { "cli-rooms" });
        rooms_log(dir.path(), v3);
        let d = dir.path().to_str().unwrap();
        let run = |args: &[&str]| -> Vec<String> {
            let mut all = vec!["history", d];
            all.extend_from_slice(args);
            let (code, out, err) = evchat(&all);
            assert_eq!((code, err), (0, Vec::<String>::new()), "{args:?}");
            out
        };
        assert_eq!(
            run(&[]),
            [
                "1970-01-01T00:00:02.000Z Message from alice to #Ops: deploy done",
                "1970-01-01T00:00:03.000Z Message from bob to all: hello all",
                "1970-01-01T00:00:04.000Z Message from bob to #jobs (queued): job 1",
                "1970-01-01T00:00:05.000Z Message from alice to bob (stored): see you",
                "1970-01-01T00:00:07.000Z Message from 3 to #Ops: late",
            ]
        );
        assert_eq!(
            run(&["--room", "ops"]),
            [
                "1970-01-01T00:00:02.000Z Message from alice to #Ops: deploy done",
                "1970-01-01T00:00:07.000Z Message from 3 to #Ops: late",
            ]
        );
        assert_eq!(
            run(&["--room", "#JOBS", "--json"]),
            [
                "{\"record\":4,\"time\":\"1970-01-01T00:00:04.000Z\",\"time_ms\":4000,\"origin\":2,\
             \"name\":\"bob\",\"dest\":16385,\"room\":\"jobs\",\"queued\":true,\"text\":\"job 1\"}"
            ]
        );
        assert_eq!(
            run(&[
                "--from",
                "alice",
                "--json",
                "--since",
                "1970-01-01T00:00:04Z"
            ]),
            [
                "{\"record\":5,\"time\":\"1970-01-01T00:00:05.000Z\",\"time_ms\":5000,\"origin\":1,\
             \"name\":\"alice\",\"dest\":65535,\"to\":\"bob\",\"stored\":true,\"text\":\"see you\"}"
            ]
        );
        assert_eq!(run(&["--room", "nowhere"]), Vec::<String>::new());
        let (code, out, err) = evchat(&["history", d, "--room", "1ops"]);
        assert_eq!((code, out), (2, vec![]));
        assert!(
            err[0].contains("'1ops' is not a room name: the name must start with a letter"),
            "{err:?}"
        );
    }
}

#[test]
fn history_filters_by_time_origin_and_destination() {
    let dir = TempDir::new("cli-filters");
    sample_log(dir.path());
    let d = dir.path().to_str().unwrap();
    let times = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["history", d];
        all.extend_from_slice(args);
        let (code, out, err) = evchat(&all);
        assert_eq!((code, err), (0, Vec::<String>::new()), "{args:?}");
        out.iter().map(|l| l[17..23].to_string()).collect()
    };
    assert_eq!(times(&["--from", "1"]), ["02.123", "04.500"]);
    assert_eq!(times(&["--to", "4096"]), ["03.000"]);
    assert_eq!(times(&["--to", "0"]), ["02.123", "04.500"]);
    assert_eq!(
        times(&["--since", "2025-12-01T13:45:03Z"]),
        ["03.000", "04.500"]
    );
    assert_eq!(
        times(&["--since", "2025-12-01T13:45:03.001Z", "--from", "1"]),
        ["04.500"]
    );
    assert_eq!(times(&["--since", "2025-12-02"]), Vec::<String>::new());
    let (code, out, err) = evchat(&["history", d, "--since", "soon"]);
    assert_eq!((code, out), (2, vec![]));
    assert!(err[0].contains("'soon' is not a time"), "{err:?}");
}

#[test]
fn history_warns_of_an_incomplete_tail_and_shows_the_rest() {
    let dir = TempDir::new("cli-torn");
    let all = records(3);
    let whole = segment_bytes(&all);
    fs::write(segment_path(dir.path(), 0), &whole[..whole.len() - 4]).unwrap();
    let (code, out, err) = evchat(&["history", dir.path().to_str().unwrap()]);
    assert_eq!((code, out.len()), (0, 2));
    let offset = record_offsets(&all)[2];
    let len = whole.len() as u64 - 4 - offset;
    assert_eq!(
        err,
        [format!(
            "evchat history: {}: the last {len} bytes (from offset {offset}) are not a whole \
             record: a write in progress, or what a crash left (the server cuts it when it \
             next starts)",
            segment_path(dir.path(), 0).display()
        )]
    );
    // Reading changed nothing.
    assert_eq!(
        fs::read(segment_path(dir.path(), 0)).unwrap(),
        &whole[..whole.len() - 4]
    );
}

/// A directory given by mistake (`/tmp`, a home directory) names three of
/// its files, then counts the rest and asks, rather than a line per file.
#[test]
fn history_of_a_directory_full_of_other_files_names_three_and_counts_the_rest() {
    let dir = TempDir::new("cli-foreign-many");
    sample_log(dir.path());
    for name in ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"] {
        fs::write(dir.path().join(name), "not a log").unwrap();
    }
    let (code, out, err) = evchat(&["history", dir.arg()]);
    assert_eq!((code, out.len()), (0, 3));
    let foreign = |name: &str| {
        format!(
            "evchat history: {}: not a history segment; ignored",
            dir.path().join(name).display()
        )
    };
    assert_eq!(
        err,
        [
            foreign("a.txt"),
            foreign("b.txt"),
            foreign("c.txt"),
            format!(
                "evchat history: {}: 2 more entries that are not history segments; ignored (is \
                 it the directory a server was given with --history?)",
                dir.arg()
            ),
        ]
    );
}

#[test]
fn history_of_a_missing_directory_is_one_clear_error() {
    let dir = TempDir::new("cli-missing");
    let missing = dir.path().join("nope");
    let (code, out, err) = evchat(&["history", missing.to_str().unwrap()]);
    assert_eq!((code, out), (1, vec![]));
    assert_eq!(
        err,
        [format!(
            "evchat history: {}: read directory: No such file or directory (os error 2)",
            missing.display()
        )]
    );
    assert!(!missing.exists(), "reading must not create the directory");
}

#[test]
fn history_follow_prints_new_messages_as_they_are_stored() {
    let dir = TempDir::new("cli-follow");
    let opened = open_log(dir.path(), big_log()).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::No);
    let t = writer.append(&record(1_764_596_702_123, 1, 0, b"before").view());
    writer.write();
    wait_settled(&writer, &settled, t);
    let follower = Proc::spawn(
        "evchat",
        &[
            "history",
            dir.path().to_str().unwrap(),
            "--follow",
            "--to",
            "0",
        ],
    );
    follower
        .stdout
        .expect_line("2025-12-01T13:45:02.123Z Message from 1 to all: before");
    writer.append(&record(1_764_596_703_000, 2, 4096, b"not for all").view());
    writer.append(&record(1_764_596_704_000, 3, 0, b"after").view());
    writer.write();
    follower
        .stdout
        .expect_line("2025-12-01T13:45:04.000Z Message from 3 to all: after");
    drop(writer);
}

/// `evchat history --follow | head -1`: once its reader has gone, the
/// follower ends on a quiet log too, not at the next record.
#[test]
fn history_follow_ends_when_its_reader_closes_on_a_quiet_log() {
    use std::io::BufRead;
    let dir = TempDir::new("cli-follow-closed");
    let opened = open_log(dir.path(), big_log()).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::No);
    let t = writer.append(&record(1_764_596_702_123, 1, 0, b"only").view());
    writer.write();
    wait_settled(&writer, &settled, t);
    let mut child = Command::new(bin("evchat"))
        .args(["history", dir.path().to_str().unwrap(), "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line,
        "2025-12-01T13:45:02.123Z Message from 1 to all: only\n"
    );
    drop(out);
    let status = wait_for_exit(&mut child, "evchat history --follow");
    assert!(status.success(), "{status}");
    drop(writer);
}

// ---- the server with --history -------------------------------------------

fn msg(origin: ClientId, dest: ClientId, seq: u16, text: &str) -> Frame {
    Frame::msg(origin, dest, seq, text.as_bytes().to_vec()).unwrap()
}

fn ok(origin: ClientId, dest: ClientId, seq: u16) -> Frame {
    Frame::bare(Kind::Ok, origin, dest, seq)
}

/// `e` broadcasts `text` as `seq`, the only exhibitor `a` acks it, and the
/// OK comes back to `e`.
fn broadcast_acked(e: &mut Raw, e_id: ClientId, a: &mut Raw, a_id: ClientId, seq: u16, text: &str) {
    e.send_frame(&msg(e_id, 0, seq, text));
    a.expect_frame();
    a.send_frame(&ok(a_id, e_id, seq));
    assert_eq!(e.expect_frame(), ok(SERVER_ID, e_id, seq));
}

/// A new exhibitor on `server` is replayed exactly `texts`, broadcasts of
/// `e_id` numbered from 0, and then nothing.
fn expect_replay(server: &Server, e_id: ClientId, texts: &[&str]) {
    let mut late = server.raw();
    late.identify_exhibitor();
    for (seq, text) in (0..).zip(texts) {
        assert_eq!(late.expect_frame(), msg(e_id, 0, seq, text));
    }
    late.expect_silence();
}

/// The `text` fields of `evchat history DIR --json` (texts with no quote
/// or escape in them), checking it ran cleanly.
fn logged_texts(dir: &Path) -> Vec<String> {
    let (code, out, err) = evchat(&["history", dir.to_str().unwrap(), "--json"]);
    assert_eq!((code, err), (0, Vec::<String>::new()));
    out.iter()
        .map(|line| {
            let start = line.find(r#""text":""#).expect("a text field") + 8;
            let len = line[start..].find('"').expect("a closing quote");
            line[start..start + len].to_string()
        })
        .collect()
}

#[test]
fn an_emitters_ok_means_the_message_is_already_in_the_log_in_every_fsync_mode() {
    // No wait but the OK itself: the log is read right after it comes.
    for mode in ["always", "everysec", "no"] {
        let dir = TempDir::new(&format!("ok-logged-{mode}"));
        let d = dir.path().to_str().unwrap();
        let server = Server::start(&["--history", d, "--fsync", mode]);
        let (mut a, a_id, mut e, e_id) = exhibitor_and_emitter(&server);
        let mut sent = Vec::new();
        for (seq, dest) in (1..=4).zip([0, a_id, 0, a_id]) {
            let text = format!("{mode}-{seq}");
            e.send_frame(&msg(e_id, dest, seq, &text));
            assert_eq!(a.expect_frame(), msg(e_id, dest, seq, &text));
            a.send_frame(&ok(a_id, e_id, seq));
            assert_eq!(e.expect_frame(), ok(SERVER_ID, e_id, seq), "{mode}");
            sent.push(text);
            assert_eq!(logged_texts(dir.path()), sent, "{mode}");
        }
    }
}

#[test]
fn without_history_a_late_exhibitor_gets_nothing_of_the_past() {
    let server = Server::start(&[]);
    let (mut a, a_id, mut e, e_id) = exhibitor_and_emitter(&server);
    broadcast_acked(&mut e, e_id, &mut a, a_id, 1, "to all");
    expect_replay(&server, e_id, &[]);
}

#[test]
fn a_late_exhibitor_gets_the_last_broadcasts_oldest_first_and_no_unicast() {
    let dir = TempDir::new("replay");
    let d = dir.path().to_str().unwrap();
    let server = Server::start(&["--history", d, "--replay", "3"]);
    let (mut a, a_id, mut e, e_id) = exhibitor_and_emitter(&server);
    let sent = [
        (0, "b0"),
        (a_id, "u1"),
        (0, "b1"),
        (0, "b2"),
        (a_id, "u2"),
        (0, "b3"),
    ];
    for (seq, (dest, text)) in (1..).zip(sent) {
        e.send_frame(&msg(e_id, dest, seq, text));
        assert_eq!(a.expect_frame(), msg(e_id, dest, seq, text));
        a.send_frame(&ok(a_id, e_id, seq));
        assert_eq!(e.expect_frame(), ok(SERVER_ID, e_id, seq));
    }
    let mut b = server.raw();
    let b_id = b.identify_exhibitor();
    // The server's own numbers, from 0, like its CLISTs and FLW.
    assert_eq!(b.expect_frame(), msg(e_id, 0, 0, "b1"));
    assert_eq!(b.expect_frame(), msg(e_id, 0, 1, "b2"));
    assert_eq!(b.expect_frame(), msg(e_id, 0, 2, "b3"));
    b.expect_silence();
    // Its acks are absorbed in order: the next live broadcast's ack is the
    // one that settles the emitter's request.
    for seq in 0..3 {
        b.send_frame(&ok(b_id, e_id, seq));
    }
    e.send_frame(&msg(e_id, 0, 7, "live"));
    assert_eq!(a.expect_frame(), msg(e_id, 0, 7, "live"));
    a.send_frame(&ok(a_id, e_id, 7));
    e.expect_silence();
    assert_eq!(b.expect_frame(), msg(e_id, 0, 7, "live"));
    b.send_frame(&ok(b_id, e_id, 7));
    assert_eq!(e.expect_frame(), ok(SERVER_ID, e_id, 7));
    // Every accepted MSG is in the log, unicasts too.
    let mut texts = logged_texts(dir.path());
    texts.sort();
    assert_eq!(texts, ["b0", "b1", "b2", "b3", "live", "u1", "u2"]);
}

#[test]
fn a_replayed_exhibitor_that_never_acks_is_cut_by_the_ack_timeout() {
    let dir = TempDir::new("replay-timeout");
    let d = dir.path().to_str().unwrap();
    let server = Server::start(&["--history", d, "--ack-timeout", "0.3"]);
    let (mut a, a_id, mut e, e_id) = exhibitor_and_emitter(&server);
    broadcast_acked(&mut e, e_id, &mut a, a_id, 1, "hello");
    let mut silent = server.raw();
    silent.identify_exhibitor();
    assert_eq!(silent.expect_frame(), msg(e_id, 0, 0, "hello"));
    silent.expect_closed();
}

#[test]
fn a_replay_takes_at_most_half_of_max_queue_so_the_newcomer_is_not_cut() {
    let dir = TempDir::new("replay-half-queue");
    let d = dir.path().to_str().unwrap();
    let server = Server::start(&["--history", d, "--max-queue", "8192"]);
    let (mut a, a_id, mut e, e_id) = exhibitor_and_emitter(&server);
    let texts: Vec<String> = (0..10u8)
        .map(|i| char::from(b'a' + i).to_string().repeat(1800))
        .collect();
    for (seq, text) in (1..).zip(&texts) {
        broadcast_acked(&mut e, e_id, &mut a, a_id, seq, text);
    }
    // 4096 bytes of replay: the last two 1800-byte broadcasts, not a third.
    expect_replay(&server, e_id, &[&texts[8], &texts[9]]);
}

/// The bound of a replay is kept in one place, the router's window, which
/// a restart's recovered broadcasts pass through as live ones do: at the
/// edge where the framing decides (two texts fit the cap, two framed
/// messages do not), a late exhibitor gets the same one broadcast before
/// and after a restart.
#[test]
fn a_replay_after_a_restart_is_bounded_as_a_live_one_with_framing() {
    let dir = TempDir::new("replay-restart-bound");
    let d = dir.path().to_str().unwrap();
    let cap = 8192 / 2;
    let len = cap / 2 - REPLAY_FRAMING / 2;
    assert!(2 * len <= cap && 2 * (len + REPLAY_FRAMING) > cap);
    let texts: Vec<String> = (0..3u8)
        .map(|i| char::from(b'a' + i).to_string().repeat(len))
        .collect();
    let e_id = {
        let mut server = Server::start(&["--history", d, "--max-queue", "8192"]);
        let (mut a, a_id, mut e, e_id) = exhibitor_and_emitter(&server);
        for (seq, text) in (1..).zip(&texts) {
            broadcast_acked(&mut e, e_id, &mut a, a_id, seq, text);
        }
        expect_replay(&server, e_id, &[&texts[2]]);
        // Gone before the shutdown, so that it waits for no FLW's ack.
        drop((a, e));
        server.proc.signal(libc::SIGINT);
        assert!(server.proc.wait().success());
        e_id
    };
    let server = Server::start(&["--history", d, "--max-queue", "8192"]);
    expect_replay(&server, e_id, &[&texts[2]]);
}

#[test]
fn broadcasts_are_replayed_after_a_restart_and_the_exhibitor_shows_them() {
    let dir = TempDir::new("restart");
    let d = dir.path().to_str().unwrap();
    {
        let mut server = Server::start(&["--history", d]);
        let (ex, ex_id) = server.exhibitor();
        let (mut em, _) = server.emitter(None);
        em.input(&format!("(0) before the restart\n({ex_id}) just for you\n"));
        em.stdout.expect_line("delivered #1");
        em.stdout.expect_line("delivered #2");
        ex.stdout
            .expect_line("Message from 1 to all: before the restart");
        ex.stdout.expect_line("Message from 1: just for you");
        server.proc.signal(libc::SIGINT);
        assert!(server.proc.wait().success());
    }
    let server = Server::start(&["--history", d]);
    let (late, _) = server.exhibitor();
    late.stdout
        .expect_line("Message from 1 to all: before the restart");
    assert_eq!(late.stdout.next_within(QUIET), None);
}

/// Issue 21 item 4: ids are reused, so after a restart a replayed message
/// from id 1 must not look as if it came from whoever holds id 1 now. An
/// opted-in exhibitor is told the recorded name before it (PROTOCOL.md,
/// "WHO"); a plain exhibitor gets exactly the plain protocol's replay.
#[test]
fn after_a_restart_replay_tells_an_opted_in_exhibitor_the_recorded_names() {
    use crate::identity::{PLAIN, header, hello, helloack, opt_in, who};
    let dir = TempDir::new("replay-names");
    let d = dir.path().to_str().unwrap();
    let bytes = |frame: Frame| frame.to_bytes().to_vec();
    {
        let mut server = Server::start(&["--history", d]);
        let mut x = server.raw();
        let x_id = x.identify_exhibitor();
        let mut alice = server.raw();
        let alice_id = opt_in(
            &mut alice,
            &hello(b"alice", b""),
            &helloack(0, PLAIN, b"alice"),
            1,
        );
        let mut plain = server.raw();
        let plain_id = plain.identify_emitter(1);
        assert_eq!((alice_id, plain_id), (1, 2));
        broadcast_acked(&mut alice, 1, &mut x, x_id, 1, "hi from alice");
        broadcast_acked(&mut plain, 2, &mut x, x_id, 1, "hi from a plain client");
        drop((x, alice, plain));
        server.proc.signal(libc::SIGINT);
        assert!(server.proc.wait().success());
    }
    // What the server kept, as `evchat history` shows it (after the time).
    let (code, out, _) = evchat(&["history", d]);
    let shown: Vec<&str> = out.iter().map(|line| &line[25..]).collect();
    assert_eq!(
        (code, shown),
        (
            0,
            vec![
                "Message from alice to all: hi from alice",
                "Message from 2 to all: hi from a plain client"
            ]
        )
    );
    let server = Server::start(&["--history", d]);
    // bob now holds id 1; no one holds id 2.
    let mut bob = server.raw();
    let bob_id = opt_in(
        &mut bob,
        &hello(b"bob", b""),
        &helloack(0, PLAIN, b"bob"),
        1,
    );
    assert_eq!(bob_id, 1);
    let mut plain_ex = server.raw();
    let plain_ex_id = plain_ex.identify_exhibitor();
    assert_eq!(plain_ex.expect_frame(), msg(1, 0, 0, "hi from alice"));
    assert_eq!(
        plain_ex.expect_frame(),
        msg(2, 0, 1, "hi from a plain client")
    );
    plain_ex.expect_silence();
    let mut eve = server.raw();
    eve.send(&hello(b"eve", b""));
    expect_exact(&mut eve, &helloack(0, PLAIN, b"eve"));
    eve.send_frame(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0));
    let eve_id = plain_ex_id + 1;
    expect_exact(&mut eve, &bytes(ok(SERVER_ID, eve_id, 0)));
    expect_exact(&mut eve, &who(eve_id, 0, 1, PLAIN, b"alice"));
    expect_exact(&mut eve, &bytes(msg(1, 0, 1, "hi from alice")));
    expect_exact(&mut eve, &who(eve_id, 2, 2, PLAIN, b""));
    expect_exact(&mut eve, &bytes(msg(2, 0, 3, "hi from a plain client")));
    eve.expect_silence();
    for seq in 0..4 {
        eve.send(&header(1, eve_id, SERVER_ID, seq));
    }
    for seq in 0..2 {
        plain_ex.send_frame(&ok(plain_ex_id, SERVER_ID, seq));
    }
    // bob speaks: eve is told id 1 is bob now; the plain exhibitor is not.
    bob.send_frame(&msg(1, 0, 1, "bob here"));
    expect_exact(&mut eve, &who(eve_id, 4, 1, PLAIN, b"bob"));
    expect_exact(&mut eve, &bytes(msg(1, 0, 1, "bob here")));
    assert_eq!(plain_ex.expect_frame(), msg(1, 0, 1, "bob here"));
    plain_ex.expect_silence();
}

#[test]
fn a_second_server_on_the_same_history_is_refused() {
    let dir = TempDir::new("server-lock");
    let d = dir.path().to_str().unwrap();
    let first = Server::start(&["--history", d]);
    let mut second = Proc::spawn("server", &["0", "--bind", "127.0.0.1", "--history", d]);
    assert_eq!(second.wait().code(), Some(1));
    assert_eq!(second.stdout.rest(), Vec::<String>::new());
    let want = format!(
        "server: history: {d}: history directory in use by another server (pid {}) \
         (lock file LOCK)",
        first.proc.pid()
    );
    let errors = second.stderr.rest();
    assert!(errors.contains(&want), "{errors:#?}");
}

/// A file where the history directory should be: said so, not as
/// "create directory: File exists".
#[test]
fn a_history_path_that_is_a_file_is_refused_as_one() {
    let dir = TempDir::new("server-history-file");
    let file = dir.path().join("history");
    fs::write(&file, b"not a directory").unwrap();
    let f = file.to_str().unwrap();
    let mut server = Proc::spawn("server", &["0", "--bind", "127.0.0.1", "--history", f]);
    assert_eq!(server.wait().code(), Some(1));
    assert_eq!(server.stdout.rest(), Vec::<String>::new());
    let want = format!("server: history: {f}: open as a directory: it is a file, not a directory");
    let errors = server.stderr.rest();
    assert!(errors.contains(&want), "{errors:#?}");
    assert_eq!(fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn the_server_cuts_a_torn_tail_refuses_corruption_and_repairs_when_asked() {
    let dir = TempDir::new("server-recovery");
    let d = dir.path().to_str().unwrap();
    let all = records(3);
    let whole = segment_bytes(&all);
    let last = record_offsets(&all)[2];
    fs::write(segment_path(dir.path(), 0), &whole[..whole.len() - 2]).unwrap();
    let server = Server::start(&["--history", d]);
    let want = format!(
        "history: {}: torn tail at offset {last} (an interrupted write): cut {} bytes, \
         holding no whole record",
        segment_path(dir.path(), 0).display(),
        whole.len() as u64 - 2 - last
    );
    let (_, line) = server
        .proc
        .stderr
        .skip_until("the torn tail", TIMEOUT, |l| l.contains("torn tail"));
    assert!(line.contains("WARN") && line.ends_with(&want), "{line}");
    drop(server);

    let mut damaged = segment_bytes(&all);
    let bad = record_offsets(&all)[1];
    damaged[bad as usize + 21] ^= 1;
    fs::write(segment_path(dir.path(), 0), &damaged).unwrap();
    let mut refused = Proc::spawn("server", &["0", "--bind", "127.0.0.1", "--history", d]);
    assert_eq!(refused.wait().code(), Some(1));
    let errors = refused.stderr.rest();
    let prefix = format!(
        "server: history: {}: corrupt at offset {bad}: checksum mismatch",
        segment_path(dir.path(), 0).display()
    );
    assert!(errors.iter().any(|l| l.starts_with(&prefix)), "{errors:#?}");
    assert_eq!(fs::read(segment_path(dir.path(), 0)).unwrap(), damaged);

    let repaired = Server::start(&["--history", d, "--history-repair"]);
    let (_, line) = repaired
        .proc
        .stderr
        .skip_until("the repair cut", TIMEOUT, |l| l.contains("repair cut"));
    assert!(
        line.contains(&format!("corrupt at offset {bad} (checksum")),
        "{line}"
    );
    assert!(line.ends_with(&format!(
        "): repair cut {} bytes",
        damaged.len() as u64 - bad
    )));
    drop(repaired);
    assert_eq!(read_all(dir.path()), numbered(&all[..1], 0));
}

/// Emitters streaming broadcasts, one request in flight each, until the
/// connection breaks; each OK'd text goes to the channel.
fn stream_broadcasts(addr: std::net::SocketAddr, tx: std::sync::mpsc::Sender<String>) {
    use bytes::BytesMut;
    use std::io::Read;
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let mut buf = BytesMut::new();
    let mut next_frame = |stream: &mut std::net::TcpStream| -> Option<Frame> {
        loop {
            if let Ok(Some(frame)) = Frame::decode(&mut buf) {
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    if stream
        .write_all(&Frame::bare(Kind::Oi, 1, SERVER_ID, 0).to_bytes())
        .is_err()
    {
        return;
    }
    let Some(welcome) = next_frame(&mut stream) else {
        return;
    };
    let id = welcome.dest;
    for seq in 1u16.. {
        let text = format!("{id}-{seq}");
        if stream
            .write_all(&msg(id, 0, seq, &text).to_bytes())
            .is_err()
        {
            return;
        }
        match next_frame(&mut stream) {
            Some(reply) if reply.kind == Kind::Ok && reply.seq == seq => {
                if tx.send(text).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Kills the server with SIGKILL while three emitters stream to an
/// exhibitor; returns every text an emitter got an OK for.
fn kill_while_streaming(server: &Server) -> Vec<String> {
    let (ex, _) = server.exhibitor();
    let (tx, rx) = channel();
    let emitters: Vec<_> = (0..3)
        .map(|_| {
            let tx = tx.clone();
            let addr = server.addr;
            std::thread::spawn(move || stream_broadcasts(addr, tx))
        })
        .collect();
    drop(tx);
    let mut oked = Vec::new();
    while oked.len() < 300 {
        oked.push(rx.recv_timeout(TIMEOUT).expect("emitters stalled"));
    }
    server.proc.signal(libc::SIGKILL);
    // The emitters stop at the broken connection; their last OKs count.
    while let Ok(text) = rx.recv_timeout(TIMEOUT) {
        oked.push(text);
    }
    for emitter in emitters {
        emitter.join().unwrap();
    }
    drop(ex);
    oked
}

#[test]
fn after_sigkill_under_fsync_always_every_oked_message_is_in_the_log() {
    let dir = TempDir::new("crash-always");
    let d = dir.path().to_str().unwrap();
    let server = Server::start(&["--history", d, "--fsync", "always"]);
    let oked = kill_while_streaming(&server);
    drop(server);
    let logged: std::collections::HashSet<String> = logged_texts(dir.path()).into_iter().collect();
    let missing: Vec<&String> = oked.iter().filter(|t| !logged.contains(*t)).collect();
    assert!(missing.is_empty(), "OK'd but not logged: {missing:?}");
    // The log reopens: a torn tail is cut with a warning, nothing else.
    let restarted = Server::start(&["--history", d]);
    while let Some(line) = restarted.proc.stderr.next_within(QUIET) {
        assert!(
            !line.contains("WARN")
                || !line.contains("history: ")
                || line.contains(": torn tail at offset "),
            "{line}"
        );
    }
}

#[test]
fn after_sigkill_under_fsync_everysec_the_log_reopens_and_says_what_it_cut() {
    let dir = TempDir::new("crash-everysec");
    let d = dir.path().to_str().unwrap();
    let server = Server::start(&["--history", d, "--fsync", "everysec"]);
    let oked = kill_while_streaming(&server);
    drop(server);
    // A killed process loses nothing the kernel already took: the loop
    // wrote every OK'd record to the page cache before the OK.
    let segment_len = fs::metadata(segment_path(dir.path(), 0)).unwrap().len();
    let restarted = Server::start(&["--history", d]);
    let mut cut = 0;
    while let Some(line) = restarted.proc.stderr.next_within(QUIET) {
        assert!(!line.contains("corrupt"), "{line}");
        if let Some((_, report)) = line.split_once(": torn tail at offset ") {
            let bytes: u64 = report
                .split(" cut ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .expect(&line);
            cut += bytes;
        }
    }
    drop(restarted);
    let logged: std::collections::HashSet<String> = logged_texts(dir.path()).into_iter().collect();
    assert_eq!(
        fs::metadata(segment_path(dir.path(), 0)).unwrap().len(),
        segment_len - cut
    );
    let missing: Vec<&String> = oked.iter().filter(|t| !logged.contains(*t)).collect();
    assert!(missing.is_empty(), "OK'd but not logged: {missing:?}");
}

#[test]
fn a_full_disk_never_stops_the_relay_and_history_comes_back() {
    for mode in ["always", "everysec", "no"] {
        full_disk_server(mode);
    }
}

/// A server under `--fsync mode` with a file-size limit: relays on when the
/// writes fail, leaves no torn record, and keeps history again once the
/// limit is raised.
fn full_disk_server(mode: &str) {
    let dir = TempDir::new(&format!("server-full-disk-{mode}"));
    let d = dir.path().to_str().unwrap();
    let mut command = Command::new(bin("server"));
    command
        .args(["0", "--bind", "127.0.0.1", "--history", d, "--fsync", mode])
        .stdin(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: FULL_DISK_LIMIT,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = Proc::spawn_command(command, "server");
    let pid = child.pid();
    let err = &child.stderr;
    let addr = listening_addr(&child.stdout);
    let mut a = Raw::connect(addr);
    let a_id = a.identify_exhibitor();
    let mut e = Raw::connect(addr);
    let e_id = e.identify_emitter(1);
    let text = "x".repeat(1000);
    let mut send = |seq: u16, text: &str| {
        e.send_frame(&msg(e_id, 0, seq, text));
        assert_eq!(a.expect_frame().seq, seq);
        a.send_frame(&ok(a_id, e_id, seq));
        // The OK waits for the record to be settled: it must come even
        // when the write fails.
        assert_eq!(e.expect_frame(), ok(SERVER_ID, e_id, seq), "{mode}");
    };
    for seq in 1..=30 {
        send(seq, &text);
    }
    let (_, off) = err.skip_until("history off", TIMEOUT, |l| l.contains("history off: "));
    assert!(off.contains("File too large"), "{mode}: {off}");
    // Room again (the limit raised from outside): the next write succeeds.
    let raised = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit on our own child, reading nothing back.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &raised, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    send(31, "after");
    let (_, on) = err.skip_until("history back on", TIMEOUT, |l| {
        l.contains("history back on: ")
    });
    assert!(on.contains("messages were not kept"), "{mode}: {on}");
    // `evchat history` reads it through with no complaint: the write cut
    // short at the limit left no part of a record before "after".
    let texts = logged_texts(dir.path());
    assert_eq!(texts.last().map(String::as_str), Some("after"), "{mode}");
    assert!(
        texts.len() > 5 && texts.len() < 30,
        "{mode}: {} kept",
        texts.len()
    );
    assert!(
        texts[..texts.len() - 1].iter().all(|t| *t == text),
        "{mode}"
    );
    drop(child);
    // And it reopens cleanly, with nothing to cut.
    let reopened = open_log(dir.path(), big_log()).unwrap();
    assert_eq!(reopened.notices, vec![], "{mode}");
    assert_eq!(reopened.records, texts.len() as u64, "{mode}");
}
