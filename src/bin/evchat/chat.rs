//! `evchat chat HOST:PORT`: both roles in one terminal. It registers an
//! exhibitor, then an emitter paired with it; what the exhibitor receives is
//! printed above the input line, what is typed goes out through the emitter,
//! and each sent message is shown once, marked when its reply comes. When
//! the connection is lost it reconnects with backoff and re-registers. With
//! stdin or stdout not a terminal it reads and prints plain lines, so it can
//! be scripted.
//!
//! Both connections open with the identity extension's HELLO (PROTOCOL.md,
//! "Extension: identity"): signing in to an account (`--user`), claiming a
//! name (`--name`) or only opting in, so that its exhibitor is told the
//! names behind ids (WHO) and shows them. A server that does not know HELLO
//! gets the plain protocol, unless a name was asked for.

mod input;
mod rooms;

use clap::ValueEnum;
use evchat::auth::{Credential, Name};
use evchat::cli::{escape_text, parse_secs};
use evchat::client::{
    Book, Entered, FAREWELL_TIMEOUT, FrameReader, FrameWriter, Hello, Incoming, InputLine,
    LineInput, NameLookupError, Names, Printer, RegisterError, Registered, Replies, Settled,
    ask_secret, exit_process, open_with, secret_from_env, secret_from_file,
};
use evchat::proto::ext::is_room_id;
use evchat::proto::ext::{
    ExtFrame, FLAG_QUEUE, Join, Leave, MAX_TELL_BODY, RoomAck, RoomCode, RoomList, Tell,
};
use evchat::proto::{BROADCAST, Body, ClientId, Encode, Frame, Header, Kind, SERVER_ID};
use evchat::tls::client::{Endpoint, TlsArgs};
use input::{Addressee, ChatLine, HELP, Target, parse_chat_line};
use rooms::{Prefetches, RoomBook, RoomRequest, room_answer, room_list_line};
use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

#[derive(clap::Args, Debug)]
// The subcommand's one-line summary comes from its doc comment in main.rs;
// everything else a user needs is in the text after the options.
#[command(after_help = "\
It registers an exhibitor, then an emitter paired with it, and says so ('you are 1
(emitter) / 4096 (exhibitor)'; with a name: 'you are alice, 1 (emitter) / 4096
(exhibitor)').

Names (the identity extension; README, 'Accounts and names'): --user NAME signs in to
an account on a server started with --auth, with the password typed at a prompt that
does not echo it, or a token from $EVCHAT_TOKEN or --token-file. --name NAME claims a
name on a server without accounts; if someone holds it, the chat exits with 'name
taken'. Either way, and without them, received messages show the sender's name when
it has one, and /to and /msg take a name. Rooms belong to names: the room commands
need --name or --user; a message in a room is shown as 'alice in #ops: text'.

Input: a line goes to the current target (everyone at first), shown in the prompt.
Received messages print above the line you are typing. Each message you send is shown
once its reply comes: '✓' delivered, '✗ not delivered'.
  /to ID         talk to exhibitor ID, or to the exhibitor paired with emitter ID
  /to NAME       talk to the one with that name (any case); with --name or --user, to
                 one not online too: the server keeps the message until they are back
                 ('stored for NAME'), and shows you those kept for you, marked
                 '(while you were away)'
  /to all        talk to everyone
  /to #room      talk to a room (its members get it; you need not be one)
  /msg ID text   one message to ID (or NAME, or #room), without changing the target
  /list          show who is connected, with their names
  /join #room    join a room, creating it if it does not exist; --queue: a work queue,
                 whose messages each go to one member in turn
  /leave #room   leave a room
  /rooms         list the rooms, their kinds and member counts
  /help          list the commands
  /quit          leave (Ctrl-D and Ctrl-C too)
  (ID) text, (CREQ) ID and (FLW) work as in the emitter; // sends a line that starts with /

If the server goes away it reconnects (after 1 s, doubling to 30 s) and says which ids
it got. With stdin or stdout not a terminal it reads and prints plain lines (no
timestamps unless asked), so it can be scripted; at the end of input it waits for
outstanding replies (--wait) and leaves.

Exit status: 0 when you leave or the server closes the chat; 1 when it cannot connect,
sign in or register at start, when a sign-in or name is refused on reconnecting, or when
input ends while the server is away; 2 for a usage error (an address that is not
HOST:PORT, --ca without TLS, --user without a password prompt or a token).

Examples:
  evchat chat 127.0.0.1:5000
  evchat chat                       the server on the LAN that answers discovery (evchat find)
  evchat chat localhost:5000 --timestamps never
  printf 'hello\\n/list\\n' | evchat chat localhost:5000")]
pub struct ChatArgs {
    /// Server address as host:port (IPv6: [addr]:port); tls://host:port for TLS;
    /// without it, the LAN is asked (evchat find, port 5000): one server answering is
    /// joined, several are listed to choose from
    server: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// When to show the local time before chat lines
    #[arg(long, value_enum, value_name = "WHEN", default_value = "auto")]
    timestamps: When,
    /// Seconds to wait at the end of input (Ctrl-D, end of a pipe) for outstanding replies
    #[arg(long, value_name = "SECS", default_value = "15", value_parser = parse_secs)]
    wait: Duration,
    /// Sign in to this account (a server with --auth); the password is asked for on the
    /// terminal, or the token is taken from $EVCHAT_TOKEN or --token-file
    #[arg(long, value_name = "NAME", value_parser = parse_name, conflicts_with = "name")]
    user: Option<Name>,
    /// With --user: read the token (or password) from the first line of FILE (mode 0600)
    #[arg(long, value_name = "FILE", requires = "user")]
    token_file: Option<PathBuf>,
    /// Claim this name on a server without accounts: a letter, then up to 23 letters,
    /// digits, '_', '.', '-'
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    name: Option<Name>,
}

fn parse_name(s: &str) -> Result<Name, String> {
    Name::new(s).map_err(|e| e.to_string())
}

/// Where `--user`'s secret comes from when no file is given.
const TOKEN_VAR: &str = "EVCHAT_TOKEN";

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    /// On a terminal only
    Auto,
    Always,
    Never,
}

/// First wait before reconnecting; it doubles after each failure.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between reconnection attempts.
const LAST_RETRY: Duration = Duration::from_secs(30);

/// One registration: the exhibitor and the emitter paired with it.
/// Replies and losses of an older one (not the one in `State::session`)
/// are ignored.
struct Session {
    emitter: ClientId,
    exhibitor: ClientId,
    /// The name HELLO granted, if any.
    name: Option<String>,
    /// The server accepted HELLO: it is evchat, which may replay history.
    opted_in: bool,
    /// The emitter's connection: messages, CREQ, FLW.
    to_server: FrameWriter,
    /// The exhibitor's connection: acknowledgements.
    acks: FrameWriter,
}

/// One of a session's two connections.
#[derive(Clone, Copy)]
enum Half {
    Emitter = 0,
    Exhibitor = 1,
}

impl Session {
    fn shutdown(&self) {
        self.to_server.shutdown();
        self.acks.shutdown();
    }
}

/// Something sent whose reply has not come yet.
enum Sent {
    Message {
        dest: Target,
        text: Vec<u8>,
    },
    /// TELL: a message to a name no session of which is known online here;
    /// the server shows it at once or keeps it until the name signs in.
    Tell {
        name: String,
        text: Vec<u8>,
    },
    List {
        dest: Target,
        /// Typed (or asked on reconnecting), not only asked to find the
        /// end of a first registration's replay: a failure is shown.
        shown: bool,
    },
    /// JOIN or LEAVE of the room typed (without `#`).
    Room {
        request: RoomRequest,
        typed: String,
    },
    /// ROOMS; `shown` when the user asked (`/rooms`), not when the chat
    /// only needs the rooms' names.
    Rooms {
        shown: bool,
    },
}

/// A reply to something sent: the plain protocol's or the rooms'.
enum Reply {
    Ok,
    Erro,
    RoomAck(RoomAck),
    RoomList(RoomList),
}

/// A request as it goes out: a plain frame or the extension's.
enum Outgoing {
    Plain(Frame),
    Ext(ExtFrame),
}

impl Outgoing {
    /// The request with its sequence number.
    fn numbered(self, seq: u16) -> Outgoing {
        match self {
            Outgoing::Plain(frame) => Outgoing::Plain(Frame { seq, ..frame }),
            Outgoing::Ext(mut frame) => {
                match &mut frame {
                    ExtFrame::Join(join) => join.seq = seq,
                    ExtFrame::Leave(leave) => leave.seq = seq,
                    ExtFrame::Rooms(header) => header.seq = seq,
                    ExtFrame::Tell(tell) => tell.seq = seq,
                    _ => unreachable!("the chat sends no other numbered extension frame"),
                }
                Outgoing::Ext(frame)
            }
        }
    }
}

impl Encode for Outgoing {
    fn encoded_len(&self) -> usize {
        match self {
            Outgoing::Plain(frame) => frame.encoded_len(),
            Outgoing::Ext(frame) => frame.encoded_len(),
        }
    }

    fn encode_into(&self, out: &mut bytes::BytesMut) {
        match self {
            Outgoing::Plain(frame) => frame.encode_into(out),
            Outgoing::Ext(frame) => frame.encode_into(out),
        }
    }
}

/// Where a `/to` or `/msg` goes once looked up.
enum Dest {
    Id(Target),
    /// Someone else's name, from a named session, online as far as this
    /// chat knows at `Target`: TELL, which the server sends there if the
    /// name is still online and keeps waiting if it has left since.
    Named(Target, String),
    /// A name not online as far as this chat knows: TELL.
    Away(String),
}

/// How long the chat waits for the server's rooms to name a room id, or a
/// `#room` typed: the answer to ROOMS is immediate unless requests sent
/// before it are still waiting for theirs.
const ROOMS_WAIT: Duration = Duration::from_secs(5);

/// What the chat says when a room command is typed without a name.
const ROOMS_NEED_A_NAME: &str = "rooms belong to names: start evchat chat with --name NAME \
                                 (or --user NAME on a server with accounts)";

/// What the chat keeps with its books (the requests of the current session
/// awaiting OK/ERRO, and our FLW), under their lock.
#[derive(Default)]
struct State {
    /// None while reconnecting.
    session: Option<Arc<Session>>,
    leaving: bool,
    /// The server dismissed our exhibitor after our emitter left.
    dismissed: bool,
    /// Once the server has said goodbye: which halves answered its FLW (or
    /// ended), by [`Half`].
    halves_done: [bool; 2],
    /// The server's rooms, as this session was told them.
    rooms: RoomBook,
    /// The prefetch of each queue room joined with one, across sessions.
    prefetches: Prefetches,
}

impl State {
    /// Whether `session` is the one in use (not lost, not replaced).
    fn is_current(&self, session: &Session) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| std::ptr::eq(&**s, session))
    }
}

