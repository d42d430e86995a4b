//! The terminal a client runs in: the settings to give back on exit, from
//! whichever thread exits, and the terminal's width.

use std::io::{self, Write};
use std::sync::OnceLock;

/// The terminal settings found before the line editor started, restored by
/// [`exit_process`] when a client exits from another thread mid-edit.
pub(super) static SAVED_TERMINAL: OnceLock<libc::termios> = OnceLock::new();

/// Exits the process, first giving the terminal back in the state the line
/// editor found it (cooked mode, bracketed paste off).
pub fn exit_process(code: i32) -> ! {
    if let Some(saved) = SAVED_TERMINAL.get() {
        // SAFETY: tcsetattr reads the struct passed; fd 0 is our stdin.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
        }
        let mut out = io::stdout().lock();
        let _ = out.write_all(b"\x1b[?2004l");
        let _ = out.flush();
    }
    std::process::exit(code)
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
