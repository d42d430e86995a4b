//! The checks: one function per rule, each on fresh connections, with its
//! id, level, title, the rule it checks (PROTOCOL.md, and for `required` the
//! 2017 statement's own words), a hint for whoever must fix a failure, and
//! the checks it needs to have passed. The order of [`CATALOGUE`] is the
//! order of the run: required, then choices, then the hostile robust ones,
//! then the identity extension's (their functions are in `identity`), then
//! rooms and queues (in `rooms`, which need names): last, so that a server
//! that does not know HELLO or JOIN is checked on everything else first.

use super::identity;
use super::rooms;
use super::wire::{Answer, Conn, Ctx, Failure, UNUSED_EXHIBITOR, broadcast_text, describe_frame};
use evchat::proto::{
    ClientId, Frame, Kind, MAX_TEXT_LEN, SERVER_ID, is_emitter_id, is_exhibitor_id,
};
use std::io::Write;
use std::time::Duration;

/// How much a check demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// What the 2017 statement fixes.
    Required,
    /// Decisions PROTOCOL.md makes where the statement is silent.
    Choices,
    /// What a server exposed to a network must survive.
    Robust,
    /// The identity extension (PROTOCOL.md), when the server speaks it.
    Identity,
    /// Rooms and work queues (PROTOCOL.md), when the server speaks them.
    Rooms,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Required => "required",
            Level::Choices => "choices",
            Level::Identity => "identity",
            Level::Rooms => "rooms",
            Level::Robust => "robust",
        }
    }
}

/// A check that ran to the end: passed, (choices) differed from evchat's
/// decision, or (identity) found the server does not speak the extension.
pub enum Done {
    Pass,
    Note(String),
    NotSpoken(String),
    /// Not run: it needs an option that was not given (which, in words).
    NotAsked(String),
}

pub type Outcome = Result<Done, Failure>;

pub struct Check {
    pub id: &'static str,
    pub level: Level,
    pub title: &'static str,
    /// Where the rule is written in PROTOCOL.md.
    pub rule: &'static str,
    /// The 2017 statement's wording (required checks).
    pub quote: Option<&'static str>,
    /// What usually causes a failure, in one line.
    pub hint: &'static str,
    /// Checks that must have passed for this one to mean anything.
    pub needs: &'static [&'static str],
    pub run: fn(&Ctx) -> Outcome,
}

const OI_NEEDS: &[&str] = &["oi-exhibitor", "oi-emitter"];
const ROUTE_NEEDS: &[&str] = &["route-unicast"];
const IDENTITY_NEEDS: &[&str] = &["identity-hello"];
const IDENTITY_ROUTE_NEEDS: &[&str] = &["identity-hello", "route-unicast", "route-broadcast"];
const ROOMS_NEEDS: &[&str] = &["rooms-join"];
const ROOM_MSG_NEEDS: &[&str] = &["rooms-join", "identity-who"];
const QUEUE_NEEDS: &[&str] = &["rooms-join", "identity-who", "rooms-msg-members"];
const ROOMS_RULE: &str = "PROTOCOL.md, Extension: rooms and queues, Membership and messages";
const QUEUE_RULE: &str = "PROTOCOL.md, Extension: rooms and queues, Work queues";

