//! What a line typed into `evchat chat` means: a message to the current
//! target, a `/command` (rooms' among them: `/join`, `/leave`, `/rooms`,
//! `/to #room`), or one of the emitter's own `(ID) text`, `(CREQ) ID`,
//! `(FLW)` lines. Pure parsing, no I/O: a name or `#room` typed where an id
//! may go is handed on as typed, for the chat to look up; a room's name is
//! judged by the server (ROOMACK code 1), only its length here, since a
//! JOIN or LEAVE over 64 bytes would be malformed.

use evchat::auth::Name;
use evchat::client::{Command, parse_command};
use evchat::proto::ext::{MAX_ROOM_NAME_LEN, ROOM_IDS};
use evchat::proto::{BROADCAST, ClientId, EMITTER_IDS, EXHIBITOR_IDS, MAX_TEXT_LEN};

/// Who a plain line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target(pub ClientId);

impl Target {
    pub const ALL: Target = Target(BROADCAST);
}

impl From<Target> for Addressee {
    fn from(target: Target) -> Addressee {
        Addressee::Id(target)
    }
}

/// Who a line goes to: whoever the chat talks to now (a plain line), or
/// what `/to`, `/msg` or `(ID)` names: an id (or all), a name to look up,
/// or a room (`#name`, kept without its `#`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressee {
    Current,
    Id(Target),
    Name(String),
    Room(String),
}

/// One line of chat input, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatLine {
    /// A message: a plain line, `/msg ID text` or `(ID) text`.
    Send {
        dest: Addressee,
        text: Vec<u8>,
    },
    /// `/list`: the client list, shown here.
    ListHere,
    /// `(CREQ) ID`: the client list, shown by ID.
    ListTo(Target),
    /// `/to ID`, `/to NAME`, `/to #room` or `/to all`.
    SetTarget(Addressee),
    /// `/join #room`, `/join #room --queue [--prefetch N]`: the room's
    /// name, without `#`, and the queue's prefetch (None: the JOIN carries
    /// none, so 1).
    Join {
        room: String,
        queue: bool,
        prefetch: Option<u8>,
    },
    /// `/leave #room`.
    LeaveRoom(String),
    /// `/rooms`: the server's rooms, with their kinds and member counts.
    Rooms,
    Help,
    /// `/quit` or `(FLW)`.
    Quit,
    /// Nothing typed (or only spaces): nothing to do.
    Nothing,
}

/// Why a line was not understood; nothing is sent for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    #[error("unknown command '{0}'; /help lists the commands")]
    UnknownCommand(String),
    #[error("{0} takes an id, a name, #room or 'all'")]
    NeedsTarget(&'static str),
    #[error("'{0}' is not a client's id (1-8191), a room's (16384-32767), a name, #room or 'all'")]
    BadTarget(String),
    #[error("usage: {0}")]
    RoomUsage(&'static str),
    #[error("'{0}' is not a room: rooms are written #name")]
    NotARoom(String),
    #[error("a room's name is at most 64 bytes; '#{0}…' is longer")]
    RoomTooLong(String),
    #[error("usage: /msg ID|NAME text")]
    MsgUsage,
    #[error("{0} takes nothing after it")]
    Trailing(&'static str),
    #[error("text is {0} bytes; a message carries at most 65535")]
    TooLong(usize),
    #[error("{0}")]
    Emitter(String),
}

/// The commands, for `/help`: each line within 72 columns, so that a
/// narrow terminal does not break them mid-word.
pub const HELP: &[&str] = &[
    "a line without / is a message to the current target (in the prompt)",
    "/to ID        talk to exhibitor ID, or to the one paired with emitter ID",
    "/to NAME      talk to the one with that name (any case; names come with",
    "              messages and /list); with a name of your own, to one not",
    "              online too: the server keeps it until they are back",
    "/to all       talk to everyone (where you start)",
    "/to #room     talk to a room (its members see it; you need not be one)",
    "/msg ID text  one message to ID (or NAME, or #room); the target stays",
    "/list         show who is connected, with their names",
    "/join #room   join a room, creating it if it does not exist; --queue:",
    "              a work queue; --queue --prefetch N: hold up to N of its",
    "              messages at once",
    "/leave #room  leave a room",
    "/rooms        list the rooms, their kinds and member counts",
    "/help         this list",
    "/quit         leave (Ctrl-D and Ctrl-C too)",
    "(ID) text, (CREQ) ID and (FLW) work as in the emitter;",
    "// sends a line that starts with /",
];

/// A room typed as `#name`: the name as typed (the server judges it), at
/// most [`MAX_ROOM_NAME_LEN`] bytes.
fn parse_room(word: &str) -> Result<String, ChatError> {
    let Some(name) = word.strip_prefix('#').filter(|name| !name.is_empty()) else {
        return Err(ChatError::NotARoom(word.to_string()));
    };
    if name.len() > MAX_ROOM_NAME_LEN {
        let mut cut = MAX_ROOM_NAME_LEN.min(24);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(ChatError::RoomTooLong(name[..cut].to_string()));
    }
    Ok(name.to_string())
}

fn parse_target(word: &str) -> Result<Addressee, ChatError> {
    if word.starts_with('#') {
        return parse_room(word).map(Addressee::Room);
    }
    if word.eq_ignore_ascii_case("all") {
        return Ok(Addressee::Id(Target::ALL));
    }
    // A name starts with a letter, so it is never taken for an id.
    if Name::new(word).is_ok() {
        return Ok(Addressee::Name(word.to_string()));
    }
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ChatError::BadTarget(word.to_string()));
    }
    // Only ids something can hold: a MSG to any other would only come back
    // refused.
    word.parse::<ClientId>()
        .ok()
        .filter(|&id| {
            id == BROADCAST
                || EMITTER_IDS.contains(&id)
                || EXHIBITOR_IDS.contains(&id)
                || ROOM_IDS.contains(&id)
        })
        .map(|id| Addressee::Id(Target(id)))
        .ok_or_else(|| ChatError::BadTarget(word.to_string()))
}

