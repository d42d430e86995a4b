//! `evchat chat` through the real binaries: the plain (piped) path line by
//! line, the terminal path through a pseudo-terminal (line editing,
//! history, Ctrl-D), the server going away and coming back, and the server
//! closing the chat. Every wait is for an expected line or exit, with a
//! deadline; none is a sleep.

use crate::util::*;
use evchat::proto::{Frame, Kind, SERVER_ID};
use rexpect::process::WaitStatus;
use rexpect::session::{PtySession, spawn_command};
use std::io::Write;
use std::process::Command;
use std::time::Duration;

const EVCHAT: &str = env!("CARGO_BIN_EXE_evchat");
/// Where `evchat chat --user` takes a token from.
const TOKEN: &str = "EVCHAT_TOKEN";
/// How many lines `/help` prints.
const HELP_LINES: usize = 18;

/// `evchat chat ADDR` with piped stdin, stdout and stderr: a [`Proc`] that
/// types lines and skips to the line a test waits for.
struct Chat(Proc);

impl std::ops::Deref for Chat {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.0
    }
}

impl std::ops::DerefMut for Chat {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.0
    }
}

impl Chat {
    fn spawn(addr: &str) -> Chat {
        Chat::spawn_with(&["chat", addr])
    }

    fn spawn_with(args: &[&str]) -> Chat {
        Chat(Proc::spawn("evchat", args))
    }

    /// As [`Chat::spawn_with`], with these environment variables set.
    fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Chat {
        let mut command = Command::new(EVCHAT);
        command.args(args).stdin(std::process::Stdio::piped());
        command.envs(env.iter().copied());
        Chat(Proc::spawn_command(command, "evchat"))
    }

    fn type_line(&mut self, line: &str) {
        self.input(&format!("{line}\n"));
    }

    /// Skips stdout lines until `want`, returning those skipped; fails
    /// after `within`.
    fn skip_until(&self, want: &str, within: Duration) -> Vec<String> {
        let what = format!("{want:?}");
        self.stdout.skip_until(&what, within, |line| line == want).0
    }

    /// Skips stdout lines until one starting with `prefix`, returning those
    /// skipped; fails after TIMEOUT.
    fn skip_until_prefix(&self, prefix: &str) -> Vec<String> {
        let what = format!("line starting {prefix:?}");
        let starts = |line: &str| line.starts_with(prefix);
        self.stdout.skip_until(&what, TIMEOUT, starts).0
    }
}

#[test]
fn piped_chat_sends_receives_and_marks_each_message_exactly() {
    let server = Server::start(&[]);
    let (other, other_id) = server.exhibitor();
    assert_eq!(other_id, 4096);
    let mut chat = Chat::spawn(&server.target());
    chat.stdout
        .expect_line("you are 1 (emitter) / 4097 (exhibitor)");

    // A plain line goes to everyone; our own copy is not shown twice.
    chat.type_line("hello everyone");
    other
        .stdout
        .expect_line("Message from 1 to all: hello everyone");
    chat.stdout.expect_line("you to all: hello everyone ✓");

    chat.type_line("/to 4096");
    chat.stdout.expect_line("now talking to 4096");
    chat.type_line("just you");
    other.stdout.expect_line("Message from 1: just you");
    chat.stdout.expect_line("you to 4096: just you ✓");

    // /msg does not change the target; an empty message is a message.
    chat.type_line("/msg 0 ");
    other.stdout.expect_line("Message from 1 to all: ");
    chat.stdout.expect_line("you to all:  ✓");
    chat.type_line("(4096) emitter syntax");
    other.stdout.expect_line("Message from 1: emitter syntax");
    chat.stdout.expect_line("you to 4096: emitter syntax ✓");

    // Nobody there: marked, not lost silently.
    chat.type_line("/msg 4200 anyone?");
    chat.stdout
        .expect_line("you to 4200: anyone? ✗ not delivered");

    // What another emitter sends, to everyone, to the chat's exhibitor and
    // to the chat's emitter id.
    let (mut em, em_id) = server.emitter(None);
    assert_eq!(em_id, 2);
    em.input("(0) hi all\n(4097) hi exhibitor\n(1) hi emitter\n");
    chat.stdout.expect_line("2 to all: hi all");
    other.stdout.expect_line("Message from 2 to all: hi all");
    chat.stdout.expect_line("2 to you: hi exhibitor");
    chat.stdout.expect_line("2 to you: hi emitter");

    chat.type_line("/list");
    chat.stdout.expect_line("clients (4): 1 2 4096 4097");
    chat.type_line("(CREQ) 4096");
    other.stdout.expect_line("Clients (4): 1 2 4096 4097");
    chat.stdout.expect_line("client list to 4096 ✓");

    // Bad lines: reported on stderr with their number, nothing sent.
    chat.type_line("/bogus");
    chat.stderr.expect_line(
        "evchat chat: line 9: unknown command '/bogus'; /help lists the commands; nothing sent",
    );
    chat.type_line("/to nobody");
    chat.stderr.expect_line(
        "evchat chat: line 10: no one named 'nobody' is known here; /list shows who is \
         connected; nothing sent",
    );
    chat.type_line(&"x".repeat(70_000));
    chat.stderr.expect_line(
        "evchat chat: line 11: line is 70000 bytes; a message carries at most 65535; nothing sent",
    );
    // A blank line is nothing to send, not an error.
    chat.type_line("");
    chat.type_line("//slash");
    other.stdout.expect_line("Message from 1: /slash");
    chat.stdout.expect_line("you to 4096: /slash ✓");

    chat.type_line("/help");
    let help: Vec<String> = (0..HELP_LINES).map(|_| chat.stdout.expect()).collect();
    assert_eq!(
        help[0],
        "a line without / is a message to the current target (in the prompt)"
    );
    assert_eq!(help[HELP_LINES - 1], "// sends a line that starts with /");
    // Within 72 columns: a narrow terminal breaks longer lines mid-word.
    for line in &help {
        assert!(line.chars().count() <= 72, "{line:?}");
    }

    chat.type_line("/quit");
    assert_eq!(chat.wait().code(), Some(0));
    assert_eq!(chat.stdout.rest(), Vec::<String>::new());
    assert_eq!(chat.stderr.rest(), Vec::<String>::new());
    // Its emitter left, so its exhibitor was dismissed: both ids are free.
    em.input("(CREQ) 4096\n");
    other.stdout.expect_line("Clients (2): 2 4096");
}

#[test]
fn chat_escapes_text_exactly_as_the_exhibitor_does() {
    let server = Server::start(&[]);
    let (other, _) = server.exhibitor();
    let chat = Chat::spawn(&server.target());
    chat.stdout
        .expect_line("you are 1 (emitter) / 4097 (exhibitor)");
    let (mut em, _) = server.emitter(None);
    let stdin = em.stdin.as_mut().unwrap();
    stdin
        .write_all(b"(0) a\\b\tc\x1b[2J\xe2\x80\xaeevil\xe2\x81\xa6\xff\r\n")
        .unwrap();
    stdin.flush().unwrap();
    let shown = other.stdout.expect();
    let text = shown
        .strip_prefix("Message from 2 to all: ")
        .unwrap_or_else(|| panic!("{shown:?}"));
    assert_eq!(text, r"a\\b\tc\x1b[2J\u{202e}evil\u{2066}\xff");
    chat.stdout.expect_line(&format!("2 to all: {text}"));
}

#[test]
fn end_of_piped_input_waits_for_replies_then_leaves() {
    let server = Server::start(&[]);
    let (other, _) = server.exhibitor();
    let mut chat = Chat::spawn(&server.target());
    chat.stdout
        .expect_line("you are 1 (emitter) / 4097 (exhibitor)");
    chat.type_line("one");
    chat.type_line("two");
    chat.stdin = None;
    other.stdout.expect_line("Message from 1 to all: one");
    other.stdout.expect_line("Message from 1 to all: two");
    assert_eq!(chat.wait().code(), Some(0));
    assert_eq!(
        chat.stdout.rest(),
        vec!["you to all: one ✓", "you to all: two ✓"]
    );
    // Leaving is quiet: the replies to its FLWs are expected, not "unexpected".
    assert_eq!(chat.stderr.rest(), Vec::<String>::new());
}