pub const CATALOGUE: &[Check] = &[
    // ---- required ----------------------------------------------------------
    Check {
        id: "wire-header",
        level: Level::Required,
        title: "frames start with an 8-byte header of big-endian u16 fields",
        rule: "PROTOCOL.md, Wire format",
        quote: Some(
            "Tipo da mensagem (2 bytes) … Identificador de origem (2 bytes) … Identificador de \
                destino (2 bytes) … Número de sequência (2 bytes)",
        ),
        hint: "write and read every u16 in network byte order (htons/ntohs, struct '>HHHH')",
        needs: &[],
        run: wire_header,
    },
    Check {
        id: "oi-exhibitor",
        level: Level::Required,
        title: "OI with origin 0 gets OK with an exhibitor id (4096..=8191)",
        rule: "PROTOCOL.md, Server rules 1",
        quote: Some(
            "O servidor aloca identificadores … entre 2^12 e (2^13 − 1) para \
             exibidores",
        ),
        hint: "answer OI(origin 0) with OK(origin 65535, dest = the new exhibitor id, seq = the \
            OI's)",
        needs: &["wire-header"],
        run: oi_exhibitor,
    },
    Check {
        id: "oi-emitter",
        level: Level::Required,
        title: "OI with a non-zero origin gets OK with an emitter id (1..=4095)",
        rule: "PROTOCOL.md, Server rules 1",
        quote: Some("O servidor aloca identificadores entre 1 e (2^12 − 1) para emissores"),
        hint: "emitter ids come from 1..=4095, never from the exhibitor range or above it",
        needs: &["wire-header"],
        run: oi_emitter,
    },
    Check {
        id: "oi-pair",
        level: Level::Required,
        title: "OI whose origin is a connected exhibitor pairs an emitter with it",
        rule: "PROTOCOL.md, Server rules 1",
        quote: Some(
            "Se esse valor estiver entre 2^12 e (2^13 − 1), ele identifica um exibidor (que já \
                deve estar em execução) e que deve ser associado àquele emissor.",
        ),
        hint: "an OI origin in 4096..=8191 names an exhibitor to pair with; accept it when that \
            exhibitor is connected",
        needs: OI_NEEDS,
        run: oi_pair,
    },
    Check {
        id: "route-unicast",
        level: Level::Required,
        title: "MSG to an exhibitor id reaches that exhibitor only",
        rule: "PROTOCOL.md, Server rules 3",
        quote: Some(
            "Se for um exibidor, o servidor deve procurar pelo registro de um exibidor com o \
                valor indicado e repassar a msg apenas para aquele cliente.",
        ),
        hint: "look the destination id up among connected exhibitors and send the MSG to that one",
        needs: OI_NEEDS,
        run: route_unicast,
    },
    Check {
        id: "route-unchanged",
        level: Level::Required,
        title: "a forwarded MSG is byte-identical, origin and destination included",
        rule: "PROTOCOL.md, Server rules 3",
        quote: Some(
            "Ao repassar uma msg, todos os campos, inclusive os campos origem e destino, devem \
                permanecer inalterados.",
        ),
        hint: "forward the frame as received; do not rewrite origin, destination or sequence \
            number",
        needs: ROUTE_NEEDS,
        run: route_unchanged,
    },
    Check {
        id: "route-broadcast",
        level: Level::Required,
        title: "MSG to 0 reaches every connected exhibitor",
        rule: "PROTOCOL.md, Server rules 3",
        quote: Some(
            "Se o campo destino possuir o valor zero, o servidor irá enviar a mensagem para todos \
                os exibidores (broadcast).",
        ),
        hint: "a broadcast loop must visit every exhibitor, not stop after the first",
        needs: OI_NEEDS,
        run: route_broadcast,
    },
    Check {
        id: "route-paired",
        level: Level::Required,
        title: "MSG to an emitter id reaches the exhibitor paired with it",
        rule: "PROTOCOL.md, Server rules 3",
        quote: Some(
            "Se o campo destino possuir o identificador de um emissor, a mensagem deve ser \
                enviada para o exibidor associado a ele",
        ),
        hint: "remember the pairing made at OI and route an emitter id to its exhibitor",
        needs: &["oi-pair", "route-unicast"],
        run: route_paired,
    },
    Check {
        id: "route-unknown",
        level: Level::Required,
        title: "MSG with no exhibitor to reach gets ERRO",
        rule: "PROTOCOL.md, Server rules 3",
        quote: Some(
            "Caso um exibidor não seja encontrado, o servidor deve responder ao emissor com uma \
                mensagem erro",
        ),
        hint: "an unpaired emitter id or an id nobody holds has no target: answer ERRO, not OK",
        needs: OI_NEEDS,
        run: route_unknown,
    },
    Check {
        id: "seq-echo",
        level: Level::Required,
        title: "OK and ERRO carry the sequence number of the frame they answer",
        rule: "PROTOCOL.md, Sequence numbers",
        quote: Some(
            "As mensagem de oK devem carregar o número de sequência da mensagem que está sendo \
                confirmada.",
        ),
        hint: "copy the request's seq into the reply's seq field",
        needs: &["route-unicast", "route-unknown"],
        run: seq_echo,
    },
    Check {
        id: "creq-clist",
        level: Level::Required,
        title: "CREQ sends the destination a CLIST of every connected client",
        rule: "PROTOCOL.md, Server rules 5",
        quote: Some(
            "criar uma mensagem do tipo clist com o contador e lista de identificadores de \
                clientes",
        ),
        hint: "N must equal the number of ids that follow, and list emitters and exhibitors",
        needs: OI_NEEDS,
        run: creq_clist,
    },
    Check {
        id: "flw-emitter",
        level: Level::Required,
        title: "FLW from an emitter gets OK, then the connection closes",
        rule: "PROTOCOL.md, Server rules 6",
        quote: Some(
            "A partir dessa mensagem o servidor/cliente que recebe a mensagem envia um oK de \
                volta e fecha a conexão.",
        ),
        hint: "answer FLW with OK before closing the socket",
        needs: &["oi-emitter"],
        run: flw_emitter,
    },
    Check {
        id: "flw-exhibitor",
        level: Level::Required,
        title: "FLW from an exhibitor gets OK, then the connection closes",
        rule: "PROTOCOL.md, Server rules 6",
        quote: Some(
            "A partir dessa mensagem o servidor/cliente que recebe a mensagem envia um oK de \
                volta e fecha a conexão.",
        ),
        hint: "answer FLW with OK before closing the socket",
        needs: &["oi-exhibitor"],
        run: flw_exhibitor,
    },
    Check {
        id: "flw-paired",
        level: Level::Required,
        title: "a paired emitter's FLW sends FLW to its exhibitor",
        rule: "PROTOCOL.md, Server rules 6",
        quote: Some("Se houver, ele (servidor) envia uma mensagem Flw para aquele exibidor."),
        hint: "on an emitter's FLW, look up its exhibitor and send it FLW(65535, exhibitor id, \
            seq)",
        needs: &["oi-pair"],
        run: flw_paired,
    },
    // ---- choices -----------------------------------------------------------
    Check {
        id: "pair-unknown",
        level: Level::Choices,
        title: "OI naming an exhibitor that is not connected is refused with ERRO",
        rule: "PROTOCOL.md, Server rules 1",
        quote: None,
        hint: "evchat refuses the pairing, so the user learns of the typo at once",
        needs: &["oi-emitter"],
        run: pair_unknown,
    },
    Check {
        id: "lowest-free-id",
        level: Level::Choices,
        title: "a new client gets the lowest free id of its range",
        rule: "PROTOCOL.md, Server rules 1",
        quote: None,
        hint: "evchat reuses the lowest free id, so ids stay small",
        needs: &["flw-exhibitor"],
        run: lowest_free_id,
    },
    Check {
        id: "second-oi",
        level: Level::Choices,
        title: "a second OI gets ERRO and the connection is kept",
        rule: "PROTOCOL.md, Server rules 1 and Decisions",
        quote: None,
        hint: "evchat refuses a repeated OI but keeps the client and its id",
        needs: &["flw-exhibitor"],
        run: second_oi,
    },
    Check {
        id: "clist-header",
        level: Level::Choices,
        title: "CLIST comes from 65535, to the CREQ's destination, with the server's seq",
        rule: "PROTOCOL.md, Server rules 5",
        quote: None,
        hint: "evchat sends CLIST(origin 65535, dest = the CREQ's dest, seq = its counter for \
            that client)",
        needs: &["creq-clist"],
        run: clist_header,
    },
    Check {
        id: "clist-order",
        level: Level::Choices,
        title: "CLIST lists ids in ascending order",
        rule: "PROTOCOL.md, Decisions",
        quote: None,
        hint: "evchat lists ids ascending, emitters before exhibitors",
        needs: &["creq-clist"],
        run: clist_order,
    },
    Check {
        id: "ok-after-ack",
        level: Level::Choices,
        title: "the emitter's OK waits for the exhibitor's OK",
        rule: "PROTOCOL.md, Server rules 4 and Decisions",
        quote: None,
        hint: "evchat answers an emitter only once the exhibitor has acknowledged (or failed)",
        needs: ROUTE_NEEDS,
        run: ok_after_ack,
    },
    // ---- robust ------------------------------------------------------------
    Check {
        id: "frame-before-oi",
        level: Level::Robust,
        title: "a frame before OI gets ERRO or a close, never OK",
        rule: "PROTOCOL.md, Server rules 1",
        quote: None,
        hint: "until OI a connection has no id: answer anything else with ERRO(65535, 0, seq)",
        needs: &["oi-exhibitor"],
        run: frame_before_oi,
    },
    Check {
        id: "split-frames",
        level: Level::Robust,
        title: "a frame split at every byte is read whole",
        rule: "PROTOCOL.md, Wire format",
        quote: None,
        hint: "TCP is a byte stream: buffer until the header and the whole body are in, one recv \
            is not one frame",
        needs: ROUTE_NEEDS,
        run: split_frames,
    },
    Check {
        id: "many-frames",
        level: Level::Robust,
        title: "50 frames in one segment are all handled",
        rule: "PROTOCOL.md, Wire format",
        quote: None,
        hint: "after one frame, keep parsing what is left of the buffer before the next recv",
        needs: ROUTE_NEEDS,
        run: many_frames,
    },
    Check {
        id: "unknown-type",
        level: Level::Robust,
        title: "a frame of unknown type gets ERRO before any close",
        rule: "PROTOCOL.md, Server rules 7",
        quote: None,
        hint: "answer a type the protocol does not define with ERRO (then close: the stream \
            cannot be framed)",
        needs: &["oi-exhibitor"],
        run: unknown_type,
    },
    Check {
        id: "garbage",
        level: Level::Robust,
        title: "random bytes before OI get ERRO or a close, and the server carries on",
        rule: "PROTOCOL.md, Server rules 7",
        quote: None,
        hint: "check the type before dispatching on it; nothing one client sends may stop the \
            server",
        needs: &["oi-exhibitor"],
        run: garbage,
    },
    Check {
        id: "spoof",
        level: Level::Robust,
        title: "a MSG with someone else's origin is refused and never forwarded",
        rule: "PROTOCOL.md, Server rules 2",
        quote: Some("Esse teste evita que um cliente se passe por outro."),
        hint: "compare each frame's origin with the id of the socket it came on; on mismatch send \
            ERRO, forward nothing",
        needs: ROUTE_NEEDS,
        run: spoof,
    },
    Check {
        id: "many-clients",
        level: Level::Robust,
        title: "256 clients connected at once all get ids and service",
        rule: "PROTOCOL.md, Server rules 9",
        quote: Some("O servidor deve ser capaz de lidar com pelo menos 255 clientes."),
        hint: "no fixed table smaller than 256 clients, and raise the open-file limit if needed",
        needs: ROUTE_NEEDS,
        run: many_clients,
    },
    Check {
        id: "silent-exhibitor",
        level: Level::Robust,
        title: "an exhibitor that never acknowledges does not hold up the others",
        rule: "PROTOCOL.md, Server rules 4",
        quote: None,
        hint: "never wait for an exhibitor's OK inside the loop; track it and time it out",
        needs: ROUTE_NEEDS,
        run: silent_exhibitor,
    },
    Check {
        id: "slow-reader",
        level: Level::Robust,
        title: "a client that never reads does not hold up the others",
        rule: "PROTOCOL.md, Server rules 9",
        quote: None,
        hint: "never block in send(): queue output per client, bounded, and drop a client whose \
            queue overflows",
        needs: ROUTE_NEEDS,
        run: slow_reader,
    },
    // ---- identity ----------------------------------------------------------
    Check {
        id: "identity-hello",
        level: Level::Identity,
        title: "HELLO gets HELLOACK code 0, version 1, seq echoed; OI follows",
        rule: "PROTOCOL.md, Extension: identity, The hello and its answer",
        quote: None,
        hint: "answer HELLO(0, 65535, seq) with HELLOACK(65535, 0, seq): code, version 1, roles, \
            name; keep the connection for its OI",
        needs: OI_NEEDS,
        run: identity::hello_then_oi,
    },
    Check {
        id: "identity-bad-name",
        level: Level::Identity,
        title: "a HELLO with a bad name gets code 4 and the connection is kept",
        rule: "PROTOCOL.md, Extension: identity, Names",
        quote: None,
        hint: "a name is [A-Za-z][A-Za-z0-9_.-]{0,23}; refuse others with code 4 and wait for \
            another HELLO",
        needs: IDENTITY_NEEDS,
        run: identity::bad_name,
    },
    Check {
        id: "identity-name-taken",
        level: Level::Identity,
        title: "a name held by another session, in any case, gets code 3",
        rule: "PROTOCOL.md, Extension: identity, Names",
        quote: None,
        hint: "compare names ignoring ASCII case: Alice and alice are one name",
        needs: IDENTITY_NEEDS,
        run: identity::name_taken,
    },
    Check {
        id: "identity-second-hello",
        level: Level::Identity,
        title: "a second HELLO after code 0 gets code 8 and a close",
        rule: "PROTOCOL.md, Extension: identity, The hello and its answer",
        quote: None,
        hint: "one HELLO is accepted per connection; another before OI is out of place (code 8)",
        needs: IDENTITY_NEEDS,
        run: identity::second_hello,
    },
    Check {
        id: "identity-hello-after-oi",
        level: Level::Identity,
        title: "a HELLO after OI gets ERRO and the connection is kept",
        rule: "PROTOCOL.md, Extension: identity, The hello and its answer",
        quote: None,
        hint: "after OI treat HELLO as a second OI: ERRO(65535, id, seq), keep the client",
        needs: IDENTITY_NEEDS,
        run: identity::hello_after_oi,
    },
    Check {
        id: "identity-who",
        level: Level::Identity,
        title: "an opted-in exhibitor gets WHO before the first MSG from a named id",
        rule: "PROTOCOL.md, Extension: identity, Names",
        quote: None,
        hint: "send WHO(65535, exhibitor, server seq, id, roles, name) before the MSG, and take \
            its OK in the same FIFO as CLIST's",
        needs: IDENTITY_ROUTE_NEEDS,
        run: identity::who_before_msg,
    },
    Check {
        id: "identity-plain-unchanged",
        level: Level::Identity,
        title: "a client that never sent HELLO receives no extension frame",
        rule: "PROTOCOL.md, Extension: identity",
        quote: None,
        hint: "WHO goes only to exhibitors that opted in; a plain client sees the plain protocol",
        needs: IDENTITY_ROUTE_NEEDS,
        run: identity::plain_sees_nothing_new,
    },
    Check {
        id: "identity-kick-refused",
        level: Level::Identity,
        title: "KICK from an emitter without admin gets ERRO and closes nobody",
        rule: "PROTOCOL.md, Extension: identity, Roles",
        quote: None,
        hint: "without accounts nobody has admin: answer KICK with ERRO(65535, own id, seq), \
            keep both",
        needs: IDENTITY_ROUTE_NEEDS,
        run: identity::kick_without_admin,
    },
    // ---- rooms -------------------------------------------------------------
    Check {
        id: "rooms-join",
        level: Level::Rooms,
        title: "JOIN gets ROOMACK code 0: an id in 16384..=32767, the member count, the name",
        rule: "PROTOCOL.md, Extension: rooms and queues, Frames",
        quote: None,
        hint: "give a new room the lowest free id in 0x4000..=0x7fff; a second JOIN (any case) names the same room; count names, not sessions",
        needs: &["identity-hello", "identity-who"],
        run: rooms::join_counts,
    },
    Check {
        id: "rooms-bad-name",
        level: Level::Rooms,
        title: "a JOIN with a bad room name gets code 1 and the connection is kept",
        rule: "PROTOCOL.md, Extension: rooms and queues, Frames",
        quote: None,
        hint: "room names follow the rule of user names; refuse others with ROOMACK code 1 (id, flags, count 0, no name)",
        needs: ROOMS_NEEDS,
        run: rooms::bad_name,
    },
    Check {
        id: "rooms-leave",
        level: Level::Rooms,
        title: "LEAVE gets code 0, and LEAVE of a room one is not in gets code 4",
        rule: "PROTOCOL.md, Extension: rooms and queues, Frames",
        quote: None,
        hint: "LEAVE by a name that is not a member (or of no room) is ROOMACK code 4, not 0",
        needs: ROOMS_NEEDS,
        run: rooms::leave_twice,
    },
    Check {
        id: "rooms-list",
        level: Level::Rooms,
        title: "ROOMS gets ROOMLIST: every room, ascending ids, with its member count",
        rule: "PROTOCOL.md, Extension: rooms and queues, Frames",
        quote: None,
        hint: "list each room as id, flags, members (names), name, in ascending id",
        needs: ROOMS_NEEDS,
        run: rooms::list_counts,
    },
    Check {
        id: "rooms-msg-members",
        level: Level::Rooms,
        title: "a MSG to a room reaches every member's exhibitor, unchanged, the sender's own too",
        rule: ROOMS_RULE,
        quote: None,
        hint: "send the MSG as it arrived (dest = the room id) to the exhibitor of every member session online",
        needs: ROOM_MSG_NEEDS,
        run: rooms::msg_reaches_members,
    },
    Check {
        id: "rooms-ok-after-all",
        level: Level::Rooms,
        title: "the emitter's OK comes after every member settled the room's MSG",
        rule: ROOMS_RULE,
        quote: None,
        hint: "count a room's MSG like a broadcast: one reply once every target answered, OK if any showed it",
        needs: ROOM_MSG_NEEDS,
        run: rooms::ok_after_all,
    },
    Check {
        id: "rooms-members-only",
        level: Level::Rooms,
        title: "a room's MSG does not reach an opted-in exhibitor whose name is not a member",
        rule: ROOMS_RULE,
        quote: None,
        hint: "a room's targets are its members' sessions, not every named exhibitor",
        needs: ROOM_MSG_NEEDS,
        run: rooms::not_to_non_members,
    },
    Check {
        id: "rooms-plain-unchanged",
        level: Level::Rooms,
        title: "a plain exhibitor never receives a room's MSG; a plain JOIN is an unknown type",
        rule: ROOMS_RULE,
        quote: None,
        hint: "a client that never sent HELLO is never a member: it sees the plain protocol only",
        needs: ROOM_MSG_NEEDS,
        run: rooms::plain_sees_nothing_new,
    },
    Check {
        id: "rooms-non-member-writes",
        level: Level::Rooms,
        title: "a plain emitter that is no member may write to a room",
        rule: ROOMS_RULE,
        quote: None,
        hint: "a room is an address: any session that may emit may send to its id, member or not",
        needs: ROOM_MSG_NEEDS,
        run: rooms::non_member_writes,
    },
    Check {
        id: "rooms-missing-id",
        level: Level::Rooms,
        title: "a MSG to a room id no room holds gets ERRO",
        rule: ROOMS_RULE,
        quote: None,
        hint: "a MSG to a room id with no room has no target: ERRO(65535, own id, seq), as for an unknown client",
        needs: ROOM_MSG_NEEDS,
        run: rooms::missing_room,
    },
    Check {
        id: "queue-one-member",
        level: Level::Rooms,
        title: "a queue room's MSG goes to exactly one member, the members in turn",
        rule: QUEUE_RULE,
        quote: None,
        hint: "hand each queue message to one member session, round robin, not to every member",
        needs: QUEUE_NEEDS,
        run: rooms::queue_one_member,
    },
    Check {
        id: "queue-prefetch",
        level: Level::Rooms,
        title: "a queue member holds one unacknowledged message at a time (prefetch 1)",
        rule: QUEUE_RULE,
        quote: None,
        hint: "skip member sessions that hold an unacknowledged message of the room; the next waits for the OK",
        needs: QUEUE_NEEDS,
        run: rooms::queue_prefetch_one,
    },
    Check {
        id: "queue-prefetch-asked",
        level: Level::Rooms,
        title: "a member whose JOIN asked prefetch 2 holds two unacknowledged messages, not three",
        rule: "PROTOCOL.md, Extension: rooms and queues, Work queues, Prefetch",
        quote: None,
        hint: "JOIN flag 2 carries a prefetch P: each session of the name may hold up to P unacknowledged messages of the queue",
        needs: QUEUE_NEEDS,
        run: rooms::queue_prefetch_asked,
    },
    Check {
        id: "queue-redelivery",
        level: Level::Rooms,
        title: "a message held by a member that leaves unacknowledged goes to the next member",
        rule: QUEUE_RULE,
        quote: None,
        hint: "when a holder disconnects, put its message back and hand it to another member (at-least-once)",
        needs: QUEUE_NEEDS,
        run: rooms::queue_redelivers,
    },
    Check {
        id: "queue-waits",
        level: Level::Rooms,
        title: "with no member online a queue message waits for one to come back",
        rule: QUEUE_RULE,
        quote: None,
        hint: "keep a queue message (up to --queue-wait) while no member session is online; send it at OI",
        needs: QUEUE_NEEDS,
        run: rooms::queue_waits,
    },
    Check {
        id: "queue-gives-up",
        level: Level::Rooms,
        title: "a queue message nobody takes within --queue-wait gets ERRO",
        rule: QUEUE_RULE,
        quote: None,
        hint: "answer ERRO to a queue message that waited --queue-wait; never keep the emitter waiting forever",
        needs: QUEUE_NEEDS,
        run: rooms::queue_gives_up,
    },
    Check {
        id: "tell-online",
        level: Level::Rooms,
        title: "a TELL to a name online is a MSG to its exhibitor, answered OK once shown",
        rule: "PROTOCOL.md, Waiting messages",
        quote: None,
        hint: "find the name's exhibitors (ignoring case) and send each MSG(teller, exhibitor, the TELL's seq, text)",
        needs: TELL_NEEDS,
        run: rooms::tell_online,
    },
    Check {
        id: "tell-waits",
        level: Level::Rooms,
        title: "a TELL to an offline name is stored (ROOMACK code 9) and sent behind WAITING when it is back",
        rule: "PROTOCOL.md, Waiting messages",
        quote: None,
        hint: "with history, keep a TELL for an offline name the server knows, answer code 9, and at its OI send WAITING(time stored) then the MSG",
        needs: TELL_NEEDS,
        run: rooms::tell_waits,
    },
    Check {
        id: "tell-unknown",
        level: Level::Rooms,
        title: "a TELL to a name the server does not know is refused with ROOMACK code 10",
        rule: "PROTOCOL.md, Waiting messages",
        quote: None,
        hint: "with history, store a TELL only for a name the server knows; answer any other offline name with code 10",
        needs: TELL_NEEDS,
        run: rooms::tell_unknown,
    },
];

