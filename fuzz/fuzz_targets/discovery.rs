//! Fuzz target for LAN discovery's datagrams (`evchat::discovery`): the
//! bytes are one datagram, read both as a query (what `server --announce`
//! receives from anyone) and as an answer (what `evchat find` receives).
//!
//! * Decoding never panics, whatever the bytes.
//! * A query is accepted only at exactly 128 bytes, and encodes back to
//!   the very bytes it was read from (nothing in it is ignored).
//! * An answer encodes back to its bytes too, is never longer than a
//!   query (no amplification), and its name is 1 to 63 bytes without
//!   control characters.
#![no_main]

use evchat::discovery::{Answer, MAX_ANSWER_LEN, MAX_NAME, QUERY_LEN, Query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(query) = Query::decode(data) {
        assert_eq!(data.len(), QUERY_LEN);
        assert_eq!(query.encode()[..], *data, "a query is its bytes");
    }
    if let Ok(answer) = Answer::decode(data) {
        assert!(data.len() <= MAX_ANSWER_LEN && MAX_ANSWER_LEN < QUERY_LEN);
        assert!((1..=MAX_NAME).contains(&answer.name.len()));
        assert!(!answer.name.chars().any(char::is_control));
        assert_eq!(answer.encode(), data, "an answer is its bytes");
    }
});