type Books = Book<Sent, State>;

struct Chat {
    target: Endpoint,
    /// Sent again on every reconnection.
    hello: Hello,
    /// The names behind ids, as this session's exhibitor was told them.
    names: Mutex<Names>,
    printer: Printer,
    timestamps: bool,
    replies: Replies<Sent, State>,
    /// Set once the server's FLW is being handled, so it is reported once.
    closing: AtomicBool,
    /// Broadcasts received, oldest first (at most [`SEEN_MAX`]): a server
    /// with history replays its recent ones to a reconnected chat, and those
    /// already shown are not shown twice.
    seen: Mutex<VecDeque<(ClientId, Vec<u8>)>>,
}

/// Broadcasts remembered to recognise a replay.
const SEEN_MAX: usize = 500;

/// Adds a broadcast shown to `seen`, forgetting the oldest beyond [`SEEN_MAX`].
fn remember(seen: &mut VecDeque<(ClientId, Vec<u8>)>, origin: ClientId, text: &[u8]) {
    if seen.len() == SEEN_MAX {
        seen.pop_front();
    }
    seen.push_back((origin, text.to_vec()));
}

/// A MSG the exhibitor received, whether it is our own coming back (judged
/// when it arrived, while its request was still pending) and how its
/// sender is shown (the name it had then).
struct Received {
    frame: Frame,
    own: bool,
    from: String,
    /// A broadcast the server replayed from its history: sent before we
    /// came, at a time it does not say.
    earlier: bool,
    /// When the server stored it, for a message that waited for our name
    /// (the WAITING before it said so), in ms since the epoch.
    waited: Option<u64>,
}

/// How many broadcasts at the start of `replayed` were seen already: the
/// largest `p` such that the replayed ones up to `p` end the way `seen` ends.
/// What reached the server while the chat was away comes after `p`; only a
/// run that repeats the last ones seen, sender and text alike, could be
/// taken for part of the replay.
fn already_seen(seen: &VecDeque<(ClientId, Vec<u8>)>, replayed: &[(ClientId, &[u8])]) -> usize {
    (1..=replayed.len())
        .rev()
        .find(|&p| {
            let n = p.min(seen.len());
            n > 0
                && replayed[p - n..p]
                    .iter()
                    .zip(seen.range(seen.len() - n..))
                    .all(|(&(id, text), (seen_id, seen_text))| id == *seen_id && text == seen_text)
        })
        .unwrap_or(0)
}

/// The server `evchat find` finds on the LAN: the one that answers, or the
/// one chosen from a list on standard input when several do.
fn discovered_server() -> Result<String, String> {
    use crate::find::{DEFAULT_PORT, DEFAULT_WAIT, find, nothing_found};
    let found = find(DEFAULT_PORT, DEFAULT_WAIT).map_err(|e| format!("finding a server: {e}"))?;
    match &found[..] {
        [] => Err(format!(
            "{}; give HOST:PORT",
            nothing_found(DEFAULT_PORT, DEFAULT_WAIT).trim_start_matches("evchat find: ")
        )),
        [one] => {
            eprintln!("evchat chat: joining {}", one.line());
            Ok(one.endpoint())
        }
        several => {
            eprintln!("evchat chat: {} servers answered:", several.len());
            for (n, server) in several.iter().enumerate() {
                eprintln!("  {}  {}", n + 1, server.line());
            }
            eprint!("which one (1-{})? ", several.len());
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("reading the choice: {e}"))?;
            let chosen = line
                .trim()
                .parse::<usize>()
                .ok()
                .and_then(|n| several.get(n.checked_sub(1)?))
                .ok_or_else(|| {
                    format!(
                        "'{}' is not a number from 1 to {}",
                        line.trim(),
                        several.len()
                    )
                })?;
            Ok(chosen.endpoint())
        }
    }
}

