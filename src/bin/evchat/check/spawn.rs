//! `evchat check --spawn 'COMMAND {port}'`: the server under test started
//! afresh for one check and stopped after it, so that a server that dies
//! on one rule still gets a verdict on every other. This file owns the
//! child's life: the port it is given, the wait until it listens, what it
//! printed (the last lines, for a report of why it did not start), and
//! stopping it (SIGTERM to its process group, SIGKILL after a bound).
//!
//! The port: the kernel picks a free one (a socket bound to port 0 on
//! 127.0.0.1, closed before the command runs), and it is written where the
//! command says `{port}`. Another process could take it in between; a
//! command that then exits saying the address is in use is started again
//! on a new port, up to [`START_ATTEMPTS`] times. (A server of this
//! protocol need not print its port, so reading it from the server's output
//! is no way that works for every server.)
//!
//! "Listening" is read from the kernel's socket table (`/proc/net/tcp` and
//! `tcp6`: a socket in LISTEN state on the port), not found by connecting:
//! the servers `--spawn` is for often die when a client disconnects, and a
//! test connection would be that client.
//!
//! The server's own process group keeps a Ctrl-C at the terminal from
//! reaching it directly, so [`Spawner::new`] has Ctrl-C (and SIGTERM) kill
//! the running server's group before `evchat check` exits: no server is
//! left behind.

use std::collections::VecDeque;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts of one server before a port that is in use is given up.
const START_ATTEMPTS: usize = 3;
/// How long a stopped server has after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the socket table is read while waiting for the server.
const LISTEN_POLL: Duration = Duration::from_millis(20);
/// The output lines kept for a report, and the bytes kept of each.
const TAIL_LINES: usize = 5;
const TAIL_LINE_BYTES: usize = 200;
/// Where the command says which port to listen on.
pub const PORT_MARK: &str = "{port}";
/// The process group of the server running now (0: none), for the
/// interrupt handler.
static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);

/// How to start the server under test.
pub struct Spawner {
    /// The shell command, with `{port}` in it.
    command: String,
    /// How long a started server has to listen.
    wait: Duration,
}

impl Spawner {
    /// A spawner for `command`, which must say where the port goes.
    pub fn new(command: &str, wait: Duration) -> Result<Spawner, String> {
        if !command.contains(PORT_MARK) {
            return Err(format!(
                "--spawn needs {PORT_MARK} in the command, where the port to listen on goes \
                 (e.g. --spawn './server {PORT_MARK}')"
            ));
        }
        // Exit status 130, as for an interrupted command.
        ctrlc::set_handler(|| {
            let group = RUNNING_GROUP.swap(0, Ordering::SeqCst);
            if group != 0 {
                // SAFETY: kill(2) with a process group id and a signal number.
                unsafe { libc::kill(-group, libc::SIGKILL) };
            }
            std::process::exit(130);
        })
        .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;
        Ok(Spawner {
            command: command.to_string(),
            wait,
        })
    }

    pub fn command(&self) -> &str {
        &self.command
    }

    /// Starts the command on a free port and waits (at most `wait`) until
    /// it listens there.
    pub fn start(&self) -> Result<Running, String> {
        let mut attempt = 1;
        loop {
            match self.start_once()? {
                Started::Listening(running) => return Ok(running),
                Started::PortInUse(_) if attempt < START_ATTEMPTS => attempt += 1,
                Started::PortInUse(why) => return Err(why),
            }
        }
    }

    fn start_once(&self) -> Result<Started, String> {
        let port = free_port()?;
        let command = self.command.replace(PORT_MARK, &port.to_string());
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: stopping it reaches whatever the shell started.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run /bin/sh -c '{command}': {e}"))?;
        RUNNING_GROUP.store(child.id() as i32, Ordering::SeqCst);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (drained, pipes_closed) = channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tail = tail.clone();
            let drained = drained.clone();
            std::thread::spawn(move || {
                keep_tail(pipe, &tail);
                let _ = drained.send(());
            });
        }
        let mut running = Running {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            tail,
            pipes_closed,
            stopped: false,
        };
        let deadline = Instant::now() + self.wait;
        loop {
            if let Ok(Some(status)) = running.child.try_wait() {
                // Its output may still be on the way: the pipes close when
                // every process of the group that holds them has gone.
                running.stop();
                let said = running.last_output();
                let why = format!(
                    "'{command}' exited ({status}) before listening on port {port}{}",
                    said_suffix(&said)
                );
                if said.to_ascii_lowercase().contains("in use") {
                    return Ok(Started::PortInUse(why));
                }
                return Err(why);
            }
            if listening(port) {
                return Ok(Started::Listening(running));
            }
            if Instant::now() >= deadline {
                running.stop();
                let said = running.last_output();
                return Err(format!(
                    "'{command}' did not listen on port {port} within {:?}{}",
                    self.wait,
                    said_suffix(&said)
                ));
            }
            std::thread::sleep(LISTEN_POLL);
        }
    }
}

