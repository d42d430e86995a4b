//! `evchat user` against real files: what `add`, `list` and `remove` print
//! and write (exact bytes, mode 0600), a token shown once and stored as
//! its SHA-256, a password hashed so that the server's own check accepts
//! it, the prompt without echo on a terminal (and echo back after Ctrl-C),
//! and bad input: bad names and roles, missing files, a file that is not
//! private, a symbolic link.

use crate::util::*;
use evchat::auth::Accounts;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::SystemTime;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// What a finished `evchat user` run left.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `evchat user ARGS` with `stdin` piped in (closed at once if None).
fn user(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(bin("evchat"))
        .arg("user")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        // A run that fails on its arguments exits without reading: a
        // broken pipe here is that, not a failure.
        let _ = input.write_all(text.as_bytes());
    }
    drop(input);
    let done = child.wait_with_output().unwrap();
    Run {
        code: done.status.code(),
        stdout: String::from_utf8(done.stdout).unwrap(),
        stderr: String::from_utf8(done.stderr).unwrap(),
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Whether `text` is `count` characters of `allowed`.
fn all_of(text: &str, count: usize, allowed: impl Fn(char) -> bool) -> bool {
    text.chars().count() == count && text.chars().all(allowed)
}

#[test]
fn add_with_a_password_from_stdin_creates_a_private_file_the_server_accepts() {
    let dir = TempDir::new("user-add-password");
    let file = dir.path().join("accounts");
    let run = user(
        &["add", s(&file), "alice", "--roles", "view,emit"],
        Some("correct horse\n"),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "evchat user: added alice (view,emit; password)\n"
    );
    assert_eq!(mode(&file), 0o600);
    // alice view,emit $argon2id$v=19$m=19456,t=2,p=1$<22 b64>$<43 b64>
    let text = fs::read_to_string(&file).unwrap();
    let line = text.strip_suffix('\n').expect("one line");
    let rest = line
        .strip_prefix("alice view,emit $argon2id$v=19$m=19456,t=2,p=1$")
        .unwrap_or_else(|| panic!("{line}"));
    let (salt, hash) = rest.split_once('$').unwrap();
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    assert!(all_of(salt, 22, b64) && all_of(hash, 43, b64), "{line}");
    let accounts = Accounts::load(&file).unwrap();
    let now = SystemTime::now();
    assert_eq!(
        accounts
            .verify("alice", b"correct horse", now)
            .unwrap()
            .name
            .as_str(),
        "alice"
    );
    assert!(accounts.verify("alice", b"correct horse\n", now).is_err());
}

#[test]
fn add_with_token_prints_it_once_and_stores_only_its_sha256() {
    let dir = TempDir::new("user-add-token");
    let file = dir.path().join("accounts");
    let run = user(
        &[
            "add",
            s(&file),
            "bot",
            "--roles",
            "broadcast,emit",
            "--token",
            "--expires",
            "2027-01-04T09:00:00Z",
        ],
        None,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stderr,
        "evchat user: added bot (emit,broadcast; token, until 2027-01-04T09:00:00Z)\n"
    );
    let token = run.stdout.strip_suffix('\n').unwrap();
    let hex = token.strip_prefix("evt_").unwrap();
    assert!(
        all_of(hex, 64, |c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{token}"
    );
    let digest: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        format!("bot emit,broadcast sha256:{digest} 2027-01-04T09:00:00Z\n")
    );
    assert_eq!(mode(&file), 0o600);
    // Never in the file: the token itself.
    assert!(!fs::read_to_string(&file).unwrap().contains(hex));
}

/// An account that expired before it was made could never sign in: a
/// typo, refused before anything is asked or written.
#[test]
fn an_expiry_already_passed_is_refused_and_writes_nothing() {
    let dir = TempDir::new("user-add-past");
    let file = dir.path().join("accounts");
    let run = user(
        &[
            "add",
            s(&file),
            "dave",
            "--roles",
            "admin",
            "--token",
            "--expires",
            "2020-01-01T00:00:00Z",
        ],
        None,
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "evchat user: --expires 2020-01-01T00:00:00Z has passed: give a later time, or leave \
         --expires out\n"
    );
    assert!(!file.exists());
}

#[test]
fn an_age_for_expires_counts_from_now() {
    let dir = TempDir::new("user-age");
    let file = dir.path().join("accounts");
    let unix = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let before = unix();
    let run = user(
        &[
            "add",
            s(&file),
            "bot",
            "--roles",
            "emit",
            "--token",
            "--expires",
            "30d",
        ],
        None,
    );
    let after = unix();
    assert_eq!(run.code, Some(0), "{run:?}");
    let accounts = Accounts::load(&file).unwrap();
    let expires = accounts.get("bot").unwrap().expires.unwrap();
    let thirty_days = 30 * 86_400;
    assert!(
        (before + thirty_days..=after + thirty_days).contains(&expires.unix()),
        "{expires} not 30 days after a time in [{before}, {after}]"
    );
    assert_eq!(
        run.stderr,
        format!("evchat user: added bot (emit; token, until {expires})\n")
    );
}

#[test]
fn add_replaces_an_account_on_its_line_and_keeps_comments() {
    let dir = TempDir::new("user-replace");
    let file = dir.path().join("accounts");
    write_private(
        &file,
        &format!("# team\nalice view {DIGEST}\n\nbob view {DIGEST}\n"),
    );
    let run = user(
        &["add", s(&file), "ALICE", "--roles", "admin", "--token"],
        None,
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stderr, "evchat user: replaced ALICE (admin; token)\n");
    let text = fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(
        (lines[0], lines[2], lines[3]),
        ("# team", "", &*format!("bob view {DIGEST}"))
    );
    assert!(lines[1].starts_with("ALICE admin sha256:"), "{text}");
    assert_ne!(lines[1], format!("ALICE admin {DIGEST}"));
}

#[test]
fn list_shows_names_roles_kinds_and_expiry_never_a_secret() {
    let dir = TempDir::new("user-list");
    let file = dir.path().join("accounts");
    let phc =
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY";
    write_private(
        &file,
        &format!(
            "# comment\nalice view,emit,broadcast,admin {phc}\nbot emit {DIGEST} 9999-12-31T23:59:59Z\n\
             old view {DIGEST} 2020-01-01T00:00:00Z\n"
        ),
    );
    let run = user(&["list", s(&file)], None);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.stdout,
        "NAME   ROLES                      SECRET    EXPIRES\n\
         alice  view,emit,broadcast,admin  password  -\n\
         bot    emit                       token     9999-12-31T23:59:59Z\n\
         old    view                       token     2020-01-01T00:00:00Z (expired)\n"
    );
}