/// The chat, once it runs: Ctrl-C leaves it. Before (at the password
/// prompt, while connecting) Ctrl-C exits at once, echo on again.
static RUNNING: OnceLock<Arc<Chat>> = OnceLock::new();

pub fn run(args: ChatArgs) -> ExitCode {
    if let Err(e) = ctrlc::set_handler(|| match RUNNING.get() {
        Some(chat) => chat.leave(),
        None => {
            eprintln!();
            exit_process(130)
        }
    }) {
        eprintln!("evchat chat: cannot install the signal handler: {e}");
    }
    let hello = match opening_hello(&args) {
        Ok(hello) => hello,
        Err(message) => {
            eprintln!("evchat chat: {message}");
            return ExitCode::from(2);
        }
    };
    let server = match args.server.clone().map_or_else(discovered_server, Ok) {
        Ok(server) => server,
        Err(message) => {
            eprintln!("evchat chat: {message}");
            return ExitCode::FAILURE;
        }
    };
    let target = match Endpoint::parse(&server, &args.tls) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("evchat chat: {e}");
            return ExitCode::from(if e.is_usage() { 2 } else { 1 });
        }
    };
    let (session, readers) = match connect_pair(&target, &hello) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("evchat chat: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Each line comes back in its own form (with its mark) once sent.
    let mut input = LineInput::stdin(Entered::Erased);
    let terminal = input.is_terminal();
    let chat = Arc::new(Chat {
        target,
        hello,
        names: Mutex::new(Names::default()),
        printer: input.printer(),
        timestamps: match args.timestamps {
            When::Auto => terminal,
            When::Always => true,
            When::Never => false,
        },
        replies: Replies::new(State::default()),
        closing: AtomicBool::new(false),
        seen: Mutex::new(VecDeque::new()),
    });
    let _ = RUNNING.set(chat.clone());
    chat.start_session(session, readers, false);
    if terminal {
        chat.say("type a message and press Enter; /help lists the commands");
    }
    chat.read_input(&mut input);
    chat.finish(args.wait)
}

/// The HELLO the options ask for: an account and its secret (from
/// `--token-file`, `$EVCHAT_TOKEN` or a prompt, in that order), a name to
/// claim, or only opting in. An error is a usage error.
fn opening_hello(args: &ChatArgs) -> Result<Hello, String> {
    if let Some(name) = &args.name {
        return Ok(Hello::Claim(name.clone()));
    }
    let Some(account) = &args.user else {
        return Ok(Hello::OptIn);
    };
    let secret = if let Some(path) = &args.token_file {
        secret_from_file(path).map_err(|e| format!("--token-file {e}"))?
    } else if let Some(token) = secret_from_env(TOKEN_VAR).map_err(|e| e.to_string())? {
        token
    } else if std::io::stdin().is_terminal() {
        ask_password(account)?
    } else {
        return Err(format!(
            "--user {account} needs its password typed at a terminal, or a token in \
             ${TOKEN_VAR} or --token-file FILE"
        ));
    };
    Ok(Hello::SignIn {
        account: account.clone(),
        secret,
    })
}

/// The password, typed without echo. An empty one is refused here: sent,
/// it would read as no secret at all.
fn ask_password(account: &Name) -> Result<Credential, String> {
    let password = ask_secret(&format!("Password for {account}: "))
        .map_err(|e| format!("reading the password: {e}"))?;
    if password.as_bytes().is_empty() {
        return Err("no password typed; nothing sent".to_string());
    }
    Ok(password)
}

/// Registers an exhibitor, then an emitter paired with it, each after its
/// HELLO. A server that answers HELLO as an unknown frame gets the plain
/// protocol instead, unless a name or an account was asked for. Both
/// HELLOs come before either OI: a server with history replays it at the
/// exhibitor's OI, the CREQ sent right after the emitter's OI marks the
/// replay's end, and nothing slow (a TLS handshake, a password's hash)
/// lies between, where a live broadcast would be taken for the replay.
fn connect_pair(
    addr: &Endpoint,
    hello: &Hello,
) -> Result<(Session, (FrameReader, FrameReader)), RegisterError> {
    let (exhibitor, opted_in) = match open_with(addr, Some(hello), true) {
        Ok(exhibitor) => (exhibitor, true),
        Err(RegisterError::NoIdentity { .. }) if matches!(hello, Hello::OptIn) => {
            (open_with(addr, None, true)?, false)
        }
        Err(e) => return Err(e),
    };
    let emitter_hello = hello.for_paired_emitter();
    let emitter = match open_with(addr, opted_in.then_some(&emitter_hello), false) {
        Ok(emitter) => emitter,
        Err(e) => {
            exhibitor.shutdown();
            return Err(e);
        }
    };
    let exhibitor = match exhibitor.identify(BROADCAST) {
        Ok(exhibitor) => exhibitor,
        Err(e) => {
            emitter.shutdown();
            return Err(e);
        }
    };
    let emitter = match emitter.identify(exhibitor.id) {
        Ok(emitter) => emitter,
        Err(e) => {
            exhibitor.writer.shutdown();
            return Err(e);
        }
    };
    let Registered {
        id,
        writer,
        reader,
        welcome,
        ..
    } = exhibitor;
    let session = Session {
        emitter: emitter.id,
        exhibitor: id,
        name: welcome.and_then(|w| w.name),
        opted_in,
        to_server: emitter.writer,
        acks: writer,
    };
    Ok((session, (emitter.reader, reader)))
}

/// `HH:MM:SS ` in local time.
fn local_time() -> String {
    // SAFETY: time(NULL) has no preconditions.
    local_time_of(unsafe { libc::time(std::ptr::null_mut()) })
}

