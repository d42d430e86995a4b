//! systemd's readiness protocol (sd_notify(3)) without libsystemd: a state
//! line such as `READY=1` sent as one datagram to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or with a leading `@` a name in the abstract
//! namespace). Without that variable, as outside a `Type=notify` unit,
//! nothing is sent. The server says `READY=1` once it listens and
//! `STOPPING=1` when a shutdown begins (contrib/evchat.service).

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` to the service manager, if one asked for it; `Ok(false)`
/// when none did.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let target = target.into_encoded_bytes();
    let socket = UnixDatagram::unbound()?;
    match target.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            use std::os::unix::ffi::OsStrExt;
            let path = std::ffi::OsStr::from_bytes(&target);
            socket.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(true)
}