#[test]
fn server_shutdown_closes_the_chat_with_exit_0() {
    let server = Server::start(&[]);
    let mut chat = Chat::spawn(&server.target());
    chat.stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    server.proc.signal(libc::SIGINT);
    chat.stdout.expect_line("server closed the chat");
    assert_eq!(chat.wait().code(), Some(0));
    assert_eq!(chat.stdout.rest(), Vec::<String>::new());
    // The server's FLW is expected on either connection, never "unexpected".
    assert_eq!(chat.stderr.rest(), Vec::<String>::new());
}

#[test]
fn unreachable_server_at_start_is_exit_1_with_the_cause() {
    let unused = ReservedPort::new();
    let addr = unused.target();
    let mut chat = Chat::spawn(&addr);
    assert_eq!(chat.wait().code(), Some(1));
    assert_eq!(chat.stdout.rest(), Vec::<String>::new());
    assert_eq!(
        chat.stderr.rest(),
        vec![format!(
            "evchat chat: cannot connect to {addr}: nothing is listening there (connection \
             refused) — is the server running?"
        )]
    );
}

#[test]
fn server_going_away_fails_pending_messages_then_the_chat_reconnects() {
    let port = ReservedPort::new();
    let mut server = Server::start_on(&port, &[]);
    // An exhibitor that never acknowledges keeps a message outstanding.
    let mut silent = server.raw();
    assert_eq!(silent.identify_exhibitor(), 4096);
    let mut chat = Chat::spawn(&server.target());
    chat.stdout
        .expect_line("you are 1 (emitter) / 4097 (exhibitor)");
    chat.type_line("/msg 4096 stuck");
    let msg = silent.expect_frame();
    assert_eq!((msg.kind, msg.dest), (Kind::Msg, 4096));

    // Killed: no FLW, the connections just end.
    server.proc.signal(libc::SIGKILL);
    assert_eq!(server.proc.wait().code(), None);
    chat.stdout.expect_line(&format!(
        "connection to {} lost; reconnecting",
        server.target()
    ));
    chat.stdout
        .expect_line("you to 4096: stuck ✗ not delivered (connection lost)");

    // Typed while away: refused, not queued.
    chat.type_line("into the void");
    chat.stderr.expect_line(&format!(
        "evchat chat: line 2: not connected (reconnecting to {}); nothing sent",
        server.target()
    ));

    let restarted = Server::start_on(&port, &[]);
    // Attempts before the restart may have failed (and said so); backoff
    // reaches 4 s at most by then, so 15 s is ample.
    let failures = chat.skip_until(
        "reconnected: you are 1 (emitter) / 4096 (exhibitor)",
        Duration::from_secs(15),
    );
    for line in &failures {
        assert!(line.starts_with("reconnecting failed: "), "{line:?}");
    }
    // On registering again it asks who is there (its CLIST marks the end of
    // any history the server replays).
    chat.stdout.expect_line("clients (2): 1 4096");

    let mut other = restarted.raw();
    assert_eq!(other.identify_exhibitor(), 4097);
    chat.type_line("back again");
    let msg = other.expect_frame();
    // The new emitter's second request after its OI (the first was that
    // CREQ): the refused line took no sequence number.
    assert_eq!(msg, Frame::msg(1, 0, 2, &b"back again"[..]).unwrap());
    other.send_frame(&Frame::bare(Kind::Ok, 4097, 1, msg.seq));
    chat.stdout.expect_line("you to all: back again ✓");
}

/// `command` (the chat, or a shell around it) on a pseudo-terminal, as an
/// xterm.
fn in_terminal(mut command: Command) -> PtySession {
    command.env("TERM", "xterm");
    spawn_command(command, Some(TIMEOUT.as_millis() as u64)).expect("spawn in a pty")
}

/// `evchat chat ARGS` on a pseudo-terminal.
fn chat_in_terminal(args: &[&str]) -> PtySession {
    let mut command = Command::new(EVCHAT);
    command.arg("chat").args(args);
    in_terminal(command)
}

/// `text` as rexpect reports it: one char per byte.
fn bytewise(text: &str) -> String {
    text.bytes().map(char::from).collect()
}

/// The end of the terminal's output, then the chat's exit with code 0.
fn expect_exit_0(chat: &mut PtySession) {
    chat.exp_eof().unwrap();
    match chat.process().wait().unwrap() {
        WaitStatus::Exited(_, 0) => {}
        other => panic!("chat ended with {other:?}"),
    }
}

/// The terminal path: a pseudo-terminal, keys as a person types them.
mod terminal {
    use super::*;

    /// A refused line on a terminal is said without "evchat chat: line N:":
    /// it shows right above the line just typed, and nobody counted lines.
    #[test]
    fn a_refused_line_on_a_terminal_is_said_without_a_line_number() {
        let server = Server::start(&[]);
        let mut chat = chat_in_terminal(&[&server.target()]);
        chat.exp_string("all> ").unwrap();
        chat.send_line("/bogus").unwrap();
        let before = chat
            .exp_string("unknown command '/bogus'; /help lists the commands; nothing sent")
            .unwrap();
        // What came between the typed line and the sentence: the editor's
        // erasing of the input line only.
        let after_typed = before.rsplit("/bogus").next().unwrap();
        assert!(!after_typed.contains("line"), "{after_typed:?}");
        chat.exp_string("all> ").unwrap();
        chat.send_line("/quit").unwrap();
        expect_exit_0(&mut chat);
    }

    #[test]
    fn typed_corrections_arrive_corrected_and_history_recalls_them() {
        let server = Server::start(&[]);
        let (other, _) = server.exhibitor();
        let mut chat = chat_in_terminal(&[&server.target()]);
        chat.exp_string("you are 1 (emitter) / 4097 (exhibitor)")
            .unwrap();
        chat.exp_string("all> ").unwrap();

        // "hello wrld", three steps left, insert "o"; to the end (Ctrl-E),
        // "!!", one backspace.
        chat.send("hello wrld").unwrap();
        chat.send("\x1b[D\x1b[D\x1b[D").unwrap();
        chat.send("o").unwrap();
        chat.send_control('e').unwrap();
        chat.send("!!\x7f").unwrap();
        chat.send("\r").unwrap();
        chat.flush().unwrap();
        other
            .stdout
            .expect_line("Message from 1 to all: hello world!");
        // The typed line is erased (cursor up, clear the row) and shown
        // again in its answered form.
        chat.exp_string("\x1b[1A\x1b[2K\r").unwrap();
        chat.exp_string(&bytewise("you to all: hello world! ✓"))
            .unwrap();
        chat.exp_string("all> ").unwrap();

        // A message arriving prints above the input line.
        let (mut em, _) = server.emitter(None);
        em.input("(4097) are you there?\n");
        em.stdout.expect_line("delivered #1");
        chat.exp_string("2 to you: are you there?").unwrap();

        // Up arrow: the last line again.
        chat.send("\x1b[A\r").unwrap();
        chat.flush().unwrap();
        other
            .stdout
            .expect_line("Message from 1 to all: hello world!");
        chat.exp_string(&bytewise("you to all: hello world! ✓"))
            .unwrap();

        // A pasted block of lines (a terminal sends its newlines as CR) is
        // one message per line, as from a pipe.
        chat.exp_string("all> ").unwrap();
        chat.send("\x1b[200~first line\rsecond line\x1b[201~\r")
            .unwrap();
        chat.flush().unwrap();
        other
            .stdout
            .expect_line("Message from 1 to all: first line");
        other
            .stdout
            .expect_line("Message from 1 to all: second line");
        chat.exp_string(&bytewise("you to all: second line ✓"))
            .unwrap();

        // Ctrl-D leaves: FLW, exit 0, and the chat's ids are gone.
        chat.exp_string("all> ").unwrap();
        chat.send_control('d').unwrap();
        expect_exit_0(&mut chat);
        em.input("(CREQ) 0\n");
        other.stdout.expect_line("Clients (2): 2 4096");
    }

    #[test]
    fn a_line_longer_than_the_terminal_is_erased_row_by_row() {
        let server = Server::start(&[]);
        let (other, _) = server.exhibitor();
        // A terminal 100 columns wide: "all> " and 170 characters take two
        // of its rows (three of 80, the width used when none is known).
        let mut command = Command::new("sh");
        command.args([
            "-c",
            &format!("stty cols 100 && exec {EVCHAT} chat {}", server.target()),
        ]);
        let mut chat = in_terminal(command);
        chat.exp_string("all> ").unwrap();
        let text = "x".repeat(170);
        chat.send(&text).unwrap();
        chat.send("\r").unwrap();
        chat.flush().unwrap();
        other
            .stdout
            .expect_line(&format!("Message from 1 to all: {text}"));
        let before = chat.exp_string("\x1b[1A\x1b[2K\x1b[1A\x1b[2K\r").unwrap();
        assert!(!before.ends_with("\x1b[2K"), "more than two rows erased");
        chat.exp_string(&bytewise(&format!("you to all: {text} ✓")))
            .unwrap();
    }