/// What the TELL checks need: names, rooms (a known name is a member) and
/// a MSG reaching a member.
const TELL_NEEDS: &[&str] = &["rooms-join", "identity-who", "rooms-msg-members"];

/// Looks a check up by id.
pub fn find(id: &str) -> Option<&'static Check> {
    CATALOGUE.iter().find(|c| c.id == id)
}

// ---- helpers -----------------------------------------------------------------

/// Sends `msg` on `emitter` and expects `exhibitor` to receive it, acknowledge
/// it, and the emitter to get a reply; the reply must be OK.
fn deliver(emitter: &mut Conn, exhibitor: &mut Conn, msg: &Frame) -> Result<(), Failure> {
    emitter.send(msg)?;
    exhibitor
        .expect_forward(msg, false)
        .map_err(|f| emitter.blame(f))?;
    expect_ok(emitter, "OK for the MSG (an exhibitor received it)")
}

/// Expects a reply, which must be OK.
fn expect_ok(conn: &mut Conn, what: &str) -> Result<(), Failure> {
    let reply = conn.expect_reply(what)?;
    if reply.kind != Kind::Ok {
        return Err(conn.unexpected("expected OK, got ERRO", what));
    }
    Ok(())
}

fn pass() -> Outcome {
    Ok(Done::Pass)
}

