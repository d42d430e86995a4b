//! WebSocket frames as bytes (RFC 6455, 5.2): the header of a frame a
//! client sent, its unmasking, and the header of a binary message the
//! server sends. No state and no verdicts: the session (`websocket.rs`)
//! decides what a frame means.

use bytes::BytesMut;

/// The first header byte of a final binary frame with no reserved bit: FIN
/// (0x80) and opcode 2.
pub(super) const FIN_BINARY: u8 = 0x82;
pub(super) const OPCODE_CONTINUATION: u8 = 0x0;
pub(super) const OPCODE_TEXT: u8 = 0x1;
pub(super) const OPCODE_BINARY: u8 = 0x2;

/// A WebSocket frame header as it arrived (RFC 6455, 5.2).
#[derive(Debug)]
pub(super) struct FrameHead {
    pub(super) fin: bool,
    /// The three reserved bits; no extension is negotiated, so not 0 is an
    /// error (tungstenite's to report).
    rsv: u8,
    pub(super) opcode: u8,
    pub(super) mask: Option<[u8; 4]>,
    pub(super) payload_len: u64,
    /// Bytes of the header itself.
    pub(super) len: usize,
}

impl FrameHead {
    /// The header at the start of `bytes`, or `None` until it is whole.
    pub(super) fn parse(bytes: &[u8]) -> Option<FrameHead> {
        let len = FrameHead::len_from(bytes);
        let head = bytes.get(..len)?;
        let (first, second) = (head[0], head[1]);
        let extended = &head[2..len - if second & 0x80 != 0 { 4 } else { 0 }];
        let payload_len = match second & 0x7f {
            126 => u64::from(u16::from_be_bytes([extended[0], extended[1]])),
            127 => u64::from_be_bytes(extended.try_into().ok()?),
            short => u64::from(short),
        };
        Some(FrameHead {
            fin: first & 0x80 != 0,
            rsv: first & 0x70,
            opcode: first & 0x0f,
            mask: (second & 0x80 != 0).then(|| {
                let key = &head[len - 4..];
                [key[0], key[1], key[2], key[3]]
            }),
            payload_len,
            len,
        })
    }

    /// The header's length as far as `bytes` tell it: 2 until the second
    /// byte (length form and mask bit) has arrived.
    pub(super) fn len_from(bytes: &[u8]) -> usize {
        let Some(&second) = bytes.get(1) else {
            return 2;
        };
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + if second & 0x80 != 0 { 4 } else { 0 }
    }

    /// Header and payload.
    pub(super) fn frame_len(&self) -> usize {
        self.len + self.payload_len as usize
    }

    /// A whole binary message in one frame, with no reserved bit set.
    pub(super) fn is_final_binary(&self) -> bool {
        self.fin && self.rsv == 0 && self.opcode == OPCODE_BINARY
    }
}

/// Removes the client's mask (RFC 6455, 5.3), four bytes at a time.
#[inline]
pub(super) fn unmask(payload: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let mut words = payload.chunks_exact_mut(4);
    for chunk in &mut words {
        let masked = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        chunk.copy_from_slice(&(masked ^ word).to_ne_bytes());
    }
    for (byte, key) in words.into_remainder().iter_mut().zip(key) {
        *byte ^= key;
    }
}

/// The WebSocket header of a server-to-client binary message of `len`
/// bytes (unmasked, final, opcode 2), appended to `out`. Data frames are
/// framed here rather than through tungstenite, so that a forwarded frame
/// is encoded straight into the output as on TCP, with no copy in between.
#[inline]
pub fn put_binary_header(len: usize, out: &mut BytesMut) {
    if len < 126 {
        out.extend_from_slice(&[FIN_BINARY, len as u8]);
    } else if len <= u16::MAX as usize {
        out.extend_from_slice(&[FIN_BINARY, 126]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[FIN_BINARY, 127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Bytes `put_binary_header` writes for a message of `len` bytes.
#[inline]
pub fn binary_header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_headers_use_the_shortest_length_form() {
        for (len, want) in [
            (0, vec![0x82, 0]),
            (125, vec![0x82, 125]),
            (126, vec![0x82, 126, 0, 126]),
            (65535, vec![0x82, 126, 0xff, 0xff]),
            (65536, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = BytesMut::new();
            put_binary_header(len, &mut out);
            assert_eq!(&out[..], &want[..], "{len}");
            assert_eq!(binary_header_len(len), want.len());
        }
    }
}