    #[test]
    fn typed_into_a_terminal_but_printing_into_a_pipe_is_plain() {
        let server = Server::start(&[]);
        let (other, _) = server.exhibitor();
        // Standard input is the terminal, standard output a pipe (to cat):
        // no line editor, so no prompt and no escape sequences in the pipe.
        let mut command = Command::new("sh");
        command.args(["-c", &format!("{EVCHAT} chat {} | cat", server.target())]);
        let mut chat = in_terminal(command);
        chat.exp_string("you are 1 (emitter) / 4097 (exhibitor)")
            .unwrap();
        chat.send("plain\r").unwrap();
        chat.flush().unwrap();
        other.stdout.expect_line("Message from 1 to all: plain");
        let before = chat.exp_string(&bytewise("you to all: plain ✓")).unwrap();
        assert!(
            !before.contains("all> ") && !before.contains('\x1b'),
            "{before:?}"
        );
    }

    #[test]
    fn ctrl_c_leaves_with_exit_0() {
        let server = Server::start(&[]);
        let (other, _) = server.exhibitor();
        let mut chat = chat_in_terminal(&[&server.target()]);
        chat.exp_string("all> ").unwrap();
        chat.send("half a line").unwrap();
        chat.send_control('c').unwrap();
        expect_exit_0(&mut chat);
        // Nothing of the half line was sent.
        let (mut em, _) = server.emitter(None);
        em.input("(CREQ) 0\n");
        other.stdout.expect_line("Clients (2): 1 4096");
    }
}