// ---- required ----------------------------------------------------------------

fn wire_header(ctx: &Ctx) -> Outcome {
    let mut conn = Conn::open(ctx)?;
    conn.send(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0))?;
    let want = "an 8-byte big-endian header: OK (00 01) or ERRO (00 02)";
    let frame = conn.expect(want)?;
    if !matches!(frame.kind, Kind::Ok | Kind::Erro) {
        return Err(conn.unexpected(format!("the reply to OI is a {}", frame.kind), want));
    }
    pass()
}

fn oi_exhibitor(ctx: &Ctx) -> Outcome {
    let mut conn = Conn::open(ctx)?;
    conn.send(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0))?;
    let want = "OK(origin 65535, dest 4096..=8191, seq 0)";
    let ok = conn.expect(want)?;
    if ok.kind != Kind::Ok || ok.origin != SERVER_ID || !is_exhibitor_id(ok.dest) || ok.seq != 0 {
        return Err(conn.unexpected("the exhibitor's OI was not answered as the rule says", want));
    }
    pass()
}

fn oi_emitter(ctx: &Ctx) -> Outcome {
    let mut conn = Conn::open(ctx)?;
    conn.send(&Frame::bare(Kind::Oi, 1, SERVER_ID, 0))?;
    let want = "OK(origin 65535, dest 1..=4095, seq 0)";
    let ok = conn.expect(want)?;
    if ok.kind != Kind::Ok || ok.origin != SERVER_ID || !is_emitter_id(ok.dest) || ok.seq != 0 {
        return Err(conn.unexpected("the emitter's OI was not answered as the rule says", want));
    }
    pass()
}

