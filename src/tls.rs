//! TLS on the server's one port and in the clients: the server's identity
//! read from PEM files (`identity`), one encrypted session below a
//! connection, fed from the connection's own buffers (`session`), the
//! clients' side over blocking sockets (`client`: where and whom to trust;
//! `stream`: a connection the clients' threads share), and throwaway
//! certificates for `evchat cert` (`generate`), and the threads that run
//! server handshakes off the event loop (`workers`). rustls is sans-I/O: nothing
//! here reads or writes a socket of the server's, and the connection above
//! hands the session its bytes as it hands a WebSocket its bytes, so the
//! event loop and the router never see ciphertext. PROTOCOL.md ("TLS
//! transport") is the contract.

pub mod client;
pub mod generate;
mod identity;
mod session;
mod stream;
mod workers;

pub use identity::{IdentityError, TlsAcceptor};
pub use session::{
    HandshakeJob, HandshakeStep, MAX_HANDSHAKE_JOB, TlsFailure, TlsSession, TlsStatus,
};
pub use stream::ClientStream;
pub use workers::{Done, Panicked, Workers};

/// The one crypto provider, in one place: `ring` builds with the C compiler
/// alone (aws-lc-rs, rustls' default, needs cmake). rustls 0.23.48 marks
/// it deprecated for want of post-quantum key exchange, which only
/// aws-lc-rs has; the classical suites it offers are still rustls' own.
#[allow(deprecated)]
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Bytes read from a certificate or key file at most: a real chain is a
/// few kilobytes, so a larger file is a mistake, refused before it is read.
const MAX_PEM_FILE: u64 = 1 << 20;

/// Reads a PEM file whole, refusing one past [`MAX_PEM_FILE`].
fn read_pem_file(path: &std::path::Path) -> Result<Vec<u8>, std::io::Error> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_PEM_FILE} bytes: not a certificate or key file"
        )));
    }
    Ok(bytes)
}