#[test]
fn chat_help_explains_commands_and_ends_with_examples() {
    let output = Command::new(EVCHAT)
        .args(["chat", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for command in [
        "/to ID",
        "/msg ID text",
        "/list",
        "/help",
        "/quit",
        "(CREQ) ID",
        "/join #room",
        "/leave #room",
        "/rooms",
        "/to #room",
    ] {
        assert!(text.contains(command), "{command} missing: {text}");
    }
    let examples = text.split("Examples:\n").nth(1).expect("examples");
    assert_eq!(
        examples.lines().collect::<Vec<_>>(),
        [
            "  evchat chat 127.0.0.1:5000",
            "  evchat chat                       the server on the LAN that answers discovery \
             (evchat find)",
            "  evchat chat localhost:5000 --timestamps never",
            "  printf 'hello\\n/list\\n' | evchat chat localhost:5000",
        ]
    );
}

#[test]
fn sigint_leaves_with_exit_0_and_frees_both_ids() {
    let server = Server::start(&[]);
    let (other, _) = server.exhibitor();
    let mut chat = Chat::spawn(&server.target());
    chat.stdout
        .expect_line("you are 1 (emitter) / 4097 (exhibitor)");
    // A reply proves the chat is past its start-up (signal handler set).
    chat.type_line("ready");
    chat.stdout.expect_line("you to all: ready ✓");
    other.stdout.expect_line("Message from 1 to all: ready");
    chat.signal(libc::SIGINT);
    assert_eq!(chat.wait().code(), Some(0));
    assert_eq!(chat.stdout.rest(), Vec::<String>::new());
    let (mut em, em_id) = server.emitter(None);
    assert_eq!(em_id, 1);
    em.input("(CREQ) 0\n");
    other.stdout.expect_line("Clients (2): 1 4096");
}

#[test]
fn input_ending_while_the_server_is_away_is_exit_1() {
    let server = Server::start(&[]);
    let mut chat = Chat::spawn(&server.target());
    chat.stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    server.proc.signal(libc::SIGKILL);
    chat.stdout.expect_line(&format!(
        "connection to {} lost; reconnecting",
        server.target()
    ));
    // The first retry (after about 1 s) fails; the wait doubles.
    let failed = chat.stdout.expect();
    assert!(
        failed.starts_with(&format!(
            "reconnecting failed: cannot connect to {}",
            server.target()
        )) && failed.ends_with(" (next try in about 2 s)"),
        "{failed}"
    );
    chat.stdin = None;
    assert_eq!(chat.wait().code(), Some(1));
    assert_eq!(
        chat.stderr.rest(),
        vec!["evchat chat: input ended while the server is away"]
    );
}

/// The server's goodbye on a terminal: the last line replaces the input
/// line at once (the line editor will not run again to show it).
#[test]
fn server_shutdown_is_shown_on_a_terminal_too() {
    let server = Server::start(&[]);
    let mut chat = chat_in_terminal(&[&server.target()]);
    chat.exp_string("all> ").unwrap();
    chat.send("half typed").unwrap();
    chat.flush().unwrap();
    chat.exp_string("half typed").unwrap();
    server.proc.signal(libc::SIGINT);
    chat.exp_string("\r\x1b[2Kserver closed the chat\r\n")
        .unwrap();
    expect_exit_0(&mut chat);
}

/// Regression (review): the chat hid every MSG from its own emitter id as
/// its own echo, but ids are reused, so a broadcast the previous holder of
/// the id sent, replayed by a server with history, was never shown.
#[test]
fn history_replayed_from_a_previous_holder_of_our_id_is_shown() {
    let dir = TempDir::new("chat-replay");
    let server = Server::start(&["--history", dir.arg()]);
    let mut first = Chat::spawn(&server.target());
    first
        .stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    first.type_line("said before you came");
    first
        .stdout
        .expect_line("you to all: said before you came ✓");
    first.stdin = None;
    assert_eq!(first.wait().code(), Some(0));

    // Marked as history: the server does not say when it was sent.
    let second = Chat::spawn(&server.target());
    let mut seen = second.skip_until("1 to all (earlier): said before you came", TIMEOUT);
    if seen.is_empty() {
        seen.push(second.stdout.expect());
    }
    assert!(
        seen[0].starts_with("you are 1 (emitter) / "),
        "the second chat must hold emitter id 1 too: {seen:?}"
    );
}

/// What a server with history replays to a chat that joins is marked as
/// history, without a time (the replay does not say when it was sent, so
/// the time column reads `--:--:--`), and a message sent under the chat's
/// own name in an earlier session reads "you"; a message sent once the
/// chat has joined is not marked. The client list the chat asks for to
/// find the replay's end is not shown.
#[test]
fn history_replayed_to_a_joining_chat_is_marked_earlier() {
    let dir = TempDir::new("chat-earlier");
    let server = Server::start(&["--history", dir.arg()]);
    let mut alice = Chat::spawn_with(&["chat", &server.target(), "--name", "alice"]);
    alice
        .stdout
        .expect_line("you are alice, 1 (emitter) / 4096 (exhibitor)");
    alice.type_line("said before");
    alice.stdout.expect_line("you to all: said before ✓");
    alice.stdin = None;
    assert_eq!(alice.wait().code(), Some(0));

    let mut bob = Chat::spawn_with(&[
        "chat",
        &server.target(),
        "--name",
        "bob",
        "--timestamps",
        "always",
    ]);
    bob.stdout
        .expect_line("you are bob, 1 (emitter) / 4096 (exhibitor)");
    bob.stdout
        .expect_line("--:--:-- alice to all (earlier): said before");
    let mut again = Chat::spawn_with(&["chat", &server.target(), "--name", "ALICE"]);
    again
        .stdout
        .expect_line("you are ALICE, 2 (emitter) / 4097 (exhibitor)");
    // Names compare without case: the recorded "alice" is us.
    again
        .stdout
        .expect_line("you to all (earlier): said before");
    bob.type_line("said now");
    again.stdout.expect_line("bob to all: said now");
    // Bob's own line, timed now: "HH:MM:SS ".
    let shown = bob.stdout.expect();
    let (time, rest) = shown.split_at(9);
    assert!(
        time.as_bytes()[2] == b':' && time.ends_with(' '),
        "{shown:?}"
    );
    assert_eq!(rest, "you to all: said now ✓");
    again.stdin = None;
    assert_eq!(again.wait().code(), Some(0));
    assert_eq!(again.stdout.rest(), Vec::<String>::new());
}

/// A chat forgets the names of ids a client list does not carry (they
/// have left), and the server forgets it told them: a name back under the
/// same id is told again. Before, bob's /list made him forget alice, the
/// server still counted her as told, and her next message read "2 to all".
#[test]
fn a_name_back_under_its_id_after_a_list_is_told_again() {
    let server = Server::start(&[]);
    let mut bob = Chat::spawn_with(&["chat", &server.target(), "--name", "bob"]);
    bob.stdout
        .expect_line("you are bob, 1 (emitter) / 4096 (exhibitor)");
    let mut alice = Chat::spawn_with(&["chat", &server.target(), "--name", "alice"]);
    alice
        .stdout
        .expect_line("you are alice, 2 (emitter) / 4097 (exhibitor)");
    alice.type_line("hi");
    bob.stdout.expect_line("alice to all: hi");
    alice.stdout.expect_line("you to all: hi ✓");
    alice.stdin = None;
    assert_eq!(alice.wait().code(), Some(0));
    bob.type_line("/list");
    bob.stdout.expect_line("clients (2): bob(1) bob(4096)");
    let mut alice = Chat::spawn_with(&["chat", &server.target(), "--name", "alice"]);
    alice
        .stdout
        .expect_line("you are alice, 2 (emitter) / 4097 (exhibitor)");
    alice.type_line("back");
    bob.stdout.expect_line("alice to all: back");
    alice.stdout.expect_line("you to all: back ✓");
}

/// The names a replay told are kept past the client list that ends it:
/// the server counts them as known to the chat, and does not tell them
/// again when their ids come back. Before (found in review), that list
/// made the chat forget alice's, and her next message read "3 to all".
#[test]
fn a_name_told_by_the_replay_is_kept_for_its_next_session() {
    let dir = TempDir::new("chat-replay-names");
    let server = Server::start(&["--history", dir.arg()]);
    let carol = Chat::spawn_with(&["chat", &server.target(), "--name", "carol"]);
    carol
        .stdout
        .expect_line("you are carol, 1 (emitter) / 4096 (exhibitor)");
    let xavier = Chat::spawn_with(&["chat", &server.target(), "--name", "xavier"]);
    xavier
        .stdout
        .expect_line("you are xavier, 2 (emitter) / 4097 (exhibitor)");
    let mut alice = Chat::spawn_with(&["chat", &server.target(), "--name", "alice"]);
    alice
        .stdout
        .expect_line("you are alice, 3 (emitter) / 4098 (exhibitor)");
    alice.type_line("hi");
    alice.stdout.expect_line("you to all: hi ✓");
    for mut gone in [xavier, alice] {
        gone.stdin = None;
        assert_eq!(gone.wait().code(), Some(0));
    }
    // bob takes xavier's ids; alice's (3) stay free.
    let bob = Chat::spawn_with(&["chat", &server.target(), "--name", "bob"]);
    bob.stdout
        .expect_line("you are bob, 2 (emitter) / 4097 (exhibitor)");
    bob.stdout.expect_line("alice to all (earlier): hi");
    let mut alice = Chat::spawn_with(&["chat", &server.target(), "--name", "alice"]);
    alice
        .stdout
        .expect_line("you are alice, 3 (emitter) / 4098 (exhibitor)");
    alice.stdout.expect_line("you to all (earlier): hi");
    alice.type_line("back");
    alice.stdout.expect_line("you to all: back ✓");
    bob.stdout.expect_line("alice to all: back");
    drop(carol);
}

/// A server with history replays its recent broadcasts to every exhibitor
/// that joins, a reconnected chat's too: the chat shows each message once,
/// including one the server got while the chat was away.
#[test]
fn chat_reconnected_to_a_server_with_history_shows_each_message_once() {
    let dir = TempDir::new("chat-again");
    let history = ["--history", dir.arg()];
    let port = ReservedPort::new();
    let mut server = Server::start_on(&port, &history);
    let mut chat = Chat::spawn(&server.target());
    chat.stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    let (mut emitter, _) = server.emitter(None);
    emitter.input("(0) one\n");
    emitter.stdout.expect_line("delivered #1");
    chat.stdout.expect_line("2 to all: one");
    chat.type_line("from the chat");
    chat.stdout.expect_line("you to all: from the chat ✓");

    // Killed, so that the chat reconnects; restarted on the same log, where
    // another emitter speaks before or after the chat is back.
    server.proc.signal(libc::SIGKILL);
    assert_eq!(server.proc.wait().code(), None);
    chat.stdout.expect_line(&format!(
        "connection to {} lost; reconnecting",
        server.target()
    ));
    let server = Server::start_on(&port, &history);
    let (_exhibitor, _) = server.exhibitor();
    let (mut emitter, emitter_id) = server.emitter(None);
    emitter.input("(0) while you were away\n");
    emitter.stdout.expect_line("delivered #1");

    // Attempts before the restart may have failed (and said so); backoff
    // reaches 4 s at most by then, so 15 s is ample.
    let mut before = Vec::new();
    let reconnected = loop {
        let line = chat
            .stdout
            .next_within(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("no reconnection; saw {before:?}"));
        if line.starts_with("reconnected: ") {
            break line;
        }
        assert!(line.starts_with("reconnecting failed: "), "{line:?}");
        before.push(line);
    };
    // "while you were away" came in the replay (above the list, marked as
    // history) or live.
    let replayed = chat.skip_until_prefix("clients (4): ");
    emitter.input("(0) three\n");
    emitter.stdout.expect_line("delivered #2");
    let live = chat.skip_until(&format!("{emitter_id} to all: three"), TIMEOUT);
    let earlier = [format!(
        "{emitter_id} to all (earlier): while you were away"
    )];
    let now = [format!("{emitter_id} to all: while you were away")];
    assert!(
        (replayed == earlier && live.is_empty()) || (replayed.is_empty() && live == now),
        "after {reconnected:?}: {replayed:?} then {live:?}"
    );
}

/// The chat's HELLO that only opts in: version 1, no name, no secret.
const OPT_IN_HELLO: [u8; 14] = [0, 8, 0, 0, 0xff, 0xff, 0, 0, 0, 4, 1, 0, 0, 0];
/// HELLOACK code 0, roles view+emit+broadcast, no name.
const WELCOME: [u8; 14] = [0, 9, 0xff, 0xff, 0, 0, 0, 0, 0, 4, 0, 1, 7, 0];

/// The next connection to `listener`, its opt-in HELLO answered code 0.
fn welcomed(listener: &std::net::TcpListener) -> Raw {
    let mut client = Raw::over(listener.accept().unwrap().0);
    assert_eq!(client.expect_bytes(OPT_IN_HELLO.len()), OPT_IN_HELLO);
    client.send(&WELCOME);
    client
}

/// Answers `client`'s OI with OK, giving it `id`.
pub(crate) fn identified(client: &mut Raw, id: u16) {
    let oi = client.expect_frame();
    assert_eq!(oi.kind, Kind::Oi, "{oi}");
    client.send_frame(&Frame::bare(Kind::Ok, SERVER_ID, id, oi.seq));
}

/// What a server does with the CREQ a chat sends its own emitter (1) on
/// registering, with `seq`: OK to the emitter, and to the exhibitor (4096)
/// a CLIST of the two, which ends whatever the server replayed before it;
/// the exhibitor acknowledges it.
pub(crate) fn answer_registration_list(exhibitor: &mut Raw, emitter: &mut Raw, seq: u16) {
    assert_eq!(emitter.expect_frame(), Frame::bare(Kind::Creq, 1, 1, seq));
    emitter.send_frame(&Frame::bare(Kind::Ok, SERVER_ID, 1, seq));
    exhibitor.send_frame(&Frame::clist(1, 4096, 0, vec![1, 4096]).unwrap());
    assert_eq!(exhibitor.expect_frame(), Frame::bare(Kind::Ok, 4096, 1, 0));
}

/// A scripted server, for what a real one does not do on cue: it answers
/// the chat's two HELLOs and OIs (its exhibitor gets 4096, then its
/// emitter 1) and the CREQ the chat sends on registering, and hands the
/// test both connections, exhibitor first.
fn scripted_server() -> (String, std::sync::mpsc::Receiver<(Raw, Raw)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Both HELLOs come before either OI.
        let mut exhibitor = welcomed(&listener);
        let mut emitter = welcomed(&listener);
        identified(&mut exhibitor, 4096);
        identified(&mut emitter, 1);
        answer_registration_list(&mut exhibitor, &mut emitter, 1);
        let _ = tx.send((exhibitor, emitter));
    });
    (addr, rx)
}