#[test]
fn remove_deletes_one_account_and_nothing_else() {
    let dir = TempDir::new("user-remove");
    let file = dir.path().join("accounts");
    write_private(
        &file,
        &format!("# team\nalice view {DIGEST}\nbob emit {DIGEST}\n"),
    );
    let run = user(&["remove", s(&file), "Alice"], None);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        (run.stdout.as_str(), run.stderr.as_str()),
        ("", "evchat user: removed alice\n")
    );
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        format!("# team\nbob emit {DIGEST}\n")
    );
    assert_eq!(mode(&file), 0o600);
    let again = user(&["remove", s(&file), "alice"], None);
    assert_eq!(again.code, Some(1));
    assert_eq!(
        again.stderr,
        format!("evchat user: {}: no account named alice\n", s(&file))
    );
}

#[test]
fn bad_names_and_roles_are_usage_errors_and_write_nothing() {
    let dir = TempDir::new("user-bad-args");
    let file = dir.path().join("accounts");
    for (args, message) in [
        (
            vec!["add", s(&file), "1alice", "--roles", "view"],
            "error: invalid value '1alice' for '<NAME>': the name must start with a letter A-Z or a-z\n",
        ),
        (
            vec!["add", s(&file), "al\u{202e}ice", "--roles", "view"],
            "error: invalid value 'al\u{202e}ice' for '<NAME>': the name may only hold letters A-Z and a-z, digits, '_', '.' and '-'\n",
        ),
        (
            vec!["add", s(&file), "alice", "--roles", "view,root"],
            "error: invalid value 'view,root' for '--roles <ROLES>': 'root' is not a role: the roles are view, emit, broadcast and admin\n",
        ),
        (
            vec![
                "add",
                s(&file),
                "alice",
                "--roles",
                "view",
                "--expires",
                "soon",
            ],
            "error: invalid value 'soon' for '--expires <WHEN>': not an age (90s, 15m, 12h, 30d, 8w) nor a UTC time 2027-01-04T09:00:00Z\n",
        ),
    ] {
        let run = user(&args, Some("pw\n"));
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(run.stderr.starts_with(message), "{args:?}: {}", run.stderr);
        assert!(!file.exists());
    }
}

#[test]
fn bad_passwords_on_stdin_change_nothing() {
    let dir = TempDir::new("user-bad-password");
    let file = dir.path().join("accounts");
    let long = format!("{}\n", "x".repeat(257));
    for (stdin, message) in [
        (
            "",
            "evchat user: no password on standard input; nothing changed\n",
        ),
        (
            "\n",
            "evchat user: the password is empty; nothing changed\n",
        ),
        (
            "evt_0123\n",
            "evchat user: a password may not start with \"evt_\" (that marks a token); nothing changed\n",
        ),
        (
            &long,
            "evchat user: the password is longer than 256 bytes; nothing changed\n",
        ),
    ] {
        let run = user(&["add", s(&file), "alice", "--roles", "view"], Some(stdin));
        assert_eq!(
            (run.code, run.stderr.as_str()),
            (Some(1), message),
            "{stdin:?}"
        );
        assert!(!file.exists());
    }
}

#[test]
fn list_and_remove_of_a_missing_file_fail() {
    let dir = TempDir::new("user-missing");
    let file = dir.path().join("nope");
    for args in [vec!["list", s(&file)], vec!["remove", s(&file), "alice"]] {
        let run = user(&args, None);
        assert_eq!(run.code, Some(1), "{args:?}");
        assert_eq!(
            run.stderr,
            format!(
                "evchat user: {}: No such file or directory (os error 2)\n",
                s(&file)
            )
        );
        assert!(!file.exists());
    }
}