fn oi_pair(ctx: &Ctx) -> Outcome {
    let exhibitor = Conn::exhibitor(ctx)?;
    let mut emitter = Conn::open(ctx)?;
    emitter.identify(exhibitor.me(), "emitter")?;
    pass()
}

fn route_unicast(ctx: &Ctx) -> Outcome {
    let mut first = Conn::exhibitor(ctx)?;
    let mut second = Conn::exhibitor(ctx)?;
    let mut emitter = Conn::emitter(ctx, 1)?;
    // To the second exhibitor, then to the first: the first one's next frame
    // must be its own message, which proves the earlier one skipped it.
    let to_second = emitter.msg(second.me(), "evchat check: to the second exhibitor");
    deliver(&mut emitter, &mut second, &to_second)?;
    let to_first = emitter.msg(first.me(), "evchat check: to the first exhibitor");
    deliver(&mut emitter, &mut first, &to_first)?;
    pass()
}

fn route_unchanged(ctx: &Ctx) -> Outcome {
    let mut exhibitor = Conn::exhibitor(ctx)?;
    let mut emitter = Conn::emitter(ctx, 1)?;
    let msg = emitter.msg(exhibitor.me(), "evchat check: forwarded unchanged");
    emitter.send(&msg)?;
    exhibitor
        .expect_forward(&msg, true)
        .map_err(|f| emitter.blame(f))?;
    emitter.expect_reply("OK for the MSG")?;
    pass()
}

fn route_broadcast(ctx: &Ctx) -> Outcome {
    let mut first = Conn::exhibitor(ctx)?;
    let mut second = Conn::exhibitor(ctx)?;
    let mut emitter = Conn::emitter(ctx, 1)?;
    let text = broadcast_text(ctx, "to everyone");
    let msg = emitter.msg(0, &text);
    emitter.send(&msg)?;
    for exhibitor in [&mut first, &mut second] {
        exhibitor.await_broadcast(&text);
        exhibitor
            .expect_forward(&msg, false)
            .map_err(|f| emitter.blame(f))?;
    }
    expect_ok(&mut emitter, "OK for the broadcast")?;
    pass()
}

fn route_paired(ctx: &Ctx) -> Outcome {
    let mut exhibitor = Conn::exhibitor(ctx)?;
    let paired = Conn::emitter(ctx, exhibitor.me())?;
    let mut other = Conn::emitter(ctx, 1)?;
    let msg = other.msg(paired.me(), "evchat check: to a paired emitter");
    deliver(&mut other, &mut exhibitor, &msg)?;
    pass()
}

fn route_unknown(ctx: &Ctx) -> Outcome {
    let _exhibitor = Conn::exhibitor(ctx)?;
    let mut emitter = Conn::emitter(ctx, 1)?;
    let unpaired = Conn::emitter(ctx, 1)?;
    for (dest, why) in [
        (unpaired.me(), "an unpaired emitter"),
        (UNUSED_EXHIBITOR, "an exhibitor id nobody holds"),
    ] {
        let msg = emitter.msg(dest, "evchat check: nobody to reach");
        emitter.send(&msg)?;
        let want = format!("ERRO: destination {dest} is {why}");
        let reply = emitter.expect_reply(&want)?;
        if reply.kind != Kind::Erro {
            return Err(emitter.unexpected(format!("a MSG to {why} was answered OK"), &want));
        }
    }
    pass()
}

