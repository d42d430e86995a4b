//! The wire format: the fixed 8-byte header, the seven frame types, the id
//! ranges and sequence numbers. Pure bytes ↔ frames; nothing here touches a
//! socket, so every rule of the encoding is testable with byte literals.
//!
//! ```text
//!  0       2       4       6       8
//!  +-------+-------+-------+-------+
//!  | type  |origin | dest  |  seq  |   header: four big-endian u16
//!  +-------+-------+-------+-------+
//!  MSG   body: | C (u16) | C bytes of text |
//!  CLIST body: | N (u16) | N × id (u16)    |
//!  OK, ERRO, OI, FLW, CREQ: no body
//! ```
//!
//! Two readings of the same bytes: [`Frame`] owns its body (clients, tests);
//! [`FrameView`] borrows it from the input (the server, which forwards a
//! MSG's text without copying it first). Partial input is an expected state:
//! [`FrameView::parse`] and [`Frame::decode`] return `Ok(None)` until a whole
//! frame is buffered and never consume bytes they did not parse.
//! Every length in the format is a `u16`, so no frame exceeds
//! [`MAX_FRAME_LEN`] and a decoder's buffer needs no other cap.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub mod ext;
use std::fmt;

/// Bytes in the fixed header every frame starts with.
pub const HEADER_LEN: usize = 8;
/// The largest frame the format can express (a CLIST with 65535 ids).
pub const MAX_FRAME_LEN: usize = HEADER_LEN + 2 + 2 * u16::MAX as usize;
/// The largest text a MSG can carry.
pub const MAX_TEXT_LEN: usize = u16::MAX as usize;

/// A client or server identifier as carried in the origin/destination fields.
pub type ClientId = u16;

/// Destination 0 means "every exhibitor"; origin 0 in OI means "I am an exhibitor".
pub const BROADCAST: ClientId = 0;
/// The server's own identifier.
pub const SERVER_ID: ClientId = u16::MAX;
/// Ids the server hands to emitters.
pub const EMITTER_IDS: std::ops::RangeInclusive<ClientId> = 1..=4095;
/// Ids the server hands to exhibitors.
pub const EXHIBITOR_IDS: std::ops::RangeInclusive<ClientId> = 4096..=8191;

/// True when `id` lies in the emitter range.
pub fn is_emitter_id(id: ClientId) -> bool {
    EMITTER_IDS.contains(&id)
}

/// True when `id` lies in the exhibitor range.
pub fn is_exhibitor_id(id: ClientId) -> bool {
    EXHIBITOR_IDS.contains(&id)
}

/// The value of the header's type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Kind {
    Ok = 1,
    Erro = 2,
    Oi = 3,
    Flw = 4,
    Msg = 5,
    Creq = 6,
    Clist = 7,
}

impl Kind {
    /// The kind for a type field value, if it names one of the seven.
    #[inline]
    pub fn from_u16(value: u16) -> Option<Kind> {
        Some(match value {
            1 => Kind::Ok,
            2 => Kind::Erro,
            3 => Kind::Oi,
            4 => Kind::Flw,
            5 => Kind::Msg,
            6 => Kind::Creq,
            7 => Kind::Clist,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Ok => "OK",
            Kind::Erro => "ERRO",
            Kind::Oi => "OI",
            Kind::Flw => "FLW",
            Kind::Msg => "MSG",
            Kind::Creq => "CREQ",
            Kind::Clist => "CLIST",
        })
    }
}

/// The four header fields, with the type field left raw so that a frame of
/// unknown type can still be answered with its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u16,
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
}

impl Header {
    /// Reads a header from the first 8 bytes of `bytes`, if there are 8.
    #[inline]
    pub fn peek(bytes: &[u8]) -> Option<Header> {
        let b: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        let field = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        Some(Header {
            kind: field(0),
            origin: field(2),
            dest: field(4),
            seq: field(6),
        })
    }
}