fn message(dest: impl Into<Addressee>, text: &[u8]) -> Result<ChatLine, ChatError> {
    let dest = dest.into();
    if text.len() > MAX_TEXT_LEN {
        return Err(ChatError::TooLong(text.len()));
    }
    Ok(ChatLine::Send {
        dest,
        text: text.to_vec(),
    })
}

/// Parses one line (without its ending); a plain line goes to
/// [`Addressee::Current`], which the chat knows.
pub fn parse_chat_line(line: &[u8]) -> Result<ChatLine, ChatError> {
    if line.trim_ascii().is_empty() {
        return Ok(ChatLine::Nothing);
    }
    if let Some(rest) = line.strip_prefix(b"//") {
        let mut text = b"/".to_vec();
        text.extend_from_slice(rest);
        return message(Addressee::Current, &text);
    }
    if line.starts_with(b"/") {
        return parse_slash(line);
    }
    if line.starts_with(b"(") {
        // The emitter's syntax when it parses as such; otherwise the line
        // is ordinary text that happens to start with a parenthesis.
        match parse_command(line) {
            Ok(Command::Message { dest, text }) => return message(Target(dest), &text),
            Ok(Command::ClientList { dest }) => return Ok(ChatLine::ListTo(Target(dest))),
            Ok(Command::Leave) => return Ok(ChatLine::Quit),
            Err(evchat::client::SyntaxError::Unrecognised) => {}
            Err(e) => return Err(ChatError::Emitter(e.to_string())),
        }
    }
    message(Addressee::Current, line)
}