fn seq_echo(ctx: &Ctx) -> Outcome {
    let mut exhibitor = Conn::exhibitor(ctx)?;
    let mut emitter = Conn::emitter(ctx, 1)?;
    for dest in [exhibitor.me(), exhibitor.me(), UNUSED_EXHIBITOR] {
        let msg = emitter.msg(dest, "evchat check: sequence numbers");
        emitter.send(&msg)?;
        if dest != UNUSED_EXHIBITOR {
            exhibitor
                .expect_forward(&msg, false)
                .map_err(|f| emitter.blame(f))?;
        }
        let want = format!("a reply with seq {}", msg.seq);
        let reply = emitter.expect_reply(&want)?;
        if reply.seq != msg.seq {
            return Err(emitter.unexpected(
                format!("the reply to seq {} carries seq {}", msg.seq, reply.seq),
                &want,
            ));
        }
    }
    pass()
}

/// Sends a CREQ from a fresh emitter to a fresh exhibitor; returns the
/// exhibitor, the emitter and the CLIST (already acknowledged).
fn creq(ctx: &Ctx) -> Result<(Conn, Conn, Frame), Failure> {
    let mut exhibitor = Conn::exhibitor(ctx)?;
    let mut emitter = Conn::emitter(ctx, 1)?;
    let seq = emitter.next_seq();
    emitter.send(&Frame::bare(Kind::Creq, emitter.me(), exhibitor.me(), seq))?;
    let want = format!(
        "CLIST listing at least {} and {}",
        emitter.me(),
        exhibitor.me()
    );
    let clist = exhibitor
        .expect_kind(Kind::Clist, &want)
        .map_err(|f| emitter.blame(f))?;
    exhibitor.ack(&clist)?;
    Ok((exhibitor, emitter, clist))
}

fn clist_ids(frame: &Frame) -> &[ClientId] {
    match &frame.body {
        evchat::proto::Body::Clients(ids) => ids,
        _ => &[],
    }
}

fn creq_clist(ctx: &Ctx) -> Outcome {
    let (exhibitor, mut emitter, clist) = creq(ctx)?;
    let ids = clist_ids(&clist);
    for id in [emitter.me(), exhibitor.me()] {
        if !ids.contains(&id) {
            let want = format!("CLIST listing {} and {}", emitter.me(), exhibitor.me());
            return Err(exhibitor.unexpected(format!("the CLIST does not list {id}"), &want));
        }
    }
    expect_ok(&mut emitter, "OK for the CREQ")?;
    pass()
}

fn flw(conn: &mut Conn) -> Outcome {
    let seq = conn.next_seq();
    conn.send(&Frame::bare(Kind::Flw, conn.me(), SERVER_ID, seq))?;
    conn.expect_kind(Kind::Ok, "OK for the FLW")?;
    conn.expect_close("the connection closed after the OK")?;
    pass()
}

fn flw_emitter(ctx: &Ctx) -> Outcome {
    flw(&mut Conn::emitter(ctx, 1)?)
}

fn flw_exhibitor(ctx: &Ctx) -> Outcome {
    flw(&mut Conn::exhibitor(ctx)?)
}

fn flw_paired(ctx: &Ctx) -> Outcome {
    let mut exhibitor = Conn::exhibitor(ctx)?;
    let mut emitter = Conn::emitter(ctx, exhibitor.me())?;
    let seq = emitter.next_seq();
    emitter.send(&Frame::bare(Kind::Flw, emitter.me(), SERVER_ID, seq))?;
    let want = format!("FLW(origin 65535, dest {})", exhibitor.me());
    let flw = exhibitor
        .expect_kind(Kind::Flw, &want)
        .map_err(|f| emitter.blame(f))?;
    if flw.origin != SERVER_ID || flw.dest != exhibitor.me() {
        return Err(exhibitor.unexpected("the FLW's header is wrong", &want));
    }
    // The exhibitor answers and ends, as the statement says; whether the
    // server or the exhibitor closes the connection first is left open.
    exhibitor.ack(&flw)?;
    exhibitor.vanish();
    pass()
}

// ---- choices -----------------------------------------------------------------

fn pair_unknown(ctx: &Ctx) -> Outcome {
    let mut conn = Conn::open(ctx)?;
    conn.send(&Frame::bare(Kind::Oi, UNUSED_EXHIBITOR, SERVER_ID, 0))?;
    let want = format!("ERRO: exhibitor {UNUSED_EXHIBITOR} is not connected");
    let got = match conn.answer(&want)? {
        Answer::Frame(frame) if frame.kind == Kind::Erro => return pass(),
        Answer::Frame(frame) => format!("got {}", describe_frame(&frame)),
        Answer::Closed => "was closed without ERRO".to_string(),
        Answer::Silence => format!("got no answer within {:?}", ctx.timeout),
    };
    Ok(Done::Note(format!(
        "OI naming exhibitor {UNUSED_EXHIBITOR}, which is not connected, {got}"
    )))
}

fn lowest_free_id(ctx: &Ctx) -> Outcome {
    let mut first = Conn::exhibitor(ctx)?;
    let _second = Conn::exhibitor(ctx)?;
    let freed = first.me();
    flw(&mut first)?;
    let third = Conn::exhibitor(ctx)?;
    // Lower than `freed` is lowest-free too: a client that left just before
    // (an earlier check's) may have freed a lower id meanwhile.
    if third.me() <= freed {
        return pass();
    }
    Ok(Done::Note(format!(
        "after exhibitor {freed} left, the next exhibitor got {} instead of {freed}",
        third.me()
    )))
}

fn second_oi(ctx: &Ctx) -> Outcome {
    let mut conn = Conn::exhibitor(ctx)?;
    let seq = conn.next_seq();
    conn.send(&Frame::bare(Kind::Oi, 0, SERVER_ID, seq))?;
    let reply = match conn.answer("ERRO for the second OI")? {
        Answer::Frame(frame) => frame,
        Answer::Closed => {
            return Ok(Done::Note(
                "a second OI closed the connection (evchat answers ERRO and keeps it)".to_string(),
            ));
        }
        Answer::Silence => {
            return Ok(Done::Note(format!(
                "a second OI got no answer within {:?} (evchat answers ERRO)",
                ctx.timeout
            )));
        }
    };
    if reply.kind != Kind::Erro {
        return Ok(Done::Note(format!(
            "a second OI got {} (evchat answers ERRO and keeps the id)",
            describe_frame(&reply)
        )));
    }
    // Kept: FLW is still answered.
    let seq = conn.next_seq();
    conn.send(&Frame::bare(Kind::Flw, conn.me(), SERVER_ID, seq))?;
    match conn.recv() {
        Ok(frame) if frame.kind == Kind::Ok => pass(),
        _ => Ok(Done::Note(
            "after ERRO for a second OI the connection no longer answered FLW".to_string(),
        )),
    }
}