/// What follows the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// OK, ERRO, OI, FLW and CREQ carry nothing after the header.
    Empty,
    /// MSG: the text bytes (the spec says ASCII; any bytes are carried as is).
    Text(Bytes),
    /// CLIST: the ids of the connected clients.
    Clients(Vec<ClientId>),
}

/// One protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
    pub body: Body,
}

/// Anything that can be written as one frame: an owned [`Frame`] or a
/// [`FrameView`] read in place. The connection's output takes either through
/// this one interface.
pub trait Encode {
    /// Bytes this frame takes on the wire.
    fn encoded_len(&self) -> usize;
    /// Appends the wire form of this frame to `out`.
    fn encode_into(&self, out: &mut BytesMut);
}

/// A frame already encoded: its bytes go as they are. A MSG forwarded to
/// many targets is encoded once and copied to each.
#[derive(Debug, Clone, Copy)]
pub struct Encoded<'a>(pub &'a [u8]);

impl Encode for Encoded<'_> {
    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn encode_into(&self, out: &mut BytesMut) {
        out.extend_from_slice(self.0);
    }
}

impl Encode for Frame {
    fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self.wire_body() {
                WireBody::None => 0,
                WireBody::Text(text) => 2 + text.len(),
                WireBody::Clients(ids) => 2 + 2 * ids.len(),
            }
    }

    fn encode_into(&self, out: &mut BytesMut) {
        // The header (and a MSG's count) go in as one array, as for a
        // forwarded MSG: a bare OK or ERRO to the emitter is written once
        // per message, and four `put_u16` checked the space four times.
        let mut head = [0u8; HEADER_LEN + 2];
        head[0..2].copy_from_slice(&(self.kind as u16).to_be_bytes());
        head[2..4].copy_from_slice(&self.origin.to_be_bytes());
        head[4..6].copy_from_slice(&self.dest.to_be_bytes());
        head[6..8].copy_from_slice(&self.seq.to_be_bytes());
        match self.wire_body() {
            WireBody::None => out.extend_from_slice(&head[..HEADER_LEN]),
            WireBody::Text(text) => {
                head[8..10].copy_from_slice(&(text.len() as u16).to_be_bytes());
                out.reserve(head.len() + text.len());
                out.extend_from_slice(&head);
                out.extend_from_slice(text);
            }
            WireBody::Clients(ids) => {
                out.reserve(HEADER_LEN + 2 + 2 * ids.len());
                out.extend_from_slice(&head[..HEADER_LEN]);
                out.put_u16(ids.len() as u16);
                for id in ids {
                    out.put_u16(*id);
                }
            }
        }
    }
}

/// How many bytes the whole frame of type `kind` at the start of `buf`
/// takes, once its count field (MSG, CLIST) has arrived; `None` before.
#[inline]
fn wire_len(kind: Kind, buf: &[u8]) -> Option<usize> {
    let per_item = match kind {
        Kind::Msg => 1,
        Kind::Clist => 2,
        _ => return Some(HEADER_LEN),
    };
    let count = buf.get(HEADER_LEN..HEADER_LEN + 2)?;
    Some(HEADER_LEN + 2 + per_item * u16::from_be_bytes([count[0], count[1]]) as usize)
}

/// The part of a frame after the header, as it goes on the wire.
enum WireBody<'a> {
    None,
    Text(&'a [u8]),
    Clients(&'a [ClientId]),
}

/// Why bytes could not be decoded as a frame. Each variant carries the header
/// so the peer can still be answered (ERRO echoes the sequence number).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("unknown frame type {}", .0.kind)]
    UnknownType(Header),
}

impl ProtoError {
    /// The header of the frame that could not be decoded.
    pub fn header(&self) -> Header {
        match self {
            ProtoError::UnknownType(h) => *h,
        }
    }
}