/// What [`plain_only_server`] hands over: the start of the HELLO it
/// refused, and the connections it registered.
type PlainOnly = (Vec<u8>, Vec<Raw>);

/// A server of the plain protocol only (another implementation, or evchat
/// before the extension): HELLO is an unknown type, ERRO(65535, 0, 0) and a
/// close. It hands the test the first 10 bytes of that HELLO; then, if
/// `pairs`, it answers two plain OIs as [`scripted_server`] does and hands
/// over both connections.
fn plain_only_server(pairs: bool) -> (String, std::sync::mpsc::Receiver<PlainOnly>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = Raw::over(listener.accept().unwrap().0);
        let hello = first.expect_bytes(10);
        first.send_frame(&Frame::bare(Kind::Erro, SERVER_ID, 0, 0));
        drop(first);
        let mut pair = Vec::new();
        for id in [4096, 1].into_iter().filter(|_| pairs) {
            let mut client = Raw::over(listener.accept().unwrap().0);
            let oi = client.expect_frame();
            assert_eq!(oi.kind, Kind::Oi, "{oi}");
            client.send_frame(&Frame::bare(Kind::Ok, SERVER_ID, id, oi.seq));
            pair.push(client);
        }
        let _ = tx.send((hello, pair));
    });
    (addr, rx)
}

/// WHO tells the exhibitor a name, before the MSG that carries the id:
/// the chat acknowledges it with OK(own id, 65535, its seq), as PROTOCOL.md
/// says, and shows the name. A WHO with NL = 0 takes the name away again.
#[test]
fn who_is_acknowledged_and_names_the_sender() {
    let (addr, connections) = scripted_server();
    let chat = Chat::spawn(&addr);
    chat.stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    let (mut exhibitor, _emitter) = connections.recv_timeout(TIMEOUT).expect("registered");
    // WHO to 4096, seq 3: id 2 is "bob", roles 7 (L = 7).
    let who_bob = [
        0, 10, 0xff, 0xff, 0x10, 0, 0, 3, 0, 7, 0, 2, 7, 3, b'b', b'o', b'b',
    ];
    exhibitor.send(&who_bob);
    assert_eq!(
        exhibitor.expect_frame(),
        Frame::bare(Kind::Ok, 4096, SERVER_ID, 3)
    );
    exhibitor.send_frame(&Frame::msg(2, 4096, 9, b"hi".to_vec()).unwrap());
    chat.stdout.expect_line("bob to you: hi");
    assert_eq!(exhibitor.expect_frame(), Frame::bare(Kind::Ok, 4096, 2, 9));
    // The id now has no name (another session holds it).
    let who_nobody = [0, 10, 0xff, 0xff, 0x10, 0, 0, 4, 0, 4, 0, 2, 7, 0];
    exhibitor.send(&who_nobody);
    assert_eq!(
        exhibitor.expect_frame(),
        Frame::bare(Kind::Ok, 4096, SERVER_ID, 4)
    );
    exhibitor.send_frame(&Frame::msg(2, 0, 10, b"again".to_vec()).unwrap());
    chat.stdout.expect_line("2 to all: again");
}

/// The replay's end as the chat finds it: a server says both HELLOs'
/// answers before either OI, replays at the exhibitor's OI, and the
/// chat's CREQ comes right after its emitter's OI (the scripted server
/// takes them in that order, or hangs). A broadcast before the CLIST that
/// answers the CREQ is the replay, marked; one after it is live.
#[test]
fn broadcasts_before_the_list_asked_on_joining_are_the_replay() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let mut exhibitor = welcomed(&listener);
        let mut emitter = welcomed(&listener);
        identified(&mut exhibitor, 4096);
        // The replay, queued at the exhibitor's OI.
        exhibitor.send_frame(&Frame::msg(2, 0, 0, b"said before".to_vec()).unwrap());
        identified(&mut emitter, 1);
        assert_eq!(exhibitor.expect_frame(), Frame::bare(Kind::Ok, 4096, 2, 0));
        answer_registration_list(&mut exhibitor, &mut emitter, 1);
        exhibitor.send_frame(&Frame::msg(2, 0, 1, b"said now".to_vec()).unwrap());
        assert_eq!(exhibitor.expect_frame(), Frame::bare(Kind::Ok, 4096, 2, 1));
        (exhibitor, emitter)
    });
    let chat = Chat::spawn(&addr);
    chat.stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    chat.stdout.expect_line("2 to all (earlier): said before");
    chat.stdout.expect_line("2 to all: said now");
    let _connections = server.join().unwrap();
}

/// A WHO that does not parse (its name longer than L says) is no frame:
/// the connection is dropped as for any undecodable bytes, and the chat
/// reconnects.
#[test]
fn a_malformed_who_drops_the_connection() {
    let (addr, connections) = scripted_server();
    let chat = Chat::spawn(&addr);
    chat.stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    let (mut exhibitor, mut emitter) = connections.recv_timeout(TIMEOUT).expect("registered");
    exhibitor.send(&[0, 10, 0xff, 0xff, 0x10, 0, 0, 3, 0, 5, 0, 2, 7, 9, b'x']);
    chat.stdout
        .expect_line(&format!("connection to {addr} lost; reconnecting"));
    exhibitor.expect_closed();
    emitter.expect_closed();
}

/// A server that answers the first HELLO with `answer` and closes; the
/// address, and the HELLO's first 10 bytes once it came.
fn answering_server(answer: Vec<u8>) -> (String, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut client = Raw::over(listener.accept().unwrap().0);
        let hello = client.expect_bytes(10);
        client.send(&answer);
        let _ = tx.send(hello);
    });
    (addr, rx)
}

/// Each HELLOACK refusal is one sentence and exit 1, whatever the server
/// that sends it; an answer that is not the extension's is said plainly.
#[test]
fn every_helloack_code_has_its_sentence() {
    let ack = |code: u8, version: u8| vec![0, 9, 0xff, 0xff, 0, 0, 0, 0, 0, 4, code, version, 0, 0];
    let cases = [
        (
            ack(1, 1),
            "this server requires an account: sign in with --user NAME".to_string(),
        ),
        (
            ack(3, 1),
            "name taken: pick another with --name".to_string(),
        ),
        (
            ack(4, 1),
            "bad name: a name is a letter, then up to 23 letters, digits, '_', '.' or '-'"
                .to_string(),
        ),
        (
            ack(5, 1),
            "too many refused sign-ins from this address; try again later".to_string(),
        ),
        (
            ack(6, 1),
            "the server is busy checking other sign-ins; try again in a moment".to_string(),
        ),
        (
            ack(8, 1),
            "the server refused the HELLO as malformed or out of place (code 8)".to_string(),
        ),
        (
            ack(9, 2),
            "the server speaks version 2 of the identity extension; this client speaks 1"
                .to_string(),
        ),
        // Accepted, but in a version this client does not speak.
        (
            ack(0, 2),
            "the server speaks version 2 of the identity extension; this client speaks 1"
                .to_string(),
        ),
    ];
    for (answer, sentence) in cases {
        let (addr, hello) = answering_server(answer.clone());
        let mut chat = Chat::spawn_with(&["chat", &addr, "--name", "alice"]);
        assert_eq!(hello.recv_timeout(TIMEOUT).unwrap()[..2], [0, 8]);
        assert_eq!(chat.wait().code(), Some(1), "{answer:?}");
        assert_eq!(chat.stderr.rest(), [format!("evchat chat: {sentence}")]);
    }
    // A code this client does not know, and bytes that are no frame.
    for (answer, sentence) in [
        (
            ack(42, 1),
            "answered HELLO with code 42, which this client does not know",
        ),
        (
            b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
            "does not speak this protocol (it sent: `SSH-2.0-OpenSSH_9.6\\r\\n`)",
        ),
    ] {
        let (addr, _hello) = answering_server(answer);
        let mut chat = Chat::spawn_with(&["chat", &addr, "--name", "alice"]);
        assert_eq!(chat.wait().code(), Some(1));
        assert_eq!(
            chat.stderr.rest(),
            [format!("evchat chat: {addr} {sentence}")]
        );
    }
}

