//! The terminal a client runs in: raw mode for the whole time the line
//! editor reads it (so nothing typed is ever left to the terminal's own line
//! discipline), echo off while a secret is typed, the settings to give
//! back, from whichever thread exits, reads of what was typed, and the
//! terminal's width.

use std::io::{self, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The terminal settings found before raw mode, given back by
/// [`restore_terminal`] and [`exit_process`].
static SAVED_TERMINAL: OnceLock<libc::termios> = OnceLock::new();

/// Bracketed paste on: a paste arrives between `ESC [ 200 ~` and
/// `ESC [ 201 ~`, so that its tabs are kept as text.
const PASTE_ON: &[u8] = b"\x1b[?2004h";
const PASTE_OFF: &[u8] = b"\x1b[?2004l";

/// Puts the terminal on stdin in raw mode (no echo, no line editing by the
/// terminal, no signals from keys; output processing stays on, so LF still
/// starts a new line) and turns bracketed paste on. False when stdin is not
/// a terminal or its settings cannot be read or changed.
pub(super) fn enter_raw_mode() -> bool {
    let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr fills the struct on success, checked before use.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, saved.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: initialised by the successful tcgetattr above.
    let saved = unsafe { saved.assume_init() };
    let mut raw = saved;
    raw.c_iflag &= !(libc::BRKINT | libc::ICRNL | libc::INPCK | libc::ISTRIP | libc::IXON);
    raw.c_cflag |= libc::CS8;
    raw.c_lflag &= !(libc::ECHO | libc::ICANON | libc::IEXTEN | libc::ISIG);
    // Each read returns as soon as one byte is there, with all that are.
    raw.c_cc[libc::VMIN] = 1;
    raw.c_cc[libc::VTIME] = 0;
    let _ = SAVED_TERMINAL.set(saved);
    // SAFETY: tcsetattr reads the struct passed; fd 0 is our stdin.
    if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
        return false;
    }
    restore_on_panic();
    let mut out = io::stdout().lock();
    let _ = out.write_all(PASTE_ON);
    let _ = out.flush();
    true
}

/// A panic on any thread gives the terminal back before the panic message
/// is printed: a shell left in raw mode shows no echo and no line editing.
fn restore_on_panic() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

/// Gives the terminal back as it was found (cooked mode, bracketed paste
/// off); nothing when raw mode was never entered.
pub(super) fn restore_terminal() {
    if let Some(saved) = SAVED_TERMINAL.get() {
        // SAFETY: tcsetattr reads the struct passed; fd 0 is our stdin.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
        }
        let mut out = io::stdout().lock();
        let _ = out.write_all(PASTE_OFF);
        let _ = out.flush();
    }
}

/// Exits the process, first giving the terminal back as it was found (echo
/// on again if a secret was being typed; cooked mode if the line editor
/// had it).
pub fn exit_process(code: i32) -> ! {
    restore_echo();
    restore_terminal();
    std::process::exit(code)
}

/// The settings found when echo was turned off, while an [`EchoOff`]
/// lives: a signal handler cannot reach the guard, but can reach this.
static ECHO_SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Echo off on the terminal on stdin while it lives, so a secret typed
/// there is not shown; on again when dropped (on every return and
/// unwinding) and in [`exit_process`], which a signal handler calls. Line
/// editing by the terminal (canonical mode) stays on, so a read returns
/// one line at most: nothing typed after it is taken from the next reader.
pub struct EchoOff(());

impl EchoOff {
    /// Turns echo off; an error when stdin is not a terminal.
    pub fn new() -> io::Result<EchoOff> {
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the struct on success, checked here.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, termios.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: initialised by the successful tcgetattr above.
        let saved = unsafe { termios.assume_init() };
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
        // Saved before the change, so a signal that comes between the two
        // still finds what to give back.
        *ECHO_SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        // SAFETY: a valid termios for fd 0, as read above.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSAFLUSH, &quiet) } != 0 {
            let e = io::Error::last_os_error();
            ECHO_SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
            return Err(e);
        }
        Ok(EchoOff(()))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        restore_echo();
    }
}

/// Gives back the settings an [`EchoOff`] changed; nothing when none lives.
fn restore_echo() {
    let saved = ECHO_SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(saved) = saved {
        // SAFETY: tcsetattr only reads the struct; fd 0 is our stdin.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &saved);
        }
    }
}

/// Reads what was typed into `buf`, waiting for at least one byte;
/// `Ok(0)` when the terminal is gone (end of file, or EIO after a hangup).
pub(super) fn read_typed(buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: read writes at most buf.len() bytes into buf.
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EIO) => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Whether more typed bytes arrive within `wait`.
pub(super) fn typed_within(wait: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: poll reads and writes the one pollfd passed.
    unsafe { libc::poll(&mut fd, 1, millis) > 0 }
}

/// The terminal's width in columns (80 when it cannot be read).
pub(super) fn terminal_columns() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct passed.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    if rc == 0 && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}