/// Errors building a frame to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("text is {0} bytes; a message carries at most {MAX_TEXT_LEN}")]
    TextTooLong(usize),
    #[error("list has {0} ids; a CLIST carries at most 65535")]
    TooManyClients(usize),
}

impl Frame {
    /// A frame with no body (OK, ERRO, OI, FLW, CREQ).
    pub fn bare(kind: Kind, origin: ClientId, dest: ClientId, seq: u16) -> Frame {
        Frame {
            kind,
            origin,
            dest,
            seq,
            body: Body::Empty,
        }
    }

    /// A MSG frame; fails when the text does not fit the u16 length field.
    pub fn msg(
        origin: ClientId,
        dest: ClientId,
        seq: u16,
        text: impl Into<Bytes>,
    ) -> Result<Frame, EncodeError> {
        let text = text.into();
        if text.len() > MAX_TEXT_LEN {
            return Err(EncodeError::TextTooLong(text.len()));
        }
        Ok(Frame {
            kind: Kind::Msg,
            origin,
            dest,
            seq,
            body: Body::Text(text),
        })
    }

    /// A CLIST frame; fails when the list does not fit the u16 count field.
    pub fn clist(
        origin: ClientId,
        dest: ClientId,
        seq: u16,
        clients: Vec<ClientId>,
    ) -> Result<Frame, EncodeError> {
        if clients.len() > u16::MAX as usize {
            return Err(EncodeError::TooManyClients(clients.len()));
        }
        Ok(Frame {
            kind: Kind::Clist,
            origin,
            dest,
            seq,
            body: Body::Clients(clients),
        })
    }

    /// The header of this frame.
    pub fn header(&self) -> Header {
        Header {
            kind: self.kind as u16,
            origin: self.origin,
            dest: self.dest,
            seq: self.seq,
        }
    }

    /// The text of a MSG, if this is one.
    pub fn text(&self) -> Option<&Bytes> {
        match &self.body {
            Body::Text(text) => Some(text),
            _ => None,
        }
    }

    /// What the wire carries after the header: the type decides, so a frame
    /// whose body disagrees with its type (built by hand) still encodes as a
    /// well-formed frame of its type instead of desynchronising the stream.
    /// Oversize bodies are cut to what the u16 count can say.
    fn wire_body(&self) -> WireBody<'_> {
        match (self.kind, &self.body) {
            (Kind::Msg, Body::Text(text)) => WireBody::Text(&text[..text.len().min(MAX_TEXT_LEN)]),
            (Kind::Msg, _) => WireBody::Text(&[]),
            (Kind::Clist, Body::Clients(ids)) => {
                WireBody::Clients(&ids[..ids.len().min(u16::MAX as usize)])
            }
            (Kind::Clist, _) => WireBody::Clients(&[]),
            _ => WireBody::None,
        }
    }

    /// The wire form of this frame as a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out.freeze()
    }

    /// How many bytes the frame at the start of `buf` needs in all, judged
    /// from as much of it as is there: `Ok(None)` until the header (and for
    /// MSG/CLIST the length field) has arrived. Never reads past `buf`.
    #[cfg(feature = "testing")]
    pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ProtoError> {
        let Some(header) = Header::peek(buf) else {
            return Ok(None);
        };
        let Some(kind) = Kind::from_u16(header.kind) else {
            return Err(ProtoError::UnknownType(header));
        };
        Ok(wire_len(kind, buf))
    }

    /// Takes one whole frame off the front of `buf`.
    ///
    /// `Ok(None)`: not enough bytes yet, `buf` untouched. `Err`: the header
    /// names no known type; `buf` is untouched too, since without a known type
    /// there is no way to tell where the frame ends — the stream is lost.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        let Some((view, len)) = FrameView::parse(buf)? else {
            return Ok(None);
        };
        let (kind, origin, dest, seq) = (view.kind, view.origin, view.dest, view.seq);
        let body = match kind {
            Kind::Msg => {
                // The text stays in the buffer it arrived in, shared.
                let mut frame = buf.split_to(len);
                frame.advance(HEADER_LEN + 2);
                Body::Text(frame.freeze())
            }
            Kind::Clist => {
                let ids = view.clients().collect();
                buf.advance(len);
                Body::Clients(ids)
            }
            // Header-only frames (most of the traffic: acks) take no view of
            // the buffer, just the bytes off its front.
            _ => {
                buf.advance(len);
                Body::Empty
            }
        };
        Ok(Some(Frame {
            kind,
            origin,
            dest,
            seq,
            body,
        }))
    }
}