/// A server that does not know HELLO answers it as an unknown type
/// (ERRO, close): the chat then speaks the plain protocol, quietly.
#[test]
fn a_server_without_the_extension_gets_the_plain_protocol() {
    let (addr, registered) = plain_only_server(true);
    let mut chat = Chat::spawn(&addr);
    chat.stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    let (hello, mut pair) = registered.recv_timeout(TIMEOUT).expect("registered");
    assert_eq!(hello, OPT_IN_HELLO[..10]);
    let mut exhibitor = pair.remove(0);
    exhibitor.send_frame(&Frame::msg(2, 4096, 0, b"plain".to_vec()).unwrap());
    chat.stdout.expect_line("2 to you: plain");
    // The MSG's OK, on the plain path.
    let ack = exhibitor.expect_frame();
    assert_eq!(ack, Frame::bare(Kind::Ok, 4096, 2, 0));
    // Leaving: FLW from its emitter; the server's end of the pair closes.
    chat.stdin = None;
    let mut emitter = pair.remove(0);
    let flw = emitter.expect_frame();
    assert_eq!((flw.kind, flw.origin), (Kind::Flw, 1), "{flw}");
    drop(emitter);
    drop(exhibitor);
    assert_eq!(chat.wait().code(), Some(0));
    assert_eq!(chat.stderr.rest(), Vec::<String>::new());
}

/// A name needs the extension: against a server without it the chat says
/// so and exits 1 rather than chat nameless.
#[test]
fn a_name_asked_of_a_server_without_the_extension_is_exit_1() {
    for ask in [["--name", "alice"], ["--user", "alice"]] {
        let (addr, refused) = plain_only_server(false);
        let mut chat = Chat::spawn_env(&["chat", &addr, ask[0], ask[1]], &[(TOKEN, "evt_x")]);
        let (hello, _) = refused.recv_timeout(TIMEOUT).expect("a HELLO");
        assert_eq!(hello[..4], [0, 8, 0, 0]);
        assert_eq!(chat.wait().code(), Some(1));
        assert_eq!(
            chat.stderr.rest(),
            [format!(
                "evchat chat: {addr} answered HELLO with ERRO: it does not speak the identity \
                 extension, which --user and --name need, or it takes TLS only (try \
                 tls://{addr})"
            )]
        );
    }
}

/// Reads the chat's OK to a FLW with sequence number `seq` from `from`.
fn expect_ok_to_flw(client: &mut Raw, from: u16, seq: u16) {
    let ok = client.expect_frame();
    assert_eq!(
        (ok.kind, ok.origin, ok.dest, ok.seq),
        (Kind::Ok, from, SERVER_ID, seq),
        "{ok}"
    );
}

/// When one of its two connections ends without FLW, the chat closes the
/// other too before it reconnects: the server must not keep a half of it.
#[test]
fn when_one_connection_is_lost_the_chat_closes_the_other() {
    let (addr, connections) = scripted_server();
    let chat = Chat::spawn(&addr);
    chat.stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    let (exhibitor, mut emitter) = connections.recv_timeout(TIMEOUT).expect("registered");
    // The exhibitor's connection ends; the emitter's must end next.
    drop(exhibitor);
    emitter.expect_closed();
    drop(chat);
}

/// A server shutting down says goodbye on both connections; the chat
/// answers each FLW before it exits, whichever comes first.
#[test]
fn server_farewell_is_answered_on_both_connections_before_the_chat_exits() {
    for exhibitor_first in [false, true] {
        let (addr, connections) = scripted_server();
        let mut chat = Chat::spawn(&addr);
        chat.stdout
            .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
        let (mut exhibitor, mut emitter) = connections.recv_timeout(TIMEOUT).expect("registered");
        let mut halves = [(&mut emitter, 1), (&mut exhibitor, 4096)];
        if exhibitor_first {
            halves.reverse();
        }
        for (seq, (client, id)) in halves.into_iter().enumerate() {
            let seq = 7 + seq as u16;
            client.send_frame(&Frame::bare(Kind::Flw, SERVER_ID, id, seq));
            expect_ok_to_flw(client, id, seq);
        }
        chat.stdout.expect_line("server closed the chat");
        assert_eq!(chat.wait().code(), Some(0));
        assert_eq!(chat.stderr.rest(), Vec::<String>::new());
    }
}

/// Replies a server may send that are no news: an OK or ERRO on the
/// exhibitor's connection (nothing to answer there), a refused list. And
/// leaving waits for the reply to its own FLW even once its exhibitor has
/// been dismissed.
#[test]
fn chat_takes_odd_replies_quietly_and_leaves_only_when_both_halves_are_done() {
    let (addr, connections) = scripted_server();
    let mut chat = Chat::spawn(&addr);
    chat.stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    let (mut exhibitor, mut emitter) = connections.recv_timeout(TIMEOUT).expect("registered");

    exhibitor.send_frame(&Frame::bare(Kind::Ok, SERVER_ID, 4096, 3));
    exhibitor.send_frame(&Frame::bare(Kind::Erro, SERVER_ID, 4096, 4));
    exhibitor.send_frame(&Frame::msg(2, 4096, 5, b"still here".to_vec()).unwrap());
    chat.stdout.expect_line("2 to you: still here");
    let ack = exhibitor.expect_frame();
    assert_eq!(
        (ack.kind, ack.origin, ack.dest, ack.seq),
        (Kind::Ok, 4096, 2, 5),
        "{ack}"
    );

    // Our own list refused: said so without an id.
    chat.type_line("/list");
    let creq = emitter.expect_frame();
    assert_eq!(
        (creq.kind, creq.origin, creq.dest),
        (Kind::Creq, 1, 1),
        "{creq}"
    );
    emitter.send_frame(&Frame::bare(Kind::Erro, SERVER_ID, 1, creq.seq));
    chat.stdout.expect_line("client list ✗ not delivered");

    chat.type_line("/quit");
    let flw = emitter.expect_frame();
    assert_eq!(
        (flw.kind, flw.origin, flw.dest),
        (Kind::Flw, 1, SERVER_ID),
        "{flw}"
    );
    // The exhibitor is dismissed first; the chat still waits for its reply.
    exhibitor.send_frame(&Frame::bare(Kind::Flw, SERVER_ID, 4096, 9));
    expect_ok_to_flw(&mut exhibitor, 4096, 9);
    emitter.send_frame(&Frame::bare(
        Kind::Ok,
        SERVER_ID,
        1,
        flw.seq.wrapping_add(100),
    ));
    emitter.send_frame(&Frame::bare(Kind::Ok, SERVER_ID, 1, flw.seq));
    assert_eq!(chat.wait().code(), Some(0));
    assert_eq!(chat.stdout.rest(), Vec::<String>::new());
    assert_eq!(
        chat.stderr.rest(),
        vec![format!(
            "evchat chat: reply for unknown request #{}",
            flw.seq.wrapping_add(100)
        )]
    );
}

#[test]
fn timestamps_always_puts_the_local_time_before_chat_lines() {
    let server = Server::start(&[]);
    let mut chat = Chat::spawn_with(&["chat", &server.target(), "--timestamps", "always"]);
    let first = chat.stdout.expect();
    assert!(
        first.ends_with("you are 1 (emitter) / 4096 (exhibitor)"),
        "{first}"
    );
    let (mut em, _) = server.emitter(None);
    em.input("(0) tick\n");
    em.stdout.expect_line("delivered #1");
    let (_, line) = chat
        .stdout
        .skip_until("the tick", TIMEOUT, |l| l.ends_with("2 to all: tick"));
    // HH:MM:SS, then a space, then the line.
    let (time, rest) = line.split_at(9);
    assert_eq!(rest, "2 to all: tick", "{line}");
    let digits: Vec<u32> = time
        .trim_end()
        .split(':')
        .map(|part| {
            assert_eq!(part.len(), 2, "{line}");
            part.parse().unwrap_or_else(|_| panic!("{line}"))
        })
        .collect();
    assert!(
        digits.len() == 3 && digits[0] < 24 && digits[1] < 60 && digits[2] < 61,
        "{line}"
    );
    chat.stdin = None;
    assert_eq!(chat.wait().code(), Some(0));
}

/// Regression (issue #20, item 0): lines typed faster than the chat reads
/// them were lost. Several lines arriving in one read (no bracketed paste)
/// gave the first and dropped the rest: the line editor read ahead past
/// the first Enter and threw the rest away.
mod typed_ahead {
    use super::*;

    /// Writes `keys` to the terminal in one `write`, as a fast typist's
    /// keystrokes (or a terminal without bracketed paste) arrive.
    fn type_at_once(chat: &PtySession, keys: &str) {
        let mut terminal = chat.process().get_file_handle().expect("the pty");
        let written = terminal.write(keys.as_bytes()).expect("write to the pty");
        assert_eq!(written, keys.len(), "one write");
    }