/// `HH:MM:SS ` of `when` (seconds since the epoch) in local time.
fn local_time_of(when: libc::time_t) -> String {
    // SAFETY: localtime_r writes only the struct passed and reports
    // failure by returning null.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&when, &mut tm).is_null() {
            return String::new();
        }
        format!("{:02}:{:02}:{:02} ", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

/// `base` give or take a fifth, so that clients cut off together do not
/// all come back in the same instant.
fn jittered(base: Duration) -> Duration {
    let random = RandomState::new().hash_one(std::time::SystemTime::now());
    // A factor from 0.8 to 1.2.
    let factor = 0.8 + (random % 4001) as f64 / 10_000.0;
    base.mul_f64(factor)
}

/// Whether `text` fits in a TELL to `name`: its L holds the name too.
fn tell_room(name: &str, text: &[u8]) -> Result<(), String> {
    let most = MAX_TELL_BODY - 1 - name.len();
    if text.len() > most {
        return Err(format!(
            "text is {} bytes; a message to {name}, who is not online here, carries at most {most}",
            text.len()
        ));
    }
    Ok(())
}

/// The mark a TELL's ROOMACK puts after the message (PROTOCOL.md,
/// "Waiting messages").
fn tell_answer(name: &str, code: u8) -> String {
    match code {
        c if c == RoomCode::Stored as u8 => format!("⏳ stored for {name}"),
        1 => format!("✗ not delivered: '{name}' is not a name"),
        10 => format!("✗ not delivered: no one named {name} is known to the server"),
        11 => format!("✗ not stored: {name} has as many messages waiting as the server allows"),
        code => format!("✗ not delivered (ROOMACK code {code})"),
    }
}

impl Chat {
    fn lock(&self) -> MutexGuard<'_, Books> {
        self.replies.lock()
    }

    /// Prints a line; if nobody can read the output any more, leaves.
    fn say(self: &Arc<Self>, line: &str) {
        if self.printer.line(line).is_err() {
            let chat = self.clone();
            std::thread::spawn(move || chat.leave());
        }
    }

    fn names(&self) -> MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How an id is shown: its name when known, else its number; a room's
    /// id as `#name`.
    fn label(&self, id: ClientId) -> String {
        if is_room_id(id) {
            return self.lock().client.rooms.label(id);
        }
        self.names().label(id)
    }

    /// The id a `/to` or `/msg` means: a name is looked up among those this
    /// session was told (our own ids last); a room among the rooms known,
    /// asking the server for them when it is not.
    fn resolve(self: &Arc<Self>, addressee: Addressee) -> Result<Dest, String> {
        match addressee {
            Addressee::Id(target) => Ok(Dest::Id(target)),
            // The chat turns the current target into one of the others
            // before looking it up.
            Addressee::Current => Err("no current target".to_string()),
            Addressee::Room(room) => {
                self.needs_a_name()?;
                if let Some(id) = self.lock().client.rooms.find(&room) {
                    return Ok(Dest::Id(Target(id)));
                }
                let Some(seq) = self.send(0, Sent::Rooms { shown: false }) else {
                    return Err(format!("not connected (reconnecting to {})", self.target));
                };
                let (state, _) = self.replies.wait_until(ROOMS_WAIT, |state| {
                    state.get(seq).is_none() || state.client.session.is_none()
                });
                state
                    .client
                    .rooms
                    .find(&room)
                    .map(|id| Dest::Id(Target(id)))
                    .ok_or_else(|| {
                        format!(
                            "no room '#{}' exists; /join #{0} creates it, /rooms lists them",
                            escape_text(room.as_bytes())
                        )
                    })
            }
            Addressee::Name(name) => {
                let (own, named, ours) = {
                    let state = self.lock();
                    let session = state.client.session.as_ref();
                    let own = session.map_or(Vec::new(), |s| vec![s.emitter, s.exhibitor]);
                    let own_name = session.and_then(|s| s.name.as_deref());
                    let ours = own_name.is_some_and(|n| n.eq_ignore_ascii_case(&name));
                    (own, own_name.is_some(), ours)
                };
                let names = self.names();
                match names.resolve(&name, &own) {
                    // Ids are told when someone speaks and forgotten only
                    // by a CLIST, so the id may be gone: the server, which
                    // knows, finds the name (spelt as it told it). Not our
                    // own name: a TELL to it would reach us too.
                    Ok(id) if named && !ours => {
                        let spelt = names.name(id).map_or(name, str::to_string);
                        Ok(Dest::Named(Target(id), spelt))
                    }
                    Ok(id) => Ok(Dest::Id(Target(id))),
                    // Not online here: a named session may leave a message
                    // waiting (TELL); the server says whether it knows the
                    // name.
                    Err(NameLookupError::Unknown(_)) if named => Ok(Dest::Away(name)),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// Rooms are the extension's, and membership belongs to a name: room
    /// commands need a session that has one.
    fn needs_a_name(&self) -> Result<(), String> {
        let named = self
            .lock()
            .client
            .session
            .as_ref()
            .is_some_and(|s| s.name.is_some());
        if named {
            Ok(())
        } else {
            Err(ROOMS_NEED_A_NAME.to_string())
        }
    }

    /// A chat line (message or client list), with the time when shown.
    fn say_chat(self: &Arc<Self>, line: &str) {
        if self.timestamps {
            self.say(&format!("{}{line}", local_time()));
        } else {
            self.say(line);
        }
    }

    /// Installs a registration, announces it and starts its two readers.
    fn start_session(
        self: &Arc<Self>,
        session: Session,
        (emitter_reader, exhibitor_reader): (FrameReader, FrameReader),
        again: bool,
    ) {
        let session = {
            let mut state = self.lock();
            // Requests of a session given up: their loss was reported.
            state.take_pending();
            let session = Arc::new(session);
            state.client.session = Some(session.clone());
            // Rooms may be numbered anew by another server run.
            state.client.rooms.clear();
            session
        };
        // A new exhibitor is told every name afresh.
        self.names().clear();
        let ids = format!(
            "you are {}{} (emitter) / {} (exhibitor)",
            session
                .name
                .as_ref()
                .map_or(String::new(), |n| format!("{n}, ")),
            session.emitter,
            session.exhibitor
        );
        // Asked before the readers start and before the user is told: what
        // the user sends after the line below reaches the server after our
        // CREQ, so it is not taken for part of the replay.
        if session.name.is_some() {
            // The names of the rooms this name is in: their messages may
            // come before any JOIN of ours (a member back from away is sent
            // what it missed). The first request, so nothing delays its
            // answer while our exhibitor waits for it.
            self.send(0, Sent::Rooms { shown: false });
        }
        if again && session.name.is_some() {
            // The server kept the memberships (or not), never a prefetch:
            // each queue joined with one is joined with it again, so a
            // worker keeps taking several at a time (PROTOCOL.md,
            // "Prefetch"). Its answer is shown as any JOIN's.
            let joins = self.lock().client.prefetches.joins();
            for (typed, prefetch) in joins {
                let request = RoomRequest::Join {
                    queue: true,
                    prefetch: Some(prefetch),
                };
                self.send(0, Sent::Room { request, typed });
            }
        }
        if again || session.opted_in {
            // Its CLIST reaches our exhibitor after whatever the server
            // replayed to it: the end of the replay (see read_received).
            self.send(
                0,
                Sent::List {
                    dest: Target(session.emitter),
                    shown: again,
                },
            );
        }
        self.say(&if again {
            format!("reconnected: {ids}")
        } else {
            ids
        });
        {
            let chat = self.clone();
            let session = session.clone();
            std::thread::spawn(move || chat.read_replies(session, emitter_reader));
        }
        let chat = self.clone();
        std::thread::spawn(move || chat.read_received(session, exhibitor_reader, again));
    }

    /// Input until its end: Ctrl-C, `/quit` and `(FLW)` leave at once.
    fn read_input(self: &Arc<Self>, input: &mut LineInput) {
        let mut target = Target::ALL;
        // When talking to a room, its name: its id is looked up at each
        // line, as a server restarted may have given it another.
        let mut target_room: Option<String> = None;
        // When talking to a name from a named session, online or not: its
        // messages go as TELL, looked up again at each line.
        let mut target_away: Option<String> = None;
        let mut number = 0u64;
        loop {
            number += 1;
            let prompt = if input.is_terminal() {
                match (&target_room, &target_away) {
                    (Some(room), _) => format!("#{}> ", escape_text(room.as_bytes())),
                    (_, Some(name)) if self.names().resolve(name, &[]).is_ok() => {
                        format!("{name}> ")
                    }
                    (_, Some(name)) => format!("{name} (away)> "),
                    _ => format!("{}> ", self.label(target.0)),
                }
            } else {
                String::new()
            };
            let line = match input.read(&prompt) {
                Ok(InputLine::Line(line)) => line,
                Ok(InputLine::TooLong(len)) => {
                    self.reject(
                        number,
                        &format!("line is {len} bytes; a message carries at most 65535"),
                    );
                    continue;
                }
                Ok(InputLine::End) => return,
                Ok(InputLine::Interrupted) => self.leave(),
                Err(e) => {
                    self.printer
                        .error(&format!("evchat chat: reading input: {e}"));
                    return;
                }
            };
            match parse_chat_line(&line) {
                Ok(ChatLine::Send { dest, text }) => {
                    let dest = match (dest, &target_room, &target_away) {
                        (Addressee::Current, Some(room), _) => Addressee::Room(room.clone()),
                        (Addressee::Current, _, Some(name)) => Addressee::Name(name.clone()),
                        (Addressee::Current, _, _) => Addressee::Id(target),
                        (dest, _, _) => dest,
                    };
                    match self.resolve(dest) {
                        Ok(Dest::Id(dest)) => {
                            self.send(number, Sent::Message { dest, text });
                        }
                        Ok(Dest::Away(name) | Dest::Named(_, name)) => {
                            match tell_room(&name, &text) {
                                Ok(()) => {
                                    self.send(number, Sent::Tell { name, text });
                                }
                                Err(e) => self.reject(number, &e),
                            }
                        }
                        Err(e) => self.reject(number, &e),
                    }
                }
                Ok(ChatLine::ListHere) => {
                    let own = self.lock().client.session.as_ref().map(|s| s.emitter);
                    // CREQ to our own emitter id reaches our own exhibitor.
                    let dest = Target(own.unwrap_or(BROADCAST));
                    self.send(number, Sent::List { dest, shown: true });
                }
                Ok(ChatLine::ListTo(dest)) => {
                    self.send(number, Sent::List { dest, shown: true });
                }
                Ok(ChatLine::SetTarget(new)) => {
                    let room = match &new {
                        Addressee::Room(room) => Some(room.clone()),
                        _ => None,
                    };
                    match self.resolve(new) {
                        Ok(Dest::Away(name)) => {
                            // Messages to it go as TELL until it is online.
                            target = Target::ALL;
                            target_room = None;
                            self.say(&format!(
                                "now talking to {name}, who is not online here: the server \
                                 keeps messages for them if it runs with --history"
                            ));
                            target_away = Some(name);
                        }
                        Ok(Dest::Named(new, name)) => {
                            target = new;
                            target_room = None;
                            self.say(&format!("now talking to {name} ({})", new.0));
                            target_away = Some(name);
                        }
                        Ok(Dest::Id(new)) => {
                            target = new;
                            target_room = room;
                            target_away = None;
                            let name = self.names().name(target.0).map(str::to_string);
                            let shown = match name {
                                Some(name) => format!("{name} ({})", target.0),
                                None => self.label(target.0),
                            };
                            self.say(&format!("now talking to {shown}"));
                        }
                        Err(e) => self.reject(number, &e),
                    }
                }
                Ok(ChatLine::Join {
                    room,
                    queue,
                    prefetch,
                }) => {
                    let request = RoomRequest::Join { queue, prefetch };
                    self.send_room(number, request, room);
                }
                Ok(ChatLine::LeaveRoom(room)) => {
                    self.send_room(number, RoomRequest::Leave, room);
                }
                Ok(ChatLine::Rooms) => match self.needs_a_name() {
                    Ok(()) => {
                        self.send(number, Sent::Rooms { shown: true });
                    }
                    Err(e) => self.reject(number, &e),
                },
                Ok(ChatLine::Help) => HELP.iter().for_each(|line| self.say(line)),
                Ok(ChatLine::Quit) => self.leave(),
                Ok(ChatLine::Nothing) => {}
                Err(e) => self.reject(number, &e.to_string()),
            }
        }
    }

    /// JOIN or LEAVE, for a session with a name.
    fn send_room(self: &Arc<Self>, number: u64, request: RoomRequest, typed: String) {
        match self.needs_a_name() {
            Ok(()) => {
                self.send(number, Sent::Room { request, typed });
            }
            Err(e) => self.reject(number, &e),
        }
    }

    fn reject(&self, number: u64, reason: &str) {
        // On a terminal the refusal shows right above the line just typed,
        // whose number the user never saw; piped input keeps it, for scripts.
        if self.printer.has_screen() {
            self.printer.error(&format!("{reason}; nothing sent"));
        } else {
            self.printer.error(&format!(
                "evchat chat: line {number}: {reason}; nothing sent"
            ));
        }
    }

    /// Sends a message, CREQ or room request through the current session;
    /// the number it was sent with. `number` is the input line's; 0 is a
    /// request of the chat's own (ROOMS and CREQ on registering, ROOMS to
    /// look a room up), of which no line is said when there is no session:
    /// the loss is being reported, and a caller says what it could not do.
    fn send(self: &Arc<Self>, number: u64, what: Sent) -> Option<u16> {
        let Some(session) = self.lock().client.session.clone() else {
            if number != 0 {
                self.reject(
                    number,
                    &format!("not connected (reconnecting to {})", self.target),
                );
            }
            return None;
        };
        let id = session.emitter;
        let frame = match &what {
            Sent::Message { dest, text } => Outgoing::Plain(
                Frame::msg(id, dest.0, 0, text.clone()).expect("the parser bounds the text"),
            ),
            Sent::List { dest, .. } => Outgoing::Plain(Frame::bare(Kind::Creq, id, dest.0, 0)),
            Sent::Room { request, typed } => {
                let name = typed.as_bytes().to_vec();
                Outgoing::Ext(match *request {
                    RoomRequest::Join { queue, prefetch } => ExtFrame::Join(Join {
                        origin: id,
                        dest: SERVER_ID,
                        seq: 0,
                        flags: if queue { FLAG_QUEUE } else { 0 },
                        name,
                        prefetch,
                    }),
                    RoomRequest::Leave => ExtFrame::Leave(Leave {
                        origin: id,
                        dest: SERVER_ID,
                        seq: 0,
                        name,
                    }),
                })
            }
            Sent::Tell { name, text } => Outgoing::Ext(ExtFrame::Tell(Tell {
                origin: id,
                dest: SERVER_ID,
                seq: 0,
                name: name.as_bytes().to_vec(),
                text: text.clone().into(),
            })),
            Sent::Rooms { .. } => Outgoing::Ext(ExtFrame::Rooms(Header {
                kind: evchat::proto::ext::ROOMS,
                origin: id,
                dest: SERVER_ID,
                seq: 0,
            })),
        };
        let mut what = Some(what);
        let mut noted = None;
        let sent = session.to_server.send_numbered(
            |seq| frame.numbered(seq),
            |seq| {
                let mut state = self.lock();
                if state.client.is_current(&session) {
                    state.expect(seq, what.take().expect("noted once"));
                    noted = Some(seq);
                }
            },
        );
        if let Ok(seq) = sent {
            return noted.and(Some(seq));
        }
        // The connection broke under the write. Unless the loss was already
        // reported with this request in it, report it here.
        if let Some(seq) = noted {
            let mut state = self.lock();
            if state.client.is_current(&session) {
                what = state.forget(seq);
            }
        }
        if let Some(sent) = what {
            self.report_lost(sent);
        }
        None
    }

    /// Says what became of a request whose connection was lost.
    fn report_lost(self: &Arc<Self>, sent: Sent) {
        match sent {
            Sent::Message { dest, text } => self.say_chat(&format!(
                "you to {}: {} ✗ not delivered (connection lost)",
                self.label(dest.0),
                escape_text(&text)
            )),
            Sent::Tell { name, text } => self.say_chat(&format!(
                "you to {name}: {} ✗ not delivered (connection lost)",
                escape_text(&text)
            )),
            Sent::Room { request, typed } => {
                let command = match request {
                    RoomRequest::Join { .. } => "/join",
                    RoomRequest::Leave => "/leave",
                };
                self.say_chat(&format!(
                    "{command} #{}: no answer (connection lost)",
                    escape_text(typed.as_bytes())
                ))
            }
            Sent::List { .. } | Sent::Rooms { .. } => {}
        }
    }

    /// Replies to what the emitter sent; the server's FLW.
    fn read_replies(self: Arc<Self>, session: Arc<Session>, mut reader: FrameReader) {
        loop {
            let frame = match reader.read_incoming() {
                Ok(Some(Incoming::Plain(frame))) => frame,
                Ok(Some(Incoming::Ext(ExtFrame::RoomAck(ack)))) => {
                    self.settled(&session, ack.seq, Reply::RoomAck(ack));
                    continue;
                }
                Ok(Some(Incoming::Ext(ExtFrame::RoomList(list)))) => {
                    self.settled(&session, list.seq, Reply::RoomList(list));
                    continue;
                }
                Ok(Some(Incoming::Ext(other))) => {
                    self.printer
                        .error(&format!("evchat chat: ignoring unexpected {other}"));
                    continue;
                }
                Ok(None) | Err(_) => return self.lost(&session, Half::Emitter),
            };
            match frame.kind {
                Kind::Ok => self.settled(&session, frame.seq, Reply::Ok),
                Kind::Erro => self.settled(&session, frame.seq, Reply::Erro),
                Kind::Flw => {
                    let _ = session.to_server.send_ack(
                        Kind::Ok,
                        session.emitter,
                        frame.origin,
                        frame.seq,
                    );
                    self.server_closed(Half::Emitter);
                }
                _ => self
                    .printer
                    .error(&format!("evchat chat: ignoring unexpected {frame}")),
            }
        }
    }

    /// Whether `frame` is one of our own pending messages coming back.
    fn is_own_echo(&self, session: &Session, frame: &Frame) -> bool {
        frame.origin == session.emitter
            && matches!(self.lock().get(frame.seq), Some(Sent::Message { .. }))
    }

    /// What the exhibitor receives: shown, then acknowledged. After a
    /// reconnection (`again`), messages are acknowledged as they come but
    /// held until the CLIST answering the CREQ sent on registering, which
    /// the server queues after its replay; then the start of the replay
    /// already shown is dropped. Broadcasts before that CLIST (sent on a
    /// first registration too, to a server that took our HELLO) are the
    /// replay, and shown as such; the first registration's CLIST is not
    /// shown, as nobody typed /list.
    fn read_received(self: Arc<Self>, session: Arc<Session>, mut reader: FrameReader, again: bool) {
        let mut held = again.then(Vec::new);
        let mut replaying = again || session.opted_in;
        // Set by WAITING: the next MSG waited for our name, stored then.
        let mut waited = None;
        loop {
            let frame = match reader.read_incoming() {
                Ok(Some(Incoming::Plain(frame))) => frame,
                Ok(Some(Incoming::Ext(ExtFrame::Who(who)))) => {
                    // Told before the MSG or CLIST that carries the id;
                    // after WAITING, the teller as they were when the
                    // message was stored, not who holds the id now.
                    if waited.is_some() {
                        self.names().learn_past(&who);
                    } else {
                        self.names().learn(&who);
                    }
                    if session
                        .acks
                        .send_ack(Kind::Ok, session.exhibitor, SERVER_ID, who.seq)
                        .is_err()
                    {
                        self.release(held.take());
                        return self.lost(&session, Half::Exhibitor);
                    }
                    continue;
                }
                Ok(Some(Incoming::Ext(ExtFrame::Waiting(waiting)))) => {
                    // Acknowledged like a CLIST; it marks the MSG after it.
                    waited = Some(waiting.time_ms);
                    if session
                        .acks
                        .send_ack(Kind::Ok, session.exhibitor, waiting.origin, waiting.seq)
                        .is_err()
                    {
                        self.release(held.take());
                        return self.lost(&session, Half::Exhibitor);
                    }
                    continue;
                }
                Ok(Some(Incoming::Ext(other))) => {
                    self.printer
                        .error(&format!("evchat chat: ignoring unexpected {other}"));
                    continue;
                }
                Ok(None) | Err(_) => {
                    self.release(held.take());
                    return self.lost(&session, Half::Exhibitor);
                }
            };
            match (&frame.kind, &frame.body) {
                (Kind::Msg, Body::Text(_)) => {
                    // Our own broadcasts come back here: they are shown once,
                    // with their mark, when their reply comes. Only a request
                    // still awaiting its reply is ours: the same id may have
                    // belonged to someone else, whose messages a server with
                    // history replays to us.
                    let own = self.is_own_echo(&session, &frame);
                    let waited = waited.take();
                    let earlier = replaying && frame.dest == BROADCAST && waited.is_none();
                    let mut from = self.label(frame.origin);
                    if earlier
                        && session
                            .name
                            .as_ref()
                            .is_some_and(|name| name.eq_ignore_ascii_case(&from))
                    {
                        // Ours, from an earlier session under our name.
                        from = "you".to_string();
                    }
                    let received = Received {
                        from,
                        frame: frame.clone(),
                        own,
                        earlier,
                        waited,
                    };
                    match held.as_mut() {
                        Some(held) => held.push(received),
                        None => self.show(&received),
                    }
                }
                (Kind::Clist, Body::Clients(ids)) => {
                    // WAITING marks a MSG only.
                    waited = None;
                    // The list asked on registering ends the replay.
                    let replay_end = std::mem::take(&mut replaying);
                    let asked_on_registering = replay_end && !again;
                    self.release(held.take());
                    let mut line = format!("clients ({}):", ids.len());
                    {
                        let mut names = self.names();
                        let mut listed = ids.clone();
                        listed.sort_unstable();
                        // Not at the replay's end: the server counts the
                        // names it told with the replay as known to us, and
                        // does not tell them again when their ids come back.
                        if !replay_end {
                            names.keep_only(&listed);
                        }
                        for &id in ids {
                            line.push(' ');
                            line.push_str(&names.listed(id));
                        }
                    }
                    if !asked_on_registering {
                        self.say_chat(&line);
                    }
                }
                (Kind::Flw, _) => {
                    self.release(held.take());
                    let _ =
                        session
                            .acks
                            .send_ack(Kind::Ok, session.exhibitor, frame.origin, frame.seq);
                    let leaving = self.replies.update(|state| {
                        state.client.dismissed = state.client.leaving;
                        state.client.leaving
                    });
                    if leaving {
                        return;
                    }
                    self.server_closed(Half::Exhibitor);
                }
                (Kind::Ok | Kind::Erro, _) => continue,
                _ => {
                    self.printer
                        .error(&format!("evchat chat: ignoring unexpected {frame}"));
                    continue;
                }
            }
            if frame.kind != Kind::Flw
                && session
                    .acks
                    .send_ack(Kind::Ok, session.exhibitor, frame.origin, frame.seq)
                    .is_err()
            {
                self.release(held.take());
                return self.lost(&session, Half::Exhibitor);
            }
        }
    }

    /// Shows a received MSG (unless it is our own coming back) and
    /// remembers a broadcast.
    fn show(self: &Arc<Self>, received: &Received) {
        let frame = &received.frame;
        let text = frame.text().map_or(&[][..], |text| &text[..]);
        if frame.dest == BROADCAST {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            remember(&mut seen, frame.origin, text);
        }
        if received.own {
            return;
        }
        if received.earlier {
            // The replay does not say when it was sent: no time is shown.
            let line = format!("{} to all (earlier): {}", received.from, escape_text(text));
            return if self.timestamps {
                self.say(&format!("--:--:-- {line}"))
            } else {
                self.say(&line)
            };
        }
        if let Some(stored_ms) = received.waited {
            let line = format!(
                "{} (while you were away): {}",
                received.from,
                escape_text(text)
            );
            return if self.timestamps {
                let stored = (stored_ms / 1000).min(libc::time_t::MAX as u64) as libc::time_t;
                self.say(&format!("{}{line}", local_time_of(stored)))
            } else {
                self.say(&line)
            };
        }
        if is_room_id(frame.dest) {
            let room = self.room_label(frame.dest);
            return self.say_chat(&format!(
                "{} in {room}: {}",
                received.from,
                escape_text(text)
            ));
        }
        let to = if frame.dest == BROADCAST {
            "all"
        } else {
            "you"
        };
        self.say_chat(&format!("{} to {to}: {}", received.from, escape_text(text)));
    }

    /// A room's `#name` for a message received in it. Until the session's
    /// first ROOMLIST (asked for on registering) has come, a room not known
    /// yet is waited for, briefly: a member back from away is sent its
    /// rooms' messages before its emitter is even registered.
    fn room_label(&self, room: ClientId) -> String {
        let (state, _) = self.replies.wait_until(ROOMS_WAIT, |state| {
            let rooms = &state.client.rooms;
            let asked = state
                .client
                .session
                .as_ref()
                .is_some_and(|s| s.name.is_some());
            !asked || rooms.listed || rooms.knows(room)
        });
        state.client.rooms.label(room)
    }

    /// Shows what a reconnected exhibitor held, less the start of the
    /// replay shown before. Unicasts are never replayed.
    fn release(self: &Arc<Self>, held: Option<Vec<Received>>) {
        let Some(held) = held else { return };
        let broadcasts: Vec<(ClientId, &[u8])> = held
            .iter()
            .filter(|r| r.frame.dest == BROADCAST)
            .map(|r| (r.frame.origin, r.frame.text().map_or(&[][..], |t| &t[..])))
            .collect();
        let mut skip = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            already_seen(&seen, &broadcasts)
        };
        for received in &held {
            if received.frame.dest == BROADCAST && skip > 0 {
                skip -= 1;
            } else {
                self.show(received);
            }
        }
    }

    /// A reply to the request numbered `seq`: shown, and what it says of
    /// the rooms noted (in the same update, for whoever waits on it).
    fn settled(self: &Arc<Self>, session: &Session, seq: u16, reply: Reply) {
        // A reply to a session given up is ignored: its loss was reported.
        let settled = self.replies.update(|state| {
            if !state.client.is_current(session) {
                return None;
            }
            let settled = state.settle(seq);
            if let Settled::Request(sent) = &settled {
                match (sent, &reply) {
                    (Sent::Room { request, typed }, Reply::RoomAck(ack)) => {
                        state.client.rooms.learn(ack);
                        state.client.prefetches.note(*request, typed, ack);
                    }
                    (Sent::Rooms { .. }, Reply::RoomList(list)) => {
                        state.client.rooms.replace(&list.rooms)
                    }
                    _ => {}
                }
            }
            Some(settled)
        });
        let sent = match settled {
            Some(Settled::Request(sent)) => sent,
            Some(Settled::Farewell) | None => return,
            Some(Settled::Unknown) => {
                return self
                    .printer
                    .error(&format!("evchat chat: reply for unknown request #{seq}"));
            }
        };
        let ok = matches!(reply, Reply::Ok);
        let mark = if ok { "✓" } else { "✗ not delivered" };
        match (sent, reply) {
            (Sent::Message { dest, text }, Reply::Ok | Reply::Erro) => self.say_chat(&format!(
                "you to {}: {} {mark}",
                self.label(dest.0),
                escape_text(&text)
            )),
            // Our own list shows itself when it comes.
            (Sent::List { dest, .. }, Reply::Ok) if dest.0 == session.emitter => {}
            (Sent::List { shown: false, .. }, _) => {}
            (Sent::List { dest, .. }, Reply::Ok | Reply::Erro) if dest.0 == session.emitter => {
                self.say_chat(&format!("client list {mark}"))
            }
            (Sent::List { dest, .. }, Reply::Ok | Reply::Erro) => {
                self.say_chat(&format!("client list to {} {mark}", self.label(dest.0)))
            }
            (Sent::Tell { name, text }, reply) => {
                let said = match reply {
                    Reply::Ok => "✓".to_string(),
                    Reply::RoomAck(ack) => tell_answer(&name, ack.code),
                    // ERRO: the name is offline and the server stores nothing
                    // (no --history), or its session left before showing it
                    // (PROTOCOL.md, "Waiting messages").
                    Reply::Erro => format!(
                        "✗ not delivered: {name} is not online (a server keeps messages \
                         for later only with --history)"
                    ),
                    Reply::RoomList(_) => "✗ not delivered".to_string(),
                };
                self.say_chat(&format!("you to {name}: {} {said}", escape_text(&text)))
            }
            (Sent::Room { request, typed }, Reply::RoomAck(ack)) => {
                self.say_chat(&room_answer(request, &typed, &ack))
            }
            (Sent::Rooms { shown }, Reply::RoomList(list)) => {
                if shown {
                    self.say_chat(&room_list_line(&list.rooms));
                }
            }
            // The server refused the request as a frame (an exhibitor's, or
            // a server that has no rooms): said, not taken for an answer.
            (Sent::Room { request, typed }, Reply::Erro) => {
                let command = match request {
                    RoomRequest::Join { .. } => "/join",
                    RoomRequest::Leave => "/leave",
                };
                self.say_chat(&format!(
                    "{command} #{}: refused by the server (ERRO)",
                    escape_text(typed.as_bytes())
                ))
            }
            (Sent::Rooms { shown: true }, Reply::Erro) => {
                self.say_chat("/rooms: refused by the server (ERRO)")
            }
            (Sent::Rooms { shown: false }, Reply::Erro) => {}
            (_, _) => self.printer.error(&format!(
                "evchat chat: a reply of the wrong kind to request #{seq}"
            )),
        }
    }

    /// The server said goodbye (FLW) to `half`, which answered: the chat is
    /// over once the other half has answered too (it gets its own FLW), or
    /// has ended, or after [`FAREWELL_TIMEOUT`].
    fn server_closed(&self, half: Half) {
        let leaving = self.replies.update(|state| {
            state.client.halves_done[half as usize] = true;
            state.client.leaving
        });
        if self.closing.swap(true, Ordering::SeqCst) || leaving {
            // The one that saw the first FLW, or the thread leaving, exits.
            return;
        }
        let _ = self.replies.wait_until(FAREWELL_TIMEOUT, |state| {
            !state.client.halves_done.contains(&false)
        });
        self.printer.exit_with("server closed the chat", false, 0);
    }

    /// A connection of `session` ended without FLW: report the messages it
    /// took with it, then reconnect in this thread. After the server's FLW
    /// the connections end as they answer it: nothing is lost then, and the
    /// other half must stay open to answer its own.
    fn lost(self: &Arc<Self>, session: &Session, half: Half) {
        let lost = self.replies.update(|state| {
            if !state.client.is_current(session) {
                return None;
            }
            if self.closing.load(Ordering::SeqCst) && !state.client.leaving {
                state.client.halves_done[half as usize] = true;
                return None;
            }
            state.client.session = None;
            session.shutdown();
            if state.client.leaving {
                // Nothing more will come; the leaving thread stops waiting.
                state.farewell_answered();
                state.client.dismissed = true;
                return None;
            }
            Some(state.take_pending())
        });
        let Some(lost) = lost else { return };
        self.say(&format!("connection to {} lost; reconnecting", self.target));
        for sent in lost {
            self.report_lost(sent);
        }
        self.reconnect();
    }

    /// Tries again after 1 s, doubling to 30 s (with jitter), until it has
    /// registered again or the user leaves.
    fn reconnect(self: &Arc<Self>) {
        let mut delay = FIRST_RETRY;
        loop {
            // Waiting between attempts is what backoff is.
            std::thread::sleep(jittered(delay));
            if self.lock().client.leaving {
                return;
            }
            match connect_pair(&self.target, &self.hello) {
                Ok((session, readers)) => return self.start_session(session, readers, true),
                // Trying again would be refused again (and spend the
                // address's sign-in budget): the chat ends.
                Err(e) if e.is_final() => {
                    self.printer
                        .exit_with(&format!("evchat chat: {e}"), true, 1)
                }
                Err(e) => {
                    delay = (delay * 2).min(LAST_RETRY);
                    self.say(&format!(
                        "reconnecting failed: {e} (next try in about {} s)",
                        delay.as_secs()
                    ));
                }
            }
        }
    }

    /// End of input: waits (at most `wait`) for the replies still owed, then
    /// leaves; exit 1 when the server is away and nothing can be sent.
    fn finish(self: &Arc<Self>, wait: Duration) -> ExitCode {
        let (state, _) = self.replies.wait_until(wait, |state| {
            state.client.session.is_none() || state.pending() == 0
        });
        if state.client.session.is_none() {
            drop(state);
            self.printer
                .exit_with("evchat chat: input ended while the server is away", true, 1);
        }
        drop(state);
        self.leave()
    }

    /// Says goodbye (FLW from the emitter; the server then dismisses our
    /// exhibitor), waits briefly for both and exits 0.
    fn leave(&self) -> ! {
        let mut state = self.lock();
        if state.client.leaving {
            // Another thread is already leaving and will exit the process.
            drop(state);
            loop {
                std::thread::park();
            }
        }
        state.client.leaving = true;
        let Some(session) = state.client.session.clone() else {
            exit_process(0);
        };
        drop(state);
        if self
            .replies
            .send_farewell(&session.to_server, session.emitter)
            .is_err()
        {
            exit_process(0);
        }
        self.replies.wait_for_farewell(|state| state.dismissed);
        exit_process(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(messages: &[(ClientId, &str)]) -> VecDeque<(ClientId, Vec<u8>)> {
        messages
            .iter()
            .map(|&(id, text)| (id, text.as_bytes().to_vec()))
            .collect()
    }

    fn replayed<'a>(messages: &[(ClientId, &'a str)]) -> Vec<(ClientId, &'a [u8])> {
        messages.iter().map(|&(id, t)| (id, t.as_bytes())).collect()
    }

    #[test]
    fn seen_keeps_the_latest_broadcasts_up_to_seen_max() {
        let mut kept = VecDeque::new();
        remember(&mut kept, 1, b"a");
        remember(&mut kept, 2, b"b");
        assert_eq!(kept, seen(&[(1, "a"), (2, "b")]));
        for n in 0..SEEN_MAX {
            remember(&mut kept, 3, n.to_string().as_bytes());
        }
        assert_eq!(kept.len(), SEEN_MAX);
        assert_eq!(kept.front(), Some(&(3, b"0".to_vec())));
        assert_eq!(
            kept.back(),
            Some(&(3, (SEEN_MAX - 1).to_string().into_bytes()))
        );
    }

    #[test]
    fn a_replay_is_matched_where_it_meets_the_end_of_what_was_seen() {
        let shown = seen(&[(1, "a"), (2, "b"), (1, "c")]);
        // Nothing seen, or nothing in common: everything is new.
        assert_eq!(already_seen(&seen(&[]), &replayed(&[(1, "a")])), 0);
        assert_eq!(already_seen(&shown, &replayed(&[(3, "x"), (3, "y")])), 0);
        // The replay starts inside what was seen; what follows is new.
        assert_eq!(
            already_seen(&shown, &replayed(&[(2, "b"), (1, "c"), (3, "new")])),
            2
        );
        // All of it seen, from further back than the replay reaches.
        assert_eq!(already_seen(&shown, &replayed(&[(1, "c")])), 1);
        // The same text from another sender is another message.
        assert_eq!(already_seen(&shown, &replayed(&[(2, "c")])), 0);
        // A replay longer than what is remembered: matched on the window.
        let recent = seen(&[(2, "b"), (1, "c")]);
        assert_eq!(
            already_seen(
                &recent,
                &replayed(&[(0, "old"), (2, "b"), (1, "c"), (3, "d")])
            ),
            3
        );
        // A seen message that recurs at the start of the replay but not up
        // to the end of what was seen is not the overlap.
        assert_eq!(already_seen(&shown, &replayed(&[(1, "c"), (2, "z")])), 1);
        assert_eq!(already_seen(&shown, &replayed(&[(1, "a"), (3, "z")])), 0);
    }
}