/// A frame read in place: the header fields, and the body as a view of the
/// bytes it arrived in (a MSG's text; a CLIST's ids, two bytes each).
/// Nothing is copied or reference-counted, which is why the server routes
/// these rather than [`Frame`]s: a forwarded MSG's text is copied once, from
/// the input buffer straight into each destination's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameView<'a> {
    pub kind: Kind,
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
    /// The bytes after the count field (MSG, CLIST); empty for the others.
    body: &'a [u8],
}

impl<'a> FrameView<'a> {
    /// The whole frame at the start of `buf`, and the bytes it takes there.
    ///
    /// `Ok(None)`: not enough bytes yet. `Err`: the header names no known
    /// type, so there is no telling where the frame ends. Never reads past
    /// the frame.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Option<(FrameView<'a>, usize)>, ProtoError> {
        let Some(header) = Header::peek(buf) else {
            return Ok(None);
        };
        let Some(kind) = Kind::from_u16(header.kind) else {
            return Err(ProtoError::UnknownType(header));
        };
        let Some(len) = wire_len(kind, buf) else {
            return Ok(None);
        };
        let Some(whole) = buf.get(..len) else {
            return Ok(None);
        };
        let body = match kind {
            Kind::Msg | Kind::Clist => &whole[HEADER_LEN + 2..],
            _ => &[][..],
        };
        let view = FrameView {
            kind,
            origin: header.origin,
            dest: header.dest,
            seq: header.seq,
            body,
        };
        Ok(Some((view, len)))
    }

    /// A MSG made of its fields, as [`Frame::msg`] makes an owned one: for
    /// a message held by the server and sent on as it arrived, without
    /// keeping its bytes in wire order or parsing them again.
    pub fn msg(
        origin: ClientId,
        dest: ClientId,
        seq: u16,
        text: &'a [u8],
    ) -> Result<FrameView<'a>, EncodeError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(EncodeError::TextTooLong(text.len()));
        }
        Ok(FrameView {
            kind: Kind::Msg,
            origin,
            dest,
            seq,
            body: text,
        })
    }

    /// The text of a MSG, if this is one.
    pub fn text(&self) -> Option<&'a [u8]> {
        (self.kind == Kind::Msg).then_some(self.body)
    }

    /// The ids of a CLIST (none for other types).
    pub fn clients(&self) -> impl Iterator<Item = ClientId> + 'a {
        let list = if self.kind == Kind::Clist {
            self.body
        } else {
            &[]
        };
        list.chunks_exact(2)
            .map(|id| u16::from_be_bytes([id[0], id[1]]))
    }

    /// The same frame, owning its body.
    pub fn to_frame(&self) -> Frame {
        let body = match self.kind {
            Kind::Msg => Body::Text(Bytes::copy_from_slice(self.body)),
            Kind::Clist => Body::Clients(self.clients().collect()),
            _ => Body::Empty,
        };
        Frame {
            kind: self.kind,
            origin: self.origin,
            dest: self.dest,
            seq: self.seq,
            body,
        }
    }
}