    #[test]
    fn every_line_typed_ahead_is_sent_and_shown_in_order() {
        let server = Server::start(&[]);
        let (other, other_id) = server.exhibitor();
        let mut chat = chat_in_terminal(&[&server.target(), "--timestamps", "never"]);
        chat.exp_string("you are 1 (emitter) / 4097 (exhibitor)")
            .unwrap();
        chat.exp_string("all> ").unwrap();

        type_at_once(&chat, "p1\rp2\rp3\r");
        for text in ["p1", "p2", "p3"] {
            other
                .stdout
                .expect_line(&format!("Message from 1 to all: {text}"));
        }
        for text in ["p1", "p2", "p3"] {
            chat.exp_string(&bytewise(&format!("you to all: {text} ✓")))
                .unwrap();
        }

        // A command and the line it applies to, typed together.
        type_at_once(&chat, &format!("/to {other_id}\ronly you\r"));
        chat.exp_string(&format!("now talking to {other_id}"))
            .unwrap();
        other.stdout.expect_line("Message from 1: only you");
        chat.exp_string(&bytewise(&format!("you to {other_id}: only you ✓")))
            .unwrap();
        chat.exp_string(&format!("{other_id}> ")).unwrap();
    }
}

/// The identity extension from the chat's side: signing in (a password at a
/// prompt that does not echo it, a token from the environment or a file),
/// each refusal's sentence and exit status, names claimed and shown, and
/// names in `/to` and `/list`.
mod identity {
    use super::*;
    use evchat::auth::{Account, Accounts, Credential, Name, Roles, Secret};

    /// Alice's password; cheap argon2id parameters keep the tests fast (the
    /// server accepts any within its maximum).
    const PASSWORD: &str = "correct horse";
    /// Bob's token.
    const BOB_TOKEN: &str = "evt_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    /// Watcher's token: an account that may only view.
    const WATCHER_TOKEN: &str =
        "evt_ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    /// A server with `--auth`: alice (a password) and bob (a token), both
    /// with view, emit and broadcast, and watcher (a token, view only).
    fn auth_server(dir: &TempDir, extra: &[&str]) -> Server {
        let roles = Roles::parse("view,emit,broadcast").unwrap();
        let cheap = argon2::Params::new(8, 1, 1, None).unwrap();
        let mut accounts = Accounts::default();
        for (name, secret) in [
            (
                "alice",
                Secret::for_password_with(&Credential::new(PASSWORD.into()), cheap).unwrap(),
            ),
            ("bob", Secret::for_token(&Credential::new(BOB_TOKEN.into()))),
            (
                "watcher",
                Secret::for_token(&Credential::new(WATCHER_TOKEN.into())),
            ),
        ] {
            let roles = if name == "watcher" {
                Roles::parse("view").unwrap()
            } else {
                roles
            };
            accounts.upsert(Account {
                name: Name::new(name).unwrap(),
                roles,
                secret,
                expires: None,
            });
        }
        let path = dir.path().join("accounts");
        accounts.save(&path).unwrap();
        let mut args = vec!["--auth", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// A private file holding `text`.
    fn token_file(dir: &TempDir, name: &str, text: &str, mode: u32) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// Runs `evchat chat ARGS` with `env` to its end; its exit code and stderr.
    fn refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Vec<String>) {
        let mut chat = Chat::spawn_env(args, env);
        let code = chat.wait().code();
        (code, chat.stderr.rest())
    }

    #[test]
    fn a_password_typed_at_the_prompt_is_not_echoed_and_signs_in() {
        let dir = TempDir::new("chat-password");
        let server = auth_server(&dir, &[]);
        // rexpect starts its terminal with echo off; a terminal as people
        // have it echoes, so the chat must turn echo off itself.
        let mut shell = Command::new("sh");
        shell.args(["-c", "stty echo && exec \"$0\" \"$@\"", EVCHAT, "chat"]);
        shell.args([&server.target(), "--user", "alice"]);
        let mut chat = in_terminal(shell);
        chat.exp_string("Password for alice: ").unwrap();
        chat.send_line(PASSWORD).unwrap();
        let shown = chat
            .exp_string("you are alice, 1 (emitter) / 4096 (exhibitor)")
            .unwrap();
        assert!(
            !shown.contains("horse"),
            "the password was echoed: {shown:?}"
        );
        chat.exp_string("all> ").unwrap();
        // Its messages go out as alice's, to a chat of another account.
        let bob = Chat::spawn_env(
            &["chat", &server.target(), "--user", "bob"],
            &[(TOKEN, BOB_TOKEN)],
        );
        bob.stdout
            .expect_line("you are bob, 2 (emitter) / 4097 (exhibitor)");
        chat.send_line("hi bob").unwrap();
        bob.stdout.expect_line("alice to all: hi bob");
        chat.send_control('d').unwrap();
        expect_exit_0(&mut chat);
    }

    #[test]
    fn a_token_comes_from_the_environment_or_a_private_file() {
        let dir = TempDir::new("chat-token");
        let server = auth_server(&dir, &[]);
        let mut from_env = Chat::spawn_env(
            &["chat", &server.target(), "--user", "BOB"],
            &[(TOKEN, BOB_TOKEN)],
        );
        // The account's own spelling, whatever was typed.
        from_env
            .stdout
            .expect_line("you are bob, 1 (emitter) / 4096 (exhibitor)");
        let file = token_file(&dir, "token", &format!("{BOB_TOKEN}\n"), 0o600);
        // The file wins over the environment.
        let mut from_file = Chat::spawn_env(
            &[
                "chat",
                &server.target(),
                "--user",
                "bob",
                "--token-file",
                &file,
            ],
            &[(TOKEN, "evt_wrong")],
        );
        from_file
            .stdout
            .expect_line("you are bob, 2 (emitter) / 4097 (exhibitor)");
        // One account, two sessions: both show the same name.
        from_file.type_line("/list");
        from_file
            .stdout
            .expect_line("clients (4): bob(1) bob(2) bob(4096) bob(4097)");
        for chat in [&mut from_env, &mut from_file] {
            chat.stdin = None;
            assert_eq!(chat.wait().code(), Some(0));
            assert_eq!(chat.stderr.rest(), Vec::<String>::new());
        }
    }

    #[test]
    fn a_bad_token_file_or_variable_is_refused_before_connecting() {
        let dir = TempDir::new("chat-bad-token");
        // Nothing listens: the refusal comes before any connection.
        let port = ReservedPort::new();
        let addr = port.addr().to_string();
        let long = "x".repeat(257);
        let cases = [
            ("empty", "\n", 0o600, "is empty"),
            (
                "long",
                long.as_str(),
                0o600,
                "is longer than 256 bytes; a secret is at most that",
            ),
            (
                "lines",
                "evt_a\nevt_b\n",
                0o600,
                "holds more than one line; put only the secret in it",
            ),
        ];
        for (name, text, mode, why) in cases {
            let file = token_file(&dir, name, text, mode);
            let (code, stderr) = refused(
                &["chat", &addr, "--user", "bob", "--token-file", &file],
                &[],
            );
            assert_eq!(code, Some(2), "{name}");
            assert_eq!(stderr, [format!("evchat chat: --token-file {file} {why}")]);
        }
        let open = token_file(&dir, "open", BOB_TOKEN, 0o644);
        let (code, stderr) = refused(
            &["chat", &addr, "--user", "bob", "--token-file", &open],
            &[],
        );
        assert_eq!(code, Some(2));
        assert_eq!(
            stderr,
            [format!(
                "evchat chat: --token-file {open}: mode 0644 lets group or others read or write \
                 it; a secret must stay private (chmod 600 {open})"
            )]
        );
        let missing = dir.path().join("missing");
        let missing = missing.to_str().unwrap();
        let (code, stderr) = refused(
            &["chat", &addr, "--user", "bob", "--token-file", missing],
            &[],
        );
        assert_eq!(code, Some(2));
        assert_eq!(
            stderr,
            [format!(
                "evchat chat: --token-file {missing}: No such file or directory (os error 2)"
            )]
        );
        let (code, stderr) = refused(&["chat", &addr, "--user", "bob"], &[(TOKEN, "")]);
        assert_eq!(code, Some(2));
        assert_eq!(stderr, ["evchat chat: $EVCHAT_TOKEN is empty"]);
        let (code, stderr) = refused(&["chat", &addr, "--user", "bob"], &[(TOKEN, &long)]);
        assert_eq!(code, Some(2));
        assert_eq!(
            stderr,
            ["evchat chat: $EVCHAT_TOKEN is longer than 256 bytes; a secret is at most that"]
        );
        // Not a terminal, and no token: nowhere to get a password from.
        let (code, stderr) = refused(&["chat", &addr, "--user", "bob"], &[]);
        assert_eq!(code, Some(2));
        assert_eq!(
            stderr,
            [
                "evchat chat: --user bob needs its password typed at a terminal, or a token in \
              $EVCHAT_TOKEN or --token-file FILE"
            ]
        );
    }

    #[test]
    fn every_refusal_is_one_sentence_and_exit_1() {
        let dir = TempDir::new("chat-refusals");
        let server = auth_server(&dir, &[]);
        let addr = server.target();
        let wrong = "evchat chat: sign-in refused: unknown user or wrong password";
        // A wrong password, a wrong token and an unknown account: one answer.
        for (user, secret) in [("alice", "wrong"), ("bob", "evt_0"), ("carol", PASSWORD)] {
            let (code, stderr) = refused(&["chat", &addr, "--user", user], &[(TOKEN, secret)]);
            assert_eq!(
                (code, &stderr[..]),
                (Some(1), &[wrong.to_string()][..]),
                "{user}"
            );
        }
        // No account at all on a server that requires one, plain or named.
        for args in [&["chat", &addr][..], &["chat", &addr, "--name", "dave"]] {
            let (code, stderr) = refused(args, &[]);
            assert_eq!(code, Some(1));
            assert_eq!(
                stderr,
                ["evchat chat: this server requires an account: sign in with --user NAME"]
            );
        }
        // An account that may view but not emit: said, not taken for a
        // full id range.
        let (code, stderr) = refused(
            &["chat", &addr, "--user", "watcher"],
            &[(TOKEN, WATCHER_TOKEN)],
        );
        assert_eq!(code, Some(1));
        assert_eq!(
            stderr,
            [
                "evchat chat: signed in, but the account lacks the role emit (sending messages), \
              which this client needs"
            ]
        );
        // An account on a server that has none.
        let plain = Server::start(&[]);
        let (code, stderr) = refused(
            &["chat", &plain.target(), "--user", "bob"],
            &[(TOKEN, BOB_TOKEN)],
        );
        assert_eq!(code, Some(1));
        assert_eq!(
            stderr,
            ["evchat chat: this server has no accounts: use --name NAME instead of --user"]
        );
    }

    #[test]
    fn too_many_refusals_from_an_address_have_their_own_sentence() {
        let dir = TempDir::new("chat-budget");
        let server = auth_server(&dir, &["--auth-failures", "1"]);
        let args = ["chat", &server.target(), "--user", "alice"];
        let (code, stderr) = refused(&args, &[(TOKEN, "wrong")]);
        assert_eq!(code, Some(1));
        assert_eq!(
            stderr,
            ["evchat chat: sign-in refused: unknown user or wrong password"]
        );
        // The budget is spent: even the right password is not checked.
        let (code, stderr) = refused(&args, &[(TOKEN, PASSWORD)]);
        assert_eq!(code, Some(1));
        assert_eq!(
            stderr,
            ["evchat chat: too many refused sign-ins from this address; try again later"]
        );
    }

    /// Reconnecting to a server that now refuses who we are (here it came
    /// back with accounts, and a name is no sign-in) ends the chat: trying
    /// again could only be refused again.
    #[test]
    fn a_refusal_on_reconnecting_ends_the_chat_with_status_1() {
        let dir = TempDir::new("chat-refused-again");
        let port = ReservedPort::new();
        let mut server = Server::start_on(&port, &[]);
        let mut chat = Chat::spawn_with(&["chat", &server.target(), "--name", "alice"]);
        chat.stdout
            .expect_line("you are alice, 1 (emitter) / 4096 (exhibitor)");
        server.proc.signal(libc::SIGKILL);
        assert_eq!(server.proc.wait().code(), None);
        chat.stdout.expect_line(&format!(
            "connection to {} lost; reconnecting",
            server.target()
        ));
        let path = dir.path().join("accounts");
        Accounts::default().save(&path).unwrap();
        let _restarted = Server::start_on(&port, &["--auth", path.to_str().unwrap()]);
        // Attempts before the restart fail with "cannot connect" and go on;
        // backoff reaches 4 s at most by then.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let code = loop {
            if let Some(status) = chat.try_wait() {
                break status.code();
            }
            assert!(std::time::Instant::now() < deadline, "the chat did not end");
            if let Some(line) = chat.stdout.next_within(Duration::from_millis(100)) {
                assert!(
                    line.starts_with("reconnecting failed: cannot connect"),
                    "{line}"
                );
            }
        };
        assert_eq!(code, Some(1));
        assert_eq!(
            chat.stderr.rest(),
            ["evchat chat: this server requires an account: sign in with --user NAME"]
        );
    }