fn clist_header(ctx: &Ctx) -> Outcome {
    let (exhibitor, _emitter, clist) = creq(ctx)?;
    let first = exhibitor.server_seq_start();
    let want = (SERVER_ID, exhibitor.me(), first);
    if (clist.origin, clist.dest, clist.seq) == want {
        return pass();
    }
    Ok(Done::Note(format!(
        "CLIST header is (origin {}, dest {}, seq {}); evchat sends (origin 65535, dest {}, seq \
            {first}) as the server's first frame to that exhibitor",
        clist.origin,
        clist.dest,
        clist.seq,
        exhibitor.me()
    )))
}

fn clist_order(ctx: &Ctx) -> Outcome {
    let (_exhibitor, _emitter, clist) = creq(ctx)?;
    let ids = clist_ids(&clist);
    if ids.windows(2).all(|pair| pair[0] < pair[1]) {
        return pass();
    }
    Ok(Done::Note(format!(
        "CLIST ids are not ascending: {}",
        describe_frame(&clist)
    )))
}

fn ok_after_ack(ctx: &Ctx) -> Outcome {
    let mut exhibitor = Conn::exhibitor(ctx)?;
    let mut emitter = Conn::emitter(ctx, 1)?;
    let msg = emitter.msg(exhibitor.me(), "evchat check: never acknowledged");
    emitter.send(&msg)?;
    let want = format!("MSG with the text of {}", describe_frame(&msg));
    exhibitor
        .expect_kind(Kind::Msg, &want)
        .map_err(|f| emitter.blame(f))?;
    // The exhibitor vanishes without acknowledging: nobody showed the
    // message, so a server that waited for the ack can only answer ERRO.
    exhibitor.vanish();
    let want = "ERRO: the only target vanished without acknowledging";
    let reply = match emitter.answer(want)? {
        Answer::Frame(reply) => reply,
        Answer::Silence => {
            return Ok(Done::Note(format!(
                "no reply within {:?} after the only target vanished without acknowledging \
                    (evchat answers ERRO at once)",
                ctx.timeout
            )));
        }
        Answer::Closed => return Err(emitter.closed_failure(want)),
    };
    if !matches!(reply.kind, Kind::Ok | Kind::Erro) {
        return Err(emitter.unexpected(format!("expected OK or ERRO, got {}", reply.kind), want));
    }
    if reply.kind == Kind::Erro {
        return pass();
    }
    Ok(Done::Note(
        "answered OK for a MSG whose only exhibitor vanished without acknowledging it (the OK \
            does not wait for the exhibitor)"
            .to_string(),
    ))
}

// ---- robust ------------------------------------------------------------------

fn frame_before_oi(ctx: &Ctx) -> Outcome {
    let mut conn = Conn::open(ctx)?;
    conn.send(
        &Frame::msg(1, UNUSED_EXHIBITOR, 0, &b"evchat check: before OI"[..]).expect("short"),
    )?;
    let want = "ERRO or a close: the connection has not identified";
    match conn.answer(want)? {
        Answer::Frame(frame) if frame.kind == Kind::Erro => pass(),
        Answer::Frame(_) => Err(conn.unexpected("a frame before OI was accepted", want)),
        Answer::Closed => pass(),
        Answer::Silence => Err(conn.silence_failure(want)),
    }
}

/// The pause between the parts of a split frame, so that they arrive in
/// separate segments and a server sees them in separate reads.
const SPLIT_PAUSE: Duration = Duration::from_millis(5);

fn split_frames(ctx: &Ctx) -> Outcome {
    let mut exhibitor = Conn::exhibitor(ctx)?;
    let mut emitter = Conn::emitter(ctx, 1)?;
    let sample = emitter.msg(exhibitor.me(), "split");
    let len = sample.to_bytes().len();
    // Every cut point once, then one frame a byte at a time.
    let mut plans: Vec<Vec<usize>> = (1..len).map(|cut| vec![cut]).collect();
    plans.push((1..len).collect());
    emitter.send(&sample)?;
    exhibitor
        .expect_forward(&sample, false)
        .map_err(|f| emitter.blame(f))?;
    expect_ok(&mut emitter, "OK for the MSG")?;
    for cuts in plans {
        let text = format!("split at {cuts:?}");
        let msg = emitter.msg(exhibitor.me(), &text);
        let bytes = msg.to_bytes();
        emitter.remember(&bytes);
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            emitter.send_part(&bytes[from..cut])?;
            from = cut;
            // After the last part too: a pause more costs 5 ms a frame.
            std::thread::sleep(SPLIT_PAUSE);
        }
        exhibitor
            .expect_forward(&msg, false)
            .map_err(|f| emitter.blame(f))?;
        expect_ok(&mut emitter, "OK for the MSG sent in parts")?;
    }
    pass()
}

fn many_frames(ctx: &Ctx) -> Outcome {
    const COUNT: usize = 50;
    let mut exhibitor = Conn::exhibitor(ctx)?;
    let mut emitter = Conn::emitter(ctx, 1)?;
    let msgs: Vec<Frame> = (0..COUNT)
        .map(|i| emitter.msg(exhibitor.me(), &format!("batch {i}")))
        .collect();
    let batch: Vec<u8> = msgs.iter().flat_map(|m| m.to_bytes()).collect();
    emitter.send_bytes(&batch)?;
    for msg in &msgs {
        exhibitor
            .expect_forward(msg, false)
            .map_err(|f| emitter.blame(f))?;
    }
    for msg in &msgs {
        expect_ok(&mut emitter, &format!("OK for MSG seq {}", msg.seq))?;
    }
    pass()
}

fn unknown_type(ctx: &Ctx) -> Outcome {
    let mut conn = Conn::exhibitor(ctx)?;
    let seq = conn.next_seq();
    let mut bytes = Vec::new();
    for field in [9, conn.me(), SERVER_ID, seq] {
        bytes.extend_from_slice(&u16::to_be_bytes(field));
    }
    conn.send_bytes(&bytes)?;
    let want = "ERRO for a frame of type 9";
    match conn.recv() {
        Ok(frame) if frame.kind == Kind::Erro => pass(),
        Ok(frame) => Err(conn.unexpected(format!("answered {}", frame.kind), want)),
        Err(e) => Err(conn.recv_failure(e, want)),
    }
}

