//! Frames written out byte by byte, independently of the codec, for tests
//! that must say exactly what goes on the wire (including what the codec
//! would refuse to build, such as unknown types).

use evchat::proto::Kind;

/// A header with a raw type field (for unknown types).
pub fn raw_hdr(kind: u16, origin: u16, dest: u16, seq: u16) -> Vec<u8> {
    [kind, origin, dest, seq]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

/// The 8-byte header alone: a whole frame for OK, ERRO, OI, FLW and CREQ,
/// the start of one for MSG and CLIST.
pub fn hdr(kind: Kind, origin: u16, dest: u16, seq: u16) -> Vec<u8> {
    raw_hdr(kind as u16, origin, dest, seq)
}

pub fn msg(origin: u16, dest: u16, seq: u16, text: &[u8]) -> Vec<u8> {
    let mut bytes = hdr(Kind::Msg, origin, dest, seq);
    bytes.extend_from_slice(&(text.len() as u16).to_be_bytes());
    bytes.extend_from_slice(text);
    bytes
}

pub fn clist(origin: u16, dest: u16, seq: u16, ids: &[u16]) -> Vec<u8> {
    let mut bytes = hdr(Kind::Clist, origin, dest, seq);
    bytes.extend_from_slice(&(ids.len() as u16).to_be_bytes());
    for id in ids {
        bytes.extend_from_slice(&id.to_be_bytes());
    }
    bytes
}

/// Asserts `got` is `want`, showing both in hex if not.
pub fn assert_bytes(want: &[u8], got: &[u8]) {
    if got != want {
        panic!("bytes differ\n want: {}\n  got: {}", hex(want), hex(got));
    }
}

/// Bytes as hex pairs, the first 64 of them, for failure messages.
pub fn hex(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(64).map(|b| format!("{b:02x}")).collect();
    let more = if bytes.len() > 64 {
        format!(" … ({} bytes)", bytes.len())
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(" "))
}