    #[test]
    fn a_name_that_is_no_name_is_a_usage_error() {
        for args in [["--name", "1abc"], ["--user", "al ice"]] {
            let (code, stderr) = refused(&["chat", "127.0.0.1:9", args[0], args[1]], &[]);
            assert_eq!(code, Some(2));
            assert!(
                stderr[0].starts_with(&format!(
                    "error: invalid value '{}' for '{} <NAME>'",
                    args[1], args[0]
                )),
                "{stderr:?}"
            );
        }
    }

    #[test]
    fn an_empty_password_is_refused_before_connecting() {
        let port = ReservedPort::new();
        let mut chat = chat_in_terminal(&[&port.addr().to_string(), "--user", "alice"]);
        chat.exp_string("Password for alice: ").unwrap();
        chat.send_line("").unwrap();
        chat.exp_string("evchat chat: no password typed; nothing sent\r\n")
            .unwrap();
        chat.exp_eof().unwrap();
        match chat.process().wait().unwrap() {
            WaitStatus::Exited(_, 2) => {}
            other => panic!("chat ended with {other:?}"),
        }
    }

    #[test]
    fn a_claimed_name_is_shown_to_others_and_found_by_to() {
        let server = Server::start(&[]);
        let mut alice = Chat::spawn_with(&["chat", &server.target(), "--name", "Alice"]);
        alice
            .stdout
            .expect_line("you are Alice, 1 (emitter) / 4096 (exhibitor)");
        // A plain chat (no name) next to it, and a plain exhibitor.
        let mut other = Chat::spawn(&server.target());
        other
            .stdout
            .expect_line("you are 2 (emitter) / 4097 (exhibitor)");
        let (plain, _) = server.exhibitor();

        alice.type_line("hello");
        other.stdout.expect_line("Alice to all: hello");
        // The plain exhibitor sees the plain protocol: ids only.
        plain.stdout.expect_line("Message from 1 to all: hello");
        alice.stdout.expect_line("you to all: hello ✓");

        // A name, any case, reaches its holder's exhibitor.
        other.type_line("/to alice");
        // Alice's exhibitor: the chat was told both her ids (WHO before the
        // client list it asks for on registering).
        other.stdout.expect_line("now talking to Alice (4096)");
        other.type_line("just you");
        alice.stdout.expect_line("2 to you: just you");
        other.stdout.expect_line("you to Alice: just you ✓");
        other.type_line("/msg ALICE and this");
        alice.stdout.expect_line("2 to you: and this");
        other.stdout.expect_line("you to Alice: and this ✓");
        // A name nobody holds: said, nothing sent.
        other.type_line("/to bob");
        other.stderr.expect_line(
            "evchat chat: line 4: no one named 'bob' is known here; /list shows who is \
             connected; nothing sent",
        );

        // The list shows names next to ids.
        other.type_line("/list");
        other
            .stdout
            .expect_line("clients (5): Alice(1) 2 Alice(4096) 4097 4098");
        alice.type_line("/list");
        alice
            .stdout
            .expect_line("clients (5): Alice(1) 2 Alice(4096) 4097 4098");

        // The name is held: claimed again, in any case, it is refused.
        let (code, stderr) = refused(&["chat", &server.target(), "--name", "ALICE"], &[]);
        assert_eq!(code, Some(1));
        assert_eq!(
            stderr,
            ["evchat chat: name taken: pick another with --name"]
        );

        for chat in [&mut alice, &mut other] {
            chat.stdin = None;
            assert_eq!(chat.wait().code(), Some(0));
            assert_eq!(chat.stderr.rest(), Vec::<String>::new());
        }
    }
}