fn parse_slash(line: &[u8]) -> Result<ChatLine, ChatError> {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let (word, rest) = (&line[..end], line.get(end + 1..).unwrap_or(&[]));
    let word_text = String::from_utf8_lossy(word).to_ascii_lowercase();
    let only = |name: &'static str, value: ChatLine| {
        if rest.trim_ascii().is_empty() {
            Ok(value)
        } else {
            Err(ChatError::Trailing(name))
        }
    };
    match word_text.as_str() {
        "/to" => {
            let arg = String::from_utf8_lossy(rest.trim_ascii()).into_owned();
            if arg.is_empty() {
                return Err(ChatError::NeedsTarget("/to"));
            }
            parse_target(&arg).map(ChatLine::SetTarget)
        }
        "/msg" => {
            let split = rest.iter().position(|&b| b == b' ');
            let (id, text) = match split {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            if id.is_empty() {
                return Err(ChatError::MsgUsage);
            }
            let dest = parse_target(&String::from_utf8_lossy(id))?;
            message(dest, text)
        }
        "/join" => {
            const USAGE: &str = "/join #room [--queue [--prefetch N]]";
            let words: Vec<String> = String::from_utf8_lossy(rest)
                .split_ascii_whitespace()
                .map(str::to_string)
                .collect();
            const PREFETCH_USAGE: &str = "/join #room --queue --prefetch N (N in 1..=255)";
            let (room, queue, prefetch) = match &words[..] {
                [room] => (room, false, None),
                [room, flag] if flag == "--queue" => (room, true, None),
                [room, flag, option, n] if flag == "--queue" && option == "--prefetch" => {
                    let n = n.parse::<u8>().ok().filter(|&n| n > 0);
                    let n = n.ok_or(ChatError::RoomUsage(PREFETCH_USAGE))?;
                    (room, true, Some(n))
                }
                _ if words.iter().any(|w| w == "--prefetch") => {
                    return Err(ChatError::RoomUsage(PREFETCH_USAGE));
                }
                _ => return Err(ChatError::RoomUsage(USAGE)),
            };
            Ok(ChatLine::Join {
                room: parse_room(room)?,
                queue,
                prefetch,
            })
        }
        "/leave" => {
            let words: Vec<String> = String::from_utf8_lossy(rest)
                .split_ascii_whitespace()
                .map(str::to_string)
                .collect();
            match &words[..] {
                [room] => parse_room(room).map(ChatLine::LeaveRoom),
                _ => Err(ChatError::RoomUsage("/leave #room")),
            }
        }
        "/rooms" => only("/rooms", ChatLine::Rooms),
        "/list" => only("/list", ChatLine::ListHere),
        "/help" => only("/help", ChatLine::Help),
        "/quit" => only("/quit", ChatLine::Quit),
        _ => Err(ChatError::UnknownCommand(
            String::from_utf8_lossy(word).into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(dest: u16, text: &str) -> Result<ChatLine, ChatError> {
        Ok(ChatLine::Send {
            dest: Addressee::Id(Target(dest)),
            text: text.as_bytes().to_vec(),
        })
    }

    fn to(id: u16) -> Result<ChatLine, ChatError> {
        Ok(ChatLine::SetTarget(Addressee::Id(Target(id))))
    }

    fn current(text: &str) -> Result<ChatLine, ChatError> {
        Ok(ChatLine::Send {
            dest: Addressee::Current,
            text: text.as_bytes().to_vec(),
        })
    }

    #[test]
    fn a_plain_line_goes_to_the_current_target_as_typed() {
        assert_eq!(parse_chat_line(b"hello"), current("hello"));
        assert_eq!(
            parse_chat_line(b"  two  spaces "),
            current("  two  spaces ")
        );
        assert_eq!(parse_chat_line(b"//etc"), current("/etc"));
        assert_eq!(parse_chat_line(b"(lol) hi"), current("(lol) hi"));
        // An explicit id is not the current target, even when equal to it.
        assert_eq!(parse_chat_line(b"(0) hi"), send(0, "hi"));
        assert_eq!(parse_chat_line(b""), Ok(ChatLine::Nothing));
        assert_eq!(parse_chat_line(b"   "), Ok(ChatLine::Nothing));
    }

    #[test]
    fn commands() {
        assert_eq!(parse_chat_line(b"/to 4097"), to(4097));
        assert_eq!(parse_chat_line(b"/TO all"), to(0));
        // A name is handed on as typed, for the chat to look up.
        assert_eq!(
            parse_chat_line(b"/to Alice"),
            Ok(ChatLine::SetTarget(Addressee::Name("Alice".into())))
        );
        assert_eq!(
            parse_chat_line(b"/msg bob.b hi"),
            Ok(ChatLine::Send {
                dest: Addressee::Name("bob.b".into()),
                text: b"hi".to_vec()
            })
        );
        assert_eq!(parse_chat_line(b"/msg 2 hi there"), send(2, "hi there"));
        assert_eq!(parse_chat_line(b"/msg 2"), send(2, ""));
        assert_eq!(parse_chat_line(b"/list"), Ok(ChatLine::ListHere));
        assert_eq!(parse_chat_line(b"/help"), Ok(ChatLine::Help));
        assert_eq!(parse_chat_line(b"/quit"), Ok(ChatLine::Quit));
        assert_eq!(parse_chat_line(b"(4096) x"), send(4096, "x"));
        assert_eq!(parse_chat_line(b"(4096)"), send(4096, ""));
        assert_eq!(
            parse_chat_line(b"(CREQ) 0"),
            Ok(ChatLine::ListTo(Target::ALL))
        );
        assert_eq!(parse_chat_line(b"(flw)"), Ok(ChatLine::Quit));
    }

    #[test]
    fn room_commands() {
        assert_eq!(
            parse_chat_line(b"/join #ops"),
            Ok(ChatLine::Join {
                room: "ops".into(),
                queue: false,
                prefetch: None
            })
        );
        assert_eq!(
            parse_chat_line(b"/JOIN  #jobs  --queue "),
            Ok(ChatLine::Join {
                room: "jobs".into(),
                queue: true,
                prefetch: None
            })
        );
        assert_eq!(
            parse_chat_line(b"/join #jobs --queue --prefetch 64"),
            Ok(ChatLine::Join {
                room: "jobs".into(),
                queue: true,
                prefetch: Some(64)
            })
        );
        assert_eq!(
            parse_chat_line(b"/leave #ops"),
            Ok(ChatLine::LeaveRoom("ops".into()))
        );
        assert_eq!(parse_chat_line(b"/rooms"), Ok(ChatLine::Rooms));
        assert_eq!(
            parse_chat_line(b"/to #Ops"),
            Ok(ChatLine::SetTarget(Addressee::Room("Ops".into())))
        );
        assert_eq!(
            parse_chat_line(b"/msg #ops deploy done"),
            Ok(ChatLine::Send {
                dest: Addressee::Room("ops".into()),
                text: b"deploy done".to_vec()
            })
        );
        // The name rule is the server's to apply (ROOMACK code 1).
        assert_eq!(
            parse_chat_line(b"/join #9lives"),
            Ok(ChatLine::Join {
                room: "9lives".into(),
                queue: false,
                prefetch: None
            })
        );
    }

    #[test]
    fn bad_room_commands_are_errors() {
        let usage = Err(ChatError::RoomUsage("/join #room [--queue [--prefetch N]]"));
        assert_eq!(parse_chat_line(b"/join"), usage);
        assert_eq!(parse_chat_line(b"/join #a #b"), usage);
        assert_eq!(parse_chat_line(b"/join #a --fast"), usage);
        // A prefetch is a queue's, 1..=255, after --queue.
        let prefetch = Err(ChatError::RoomUsage(
            "/join #room --queue --prefetch N (N in 1..=255)",
        ));
        for line in [
            &b"/join #a --queue --prefetch 0"[..],
            b"/join #a --queue --prefetch 256",
            b"/join #a --queue --prefetch x",
            b"/join #a --queue --prefetch",
            b"/join #a --prefetch 4",
            b"/join #a --prefetch 4 --queue",
        ] {
            assert_eq!(parse_chat_line(line), prefetch, "{line:?}");
        }
        assert_eq!(
            parse_chat_line(b"/leave"),
            Err(ChatError::RoomUsage("/leave #room"))
        );
        assert_eq!(
            parse_chat_line(b"/join ops"),
            Err(ChatError::NotARoom("ops".into()))
        );
        assert_eq!(
            parse_chat_line(b"/to #"),
            Err(ChatError::NotARoom("#".into()))
        );
        assert_eq!(
            parse_chat_line(b"/rooms all"),
            Err(ChatError::Trailing("/rooms"))
        );
        // 64 bytes go to the server; 65 would make a malformed JOIN.
        let longest = format!("/join #{}", "a".repeat(64));
        assert!(parse_chat_line(longest.as_bytes()).is_ok());
        assert_eq!(
            parse_chat_line(format!("/join #{}", "a".repeat(65)).as_bytes()),
            Err(ChatError::RoomTooLong("a".repeat(24)))
        );
    }

    #[test]
    fn bad_commands_are_errors() {
        assert_eq!(
            parse_chat_line(b"/frobnicate"),
            Err(ChatError::UnknownCommand("/frobnicate".into()))
        );
        assert_eq!(parse_chat_line(b"/to"), Err(ChatError::NeedsTarget("/to")));
        // Past 16 bits, or an id no client or room can hold.
        for bad in ["70000", "8192", "9999", "16383", "32768", "65535"] {
            assert_eq!(
                parse_chat_line(format!("/to {bad}").as_bytes()),
                Err(ChatError::BadTarget(bad.into())),
                "{bad}"
            );
        }
        for good in [0, 1, 4095, 4096, 8191, 16384, 32767] {
            assert_eq!(parse_chat_line(format!("/to {good}").as_bytes()), to(good));
        }
        // Neither an id nor a name (names start with a letter, at most 24).
        for bad in ["_x", "al ice", "a!", &"a".repeat(25)] {
            assert_eq!(
                parse_chat_line(format!("/to {bad}").as_bytes()),
                Err(ChatError::BadTarget(bad.trim_start_matches(' ').into())),
                "{bad}"
            );
        }
        assert_eq!(parse_chat_line(b"/msg"), Err(ChatError::MsgUsage));
        assert_eq!(
            parse_chat_line(b"/list now"),
            Err(ChatError::Trailing("/list"))
        );
        assert_eq!(
            parse_chat_line(b"(4096)x"),
            Err(ChatError::Emitter(
                "expected a space between ')' and the text".into()
            ))
        );
        // A sign is not a digit, though u16's parser would take it.
        assert_eq!(
            parse_chat_line(b"/to +5"),
            Err(ChatError::BadTarget("+5".into()))
        );
        let mut long = vec![b'a'; 65536];
        assert_eq!(parse_chat_line(&long), Err(ChatError::TooLong(65536)));
        // The longest text a MSG carries is sent.
        long.pop();
        assert_eq!(
            parse_chat_line(&long),
            Ok(ChatLine::Send {
                dest: Addressee::Current,
                text: long.clone()
            })
        );
    }
}