enum Started {
    Listening(Running),
    /// It exited saying its address is in use: worth a new port.
    PortInUse(String),
}

fn said_suffix(said: &str) -> String {
    if said.is_empty() {
        "; it printed nothing".to_string()
    } else {
        format!("; its last output: {said}")
    }
}

/// A server started for one check; stopped when dropped.
pub struct Running {
    child: Child,
    pub addr: SocketAddr,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// One message from each pipe's reader when that pipe has closed.
    pipes_closed: Receiver<()>,
    stopped: bool,
}

impl Running {
    /// SIGTERM to its process group, SIGKILL if it is still there after
    /// [`STOP_GRACE`]; then it is reaped.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        RUNNING_GROUP.store(0, Ordering::SeqCst);
        let group = -(self.child.id() as i32);
        // SAFETY: kill(2) with a process group id and a signal number.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(LISTEN_POLL);
        }
        // Whatever is left of the group, the shell's children included.
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// The last lines it printed (stdout and stderr), joined by " | ";
    /// once stopped, after both pipes are read to their end (a process
    /// that left the group may hold them: that wait is bounded).
    fn last_output(&self) -> String {
        let deadline = Instant::now() + STOP_GRACE;
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.pipes_closed.recv_timeout(left).is_err() {
                break;
            }
        }
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on now, chosen by the kernel.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))
}

/// Is any socket listening on TCP `port` (IPv4 or IPv6, any address)?
fn listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .any(|table| std::fs::read_to_string(table).is_ok_and(|text| listening_in(&text, port)))
}

/// Does a `/proc/net/tcp` table hold a LISTEN socket (state 0A) on `port`?
/// Its lines: `sl local_address rem_address st ...`, the local address as
/// `HEXADDR:HEXPORT`.
fn listening_in(table: &str, port: u16) -> bool {
    let want = format!("{port:04X}");
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        state == Some("0A") && local.and_then(|l| l.rsplit(':').next()) == Some(want.as_str())
    })
}

/// Keeps the last [`TAIL_LINES`] lines read from `pipe` (each cut to
/// [`TAIL_LINE_BYTES`]), until it closes: bounded, whatever it prints.
fn keep_tail(mut pipe: Box<dyn Read + Send>, tail: &Mutex<VecDeque<String>>) {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    let push = |line: &mut Vec<u8>| {
        let text = String::from_utf8_lossy(line).trim().to_string();
        line.clear();
        if text.is_empty() {
            return;
        }
        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    };
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &chunk[..n] {
            if byte == b'\n' {
                push(&mut line);
            } else if line.len() < TAIL_LINE_BYTES {
                line.push(byte);
            }
        }
    }
    push(&mut line);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when \
                         retrnsmt   uid  timeout inode\n   \
                         0: 0100007F:1388 00000000:0000 0A 00000000:00000000 00:00000000 \
                         00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n   \
                         1: 0100007F:1389 0100007F:9C40 01 00000000:00000000 00:00000000 \
                         00000000     0        0 2 1 0000000000000000 20 4 30 10 -1\n";

    #[test]
    fn a_listening_socket_is_found_by_its_port() {
        assert!(listening_in(TABLE, 5000));
    }

    #[test]
    fn an_established_socket_is_not_listening() {
        assert!(!listening_in(TABLE, 5001));
        assert!(!listening_in(TABLE, 0x9C40));
    }

    #[test]
    fn a_command_without_the_port_mark_is_refused() {
        let err = Spawner::new("./server 5000", Duration::from_secs(1))
            .err()
            .expect("refused");
        assert!(
            err.starts_with("--spawn needs {port} in the command"),
            "{err}"
        );
    }
}