impl Encode for FrameView<'_> {
    fn encoded_len(&self) -> usize {
        match self.kind {
            Kind::Msg | Kind::Clist => HEADER_LEN + 2 + self.body.len(),
            _ => HEADER_LEN,
        }
    }

    /// The bytes the frame was read from, field by field.
    fn encode_into(&self, out: &mut BytesMut) {
        // The header and count go in as one array: this runs once per
        // destination of every forwarded MSG.
        let mut head = [0u8; HEADER_LEN + 2];
        head[0..2].copy_from_slice(&(self.kind as u16).to_be_bytes());
        head[2..4].copy_from_slice(&self.origin.to_be_bytes());
        head[4..6].copy_from_slice(&self.dest.to_be_bytes());
        head[6..8].copy_from_slice(&self.seq.to_be_bytes());
        let count = match self.kind {
            Kind::Msg => self.body.len(),
            Kind::Clist => self.body.len() / 2,
            _ => return out.extend_from_slice(&head[..HEADER_LEN]),
        };
        head[8..10].copy_from_slice(&(count as u16).to_be_bytes());
        out.reserve(head.len() + self.body.len());
        out.extend_from_slice(&head);
        out.extend_from_slice(self.body);
    }
}

impl fmt::Display for FrameView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_header(f, self.kind, self.origin, self.dest, self.seq)?;
        match self.kind {
            Kind::Msg => write!(f, " {} bytes", self.body.len()),
            Kind::Clist => write!(f, " {} ids", self.body.len() / 2),
            _ => Ok(()),
        }
    }
}

fn write_header(
    f: &mut fmt::Formatter<'_>,
    kind: Kind,
    origin: ClientId,
    dest: ClientId,
    seq: u16,
) -> fmt::Result {
    write!(f, "{kind}(origin {origin}, dest {dest}, seq {seq})")
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_header(f, self.kind, self.origin, self.dest, self.seq)?;
        match &self.body {
            Body::Empty => Ok(()),
            Body::Text(text) => write!(f, " {} bytes", text.len()),
            Body::Clients(ids) => write!(f, " {} ids", ids.len()),
        }
    }
}

/// A program's counter for the frames it originates: starts at 0, +1 each,
/// wrapping after 65535. OK/ERRO echo a received number and never draw one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqCounter {
    next: u16,
}

impl SeqCounter {
    pub fn new() -> SeqCounter {
        SeqCounter { next: 0 }
    }

    /// The number for the next frame, advancing the counter.
    pub fn next_seq(&mut self) -> u16 {
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        seq
    }

    /// The number the next frame will get, without advancing.
    #[cfg(feature = "testing")]
    pub fn peek(&self) -> u16 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_disagrees_with_the_type_is_not_encoded() {
        let mut ok = Frame::bare(Kind::Ok, 1, 2, 3);
        ok.body = Body::Text(Bytes::from_static(b"junk"));
        assert_eq!(&ok.to_bytes()[..], b"\x00\x01\x00\x01\x00\x02\x00\x03");
        let mut msg = Frame::bare(Kind::Msg, 1, 0, 3);
        assert_eq!(msg.encoded_len(), 10);
        assert_eq!(
            &msg.to_bytes()[..],
            b"\x00\x05\x00\x01\x00\x00\x00\x03\x00\x00"
        );
        msg.body = Body::Clients(vec![1]);
        assert_eq!(msg.encoded_len(), 10);
    }

    #[test]
    fn a_frame_encoded_once_is_copied_as_its_own_bytes() {
        let wire = b"\x00\x05\x00\x01\x00\x00\x00\x07\x00\x02hi";
        let (view, used) = FrameView::parse(wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        let mut once = BytesMut::new();
        view.encode_into(&mut once);
        let mut out = BytesMut::from(&b"before"[..]);
        let encoded = Encoded(&once);
        assert_eq!(encoded.encoded_len(), view.encoded_len());
        encoded.encode_into(&mut out);
        encoded.encode_into(&mut out);
        assert_eq!(&out[..], [&b"before"[..], wire, wire].concat());
    }
}