#[test]
fn a_file_readable_by_others_or_a_symlink_is_refused_and_left_alone() {
    let dir = TempDir::new("user-not-private");
    let file = dir.path().join("accounts");
    let text = format!("alice view {DIGEST}\n");
    fs::write(&file, &text).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for args in [
        vec!["list", s(&file)],
        vec!["remove", s(&file), "alice"],
        vec!["add", s(&file), "bob", "--roles", "view", "--token"],
    ] {
        let run = user(&args, None);
        assert_eq!(run.code, Some(1), "{args:?}");
        assert_eq!(
            run.stdout, "",
            "{args:?}: no token shown when nothing was saved"
        );
        assert_eq!(
            run.stderr,
            format!(
                "evchat user: {0}: mode 0640 lets group or others read or write it; the \
                 secrets' hashes must stay private (chmod 600 {0})\n",
                s(&file)
            )
        );
    }
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    for args in [
        vec!["list", s(&link)],
        vec!["add", s(&link), "bob", "--roles", "view", "--token"],
    ] {
        let run = user(&args, None);
        assert_eq!(run.code, Some(1), "{args:?}");
        assert_eq!(
            run.stderr,
            format!(
                "evchat user: {}: a symbolic link; give the file itself\n",
                s(&link)
            )
        );
    }
    assert_eq!(fs::read_to_string(&file).unwrap(), text);
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_bad_line_is_named_by_number_without_its_content() {
    let dir = TempDir::new("user-bad-line");
    let file = dir.path().join("accounts");
    write_private(
        &file,
        &format!("alice view {DIGEST}\nbob view MyPlainPassword\n"),
    );
    let run = user(&["list", s(&file)], None);
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.stderr,
        format!(
            "evchat user: {}: line 2: the secret is neither an argon2id PHC string \
             ($argon2id$...) nor sha256: and 64 hex digits\n",
            s(&file)
        )
    );
}

mod terminal {
    use super::*;
    use rexpect::process::WaitStatus;
    use rexpect::session::{PtySession, spawn_command};

    fn spawn_in_terminal(script: &str) -> PtySession {
        let mut command = Command::new("sh");
        command.args(["-c", script]).env("TERM", "xterm");
        spawn_command(command, Some(TIMEOUT.as_millis() as u64)).expect("spawn in a pty")
    }

    #[test]
    fn the_password_is_typed_twice_without_echo() {
        let dir = TempDir::new("user-tty");
        let file = dir.path().join("accounts");
        let mut p = spawn_in_terminal(&format!(
            "stty echo; exec {} user add {} alice --roles view",
            bin("evchat"),
            s(&file)
        ));
        p.exp_string("Password for alice: ").unwrap();
        p.send_line("typed-secret").unwrap();
        let between = p.exp_string("Again: ").unwrap();
        p.send_line("typed-secret").unwrap();
        let after = p
            .exp_string("evchat user: added alice (view; password)")
            .unwrap();
        p.exp_eof().unwrap();
        assert!(
            !between.contains("typed") && !after.contains("typed"),
            "{between:?} {after:?}"
        );
        match p.process().wait().unwrap() {
            WaitStatus::Exited(_, 0) => {}
            other => panic!("ended with {other:?}"),
        }
        let accounts = Accounts::load(&file).unwrap();
        assert!(
            accounts
                .verify("alice", b"typed-secret", SystemTime::now())
                .is_ok()
        );
    }

    #[test]
    fn differing_passwords_and_ctrl_c_leave_the_echo_on() {
        let dir = TempDir::new("user-tty-cancel");
        let file = dir.path().join("accounts");
        // Echo on first (rexpect's terminal starts without it). The shell's
        // trap is reset in the child, so evchat gets the Ctrl-C; the shell
        // survives it and shows the terminal's settings afterwards.
        let mut p = spawn_in_terminal(&format!(
            "stty echo; trap 'echo' INT; {0} user add {1} alice --roles view; echo status=$?; \
             {0} user add {1} alice --roles view; echo status=$?; stty -a",
            bin("evchat"),
            s(&file)
        ));
        p.exp_string("Password for alice: ").unwrap();
        p.send_line("one").unwrap();
        p.exp_string("Again: ").unwrap();
        p.send_line("two").unwrap();
        p.exp_string("evchat user: the two passwords differ; nothing changed")
            .unwrap();
        p.exp_string("status=1").unwrap();
        p.exp_string("Password for alice: ").unwrap();
        p.send_control('c').unwrap();
        p.exp_string("status=130").unwrap();
        let settings = p.exp_eof().unwrap();
        let words: Vec<&str> = settings.split_whitespace().collect();
        assert!(words.contains(&"echo"), "{settings}");
        assert!(!words.contains(&"-echo"), "{settings}");
        assert!(!file.exists());
    }
}