/// Bytes no client would send: an unknown type (0xdead), then noise. Fixed,
/// so that reports compare from run to run.
const JUNK: [u8; 64] = [
    0xde, 0xad, 0xad, 0x76, 0x36, 0x74, 0xec, 0x79, 0xcf, 0xea, 0x8b, 0x8e, 0x15, 0x03, 0xfd, 0x9e,
    0x1f, 0xff, 0xb8, 0x75, 0x4f, 0x19, 0x6d, 0xef, 0x1a, 0xde, 0xbd, 0xe4, 0x13, 0x3f, 0x2d, 0x7d,
    0x37, 0xf5, 0x5a, 0xec, 0xed, 0x52, 0xf6, 0x09, 0xb3, 0x20, 0x5e, 0xc2, 0xb9, 0xac, 0xbb, 0xd2,
    0x0d, 0x75, 0xb9, 0xec, 0x5f, 0xd9, 0x26, 0x12, 0x10, 0x26, 0xa6, 0x79, 0xaf, 0xc6, 0xe3, 0xc8,
];

fn garbage(ctx: &Ctx) -> Outcome {
    let mut conn = Conn::open(ctx)?;
    conn.send_bytes(&JUNK)?;
    let want = "ERRO or a close: the bytes are not a frame";
    match conn.answer(want)? {
        Answer::Frame(frame) if frame.kind == Kind::Erro => pass(),
        Answer::Frame(frame) => {
            Err(conn.unexpected(format!("garbage was answered {}", frame.kind), want))
        }
        Answer::Closed => pass(),
        Answer::Silence => Err(conn.silence_failure(want)),
    }
}

fn spoof(ctx: &Ctx) -> Outcome {
    let mut exhibitor = Conn::exhibitor(ctx)?;
    let mut liar = Conn::emitter(ctx, 1)?;
    let mut victim = Conn::emitter(ctx, 1)?;
    let seq = liar.next_seq();
    let forged = Frame::msg(
        victim.me(),
        exhibitor.me(),
        seq,
        &b"evchat check: forged"[..],
    )
    .expect("short");
    liar.send(&forged)?;
    let want = "ERRO (or a close) for a MSG whose origin is another client's id";
    match liar.answer(want)? {
        Answer::Frame(frame) if frame.kind == Kind::Erro => {}
        Answer::Frame(frame) => {
            return Err(
                liar.unexpected(format!("the forged MSG was answered {}", frame.kind), want)
            );
        }
        Answer::Closed => {}
        Answer::Silence => return Err(liar.silence_failure(want)),
    }
    // The exhibitor's next frame must be the victim's real message.
    let real = victim.msg(exhibitor.me(), "evchat check: genuine");
    victim.send(&real)?;
    let want = format!("only {}, not the forged one", describe_frame(&real));
    let got = exhibitor
        .expect(&want)
        .map_err(|f| liar.blame(victim.blame(f)))?;
    if got.text() != real.text() {
        let failure = exhibitor.unexpected("the forged MSG was forwarded", &want);
        return Err(liar.blame(victim.blame(failure)));
    }
    pass()
}

fn many_clients(ctx: &Ctx) -> Outcome {
    const EXHIBITORS: usize = 255;
    // One after the other, each identified before the next connects: a
    // burst of connects would only measure the server's listen backlog.
    let mut conns = Vec::with_capacity(EXHIBITORS);
    let mut ids = std::collections::BTreeSet::new();
    for n in 1..=EXHIBITORS {
        let conn = Conn::exhibitor(ctx).map_err(|mut f| {
            f.summary = format!("client {n} of {EXHIBITORS}: {}", f.summary);
            f
        })?;
        if !ids.insert(conn.me()) {
            let want = format!("an id no other of the {n} connected clients holds");
            return Err(conn.unexpected(format!("client {n} got a duplicate id"), &want));
        }
        conns.push(conn);
    }
    let mut emitter = Conn::emitter(ctx, 1)?;
    let last = conns.last_mut().expect("255 connections");
    let msg = emitter.msg(last.me(), "evchat check: client 256");
    deliver(&mut emitter, last, &msg)?;
    pass()
}

fn silent_exhibitor(ctx: &Ctx) -> Outcome {
    let mut silent = Conn::exhibitor(ctx)?;
    let mut other = Conn::exhibitor(ctx)?;
    let mut first = Conn::emitter(ctx, 1)?;
    let mut second = Conn::emitter(ctx, 1)?;
    let unanswered = first.msg(silent.me(), "evchat check: never acknowledged");
    first.send(&unanswered)?;
    silent
        .expect_kind(Kind::Msg, "the MSG (which it will not acknowledge)")
        .map_err(|f| first.blame(f))?;
    let msg = second.msg(other.me(), "evchat check: meanwhile");
    deliver(&mut second, &mut other, &msg)?;
    pass()
}

/// How many MSGs of the longest text the flooding emitter pushes at the
/// exhibitor that never reads: 12.5 MiB, more than evchat's 4 MiB queue plus
/// the kernel's socket buffers.
const FLOOD_FRAMES: usize = 200;

fn slow_reader(ctx: &Ctx) -> Outcome {
    let stuck = Conn::open_small_rcvbuf(ctx)?;
    let mut other = Conn::exhibitor(ctx)?;
    let mut flooder = Conn::emitter(ctx, 1)?;
    let mut second = Conn::emitter(ctx, 1)?;
    let text = vec![b'x'; MAX_TEXT_LEN];
    let flood: Vec<u8> = (0..FLOOD_FRAMES)
        .flat_map(|_| {
            let seq = flooder.next_seq();
            let msg = Frame::msg(flooder.me(), stuck.me(), seq, text.clone()).expect("max text");
            msg.to_bytes()
        })
        .collect();
    // One write, whatever it achieves: a blocking send's timeout (the
    // connection's, --timeout) bounds the whole call, so a server that stops
    // reading the flooder ends the flood after one timeout, not one per
    // write that makes a little progress.
    let _ = flooder.try_clone_stream()?.write(&flood);
    let msg = second.msg(other.me(), "evchat check: meanwhile");
    deliver(&mut second, &mut other, &msg)?;
    // The flood may still be on its way to the stuck exhibitor's id. Once
    // that id is free, the server rightly gives what is left of it to the
    // id's next holder: a later check's exhibitor. So the stuck exhibitor
    // leaves first (the rest of the flood is then refused), and the check
    // ends only when the server has read the flooder to its end.
    drop(stuck);
    flooder.hang_up_and_wait();
    pass()
}
