//! The page in a real browser: Debian's headless Chromium, driven over the
//! DevTools protocol (`headless_chrome`), against the real `server`, with the
//! real `exhibitor` and `emitter` binaries on the other end. Every wait is on
//! a DOM condition (a MutationObserver in the page, with a deadline) or on a
//! line of a binary's output, never a sleep.
//!
//! Chromium is required: without /usr/bin/chromium this test fails with the
//! command that installs it, except when a developer sets
//! `EVCHAT_SKIP_BROWSER=1` outside CI (never when `CI=true`).

use crate::util::{Raw, ReservedPort, Rng, Server, TempDir, expect_exact, hdr, msg, raw_hdr};
use evchat::auth::{Account, Accounts, Credential, Name, Roles, Secret};
use evchat::cli::escape_text;
use evchat::proto::ext::{
    ExtFrame, FLAG_QUEUE, Hello, HelloAck, Join, KICK, Leave, ROOMS, RoomAck, RoomEntry, RoomList,
    SecretBytes, Tell, Waiting, Who,
};
use evchat::proto::{Frame, Header, Kind};
use headless_chrome::protocol::cdp::Log::LogEntryLevel;
use headless_chrome::protocol::cdp::Runtime::ConsoleAPICalledEventTypeOption as ConsoleType;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::{Emulation, Page};
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the page may take to reach a state the test waits for. Longer
/// than util's TIMEOUT: a reconnection waits out a backoff of 1 s or 2 s first.
const PAGE_WAIT_MS: u64 = 20_000;
const DESKTOP: (u32, u32) = (1000, 640);
const PHONE: (u32, u32) = (390, 740);

/// The browser to drive, or None when the developer asked to skip.
fn chromium() -> Option<PathBuf> {
    let env = |name| std::env::var(name).ok();
    match find_browser(
        Path::new(CHROMIUM),
        env("CI").as_deref(),
        env("EVCHAT_SKIP_BROWSER").as_deref(),
    ) {
        Ok(Some(path)) => Some(path),
        Ok(None) => {
            eprintln!("browser test skipped: {CHROMIUM} missing and EVCHAT_SKIP_BROWSER=1");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

/// The decision behind [`chromium`], given the path and the two variables:
/// the browser, a skip (developer's explicit choice, never in CI), or why
/// the test must fail.
fn find_browser(
    path: &Path,
    ci: Option<&str>,
    skip: Option<&str>,
) -> Result<Option<PathBuf>, String> {
    if path.exists() {
        return Ok(Some(path.to_path_buf()));
    }
    if ci != Some("true") && skip == Some("1") {
        return Ok(None);
    }
    Err(format!(
        "{} not found: the browser test needs Debian's Chromium \
         (`apt-get install -y --no-install-recommends chromium`; .ci/run does this). \
         Outside CI, EVCHAT_SKIP_BROWSER=1 skips this test.",
        path.display()
    ))
}

#[test]
fn a_missing_browser_fails_the_test_unless_a_developer_skips_it() {
    let missing = Path::new("/nonexistent/chromium");
    let fails = |ci, skip| {
        let why = find_browser(missing, ci, skip).expect_err("must fail");
        assert!(
            why.contains("apt-get install -y --no-install-recommends chromium"),
            "{why}"
        );
    };
    fails(None, None);
    fails(Some("true"), None);
    // CI never skips, whatever the developer variable says.
    fails(Some("true"), Some("1"));
    fails(None, Some("yes"));
    assert_eq!(find_browser(missing, None, Some("1")), Ok(None));
    assert_eq!(find_browser(missing, Some("false"), Some("1")), Ok(None));
    // Present: always used, skip or not.
    let here = Path::new(env!("CARGO_BIN_EXE_server"));
    assert_eq!(
        find_browser(here, Some("true"), Some("1")),
        Ok(Some(here.to_path_buf()))
    );
}

fn launch(path: PathBuf) -> Browser {
    launch_with(path, &[])
}

/// Chromium with `extra` flags besides the usual.
fn launch_with(path: PathBuf, extra: &[&OsStr]) -> Browser {
    let mut args = vec![OsStr::new("--disable-component-update")];
    args.extend_from_slice(extra);
    let options = LaunchOptions::default_builder()
        .path(Some(path))
        // Tests run as root in containers, where Chromium's sandbox cannot start.
        .sandbox(false)
        .window_size(Some(DESKTOP))
        // No user_data_dir: headless_chrome makes a fresh temporary profile
        // per launch. Its default flags already include
        // --disable-background-networking, --disable-sync and --no-first-run;
        // enable_gpu stays false, which adds --disable-gpu.
        .args(args)
        .idle_browser_timeout(Duration::from_secs(60))
        .build()
        .expect("launch options");
    Browser::new(options).unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"))
}

/// Collects what the page reports as going wrong: uncaught exceptions,
/// console warnings and errors, and browser errors (a CSP refusal, a failed
/// load), except one that is expected (below).
fn watch_problems(tab: &Tab) -> Arc<Mutex<Vec<String>>> {
    let problems = Arc::new(Mutex::new(Vec::new()));
    tab.enable_log().unwrap();
    tab.enable_runtime().unwrap();
    let sink = problems.clone();
    tab.add_event_listener(Arc::new(move |event: &Event| {
        let problem = match event {
            Event::LogEntryAdded(e) if e.params.entry.level == LogEntryLevel::Error => {
                let entry = &e.params.entry;
                let url = entry.url.as_deref().unwrap_or("");
                // A reconnection attempt while no server listens: the
                // page's retries are expected to meet this.
                if entry.text.starts_with("WebSocket connection to ")
                    && entry.text.ends_with("net::ERR_CONNECTION_REFUSED")
                {
                    return;
                }
                format!("browser: {} {url}", entry.text)
            }
            Event::RuntimeExceptionThrown(e) => {
                let details = &e.params.exception_details;
                let thrown = details
                    .exception
                    .as_ref()
                    .and_then(|x| x.description.clone())
                    .unwrap_or_default();
                format!(
                    "exception at {:?}:{}: {} {thrown}",
                    details.url, details.line_number, details.text
                )
            }
            Event::RuntimeConsoleAPICalled(e)
                if matches!(e.params.Type, ConsoleType::Error | ConsoleType::Warning) =>
            {
                let args: Vec<String> = e
                    .params
                    .args
                    .iter()
                    .map(|a| format!("{:?}", a.value))
                    .collect();
                format!("console: {}", args.join(" "))
            }
            _ => return,
        };
        sink.lock().unwrap().push(problem);
    }))
    .unwrap();
    problems
}

/// Starts Chromium and loads the page of the server on `port`; the browser
/// must be kept alive while the tab is used.
fn open_page(path: PathBuf, port: u16) -> (Browser, Arc<Tab>, Arc<Mutex<Vec<String>>>) {
    let browser = launch(path);
    let tab = browser.new_tab().unwrap();
    let problems = watch_problems(&tab);
    tab.navigate_to(&format!("http://127.0.0.1:{port}/"))
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    (browser, tab, problems)
}

/// Evaluates `expr` (JavaScript yielding a string) in the page, again on
/// every DOM change, until it yields a non-empty string, and returns that.
/// Fails the test, showing what the page displays, after PAGE_WAIT_MS.
fn wait_for(tab: &Tab, what: &str, expr: &str) -> String {
    let script = format!(
        r#"new Promise((resolve) => {{
  const probe = () => {{ try {{ return String(({expr}) || ''); }} catch (e) {{ return ''; }} }};
  let done = false, observer = null, timer = null;
  const finish = (value) => {{
    if (done) return;
    done = true;
    if (observer) observer.disconnect();
    clearTimeout(timer);
    resolve(value);
  }};
  observer = new MutationObserver(() => {{ const v = probe(); if (v) finish(v); }});
  observer.observe(document.documentElement,
    {{ subtree: true, childList: true, characterData: true, attributes: true }});
  timer = setTimeout(() => finish(''), {PAGE_WAIT_MS});
  const first = probe();
  if (first) finish(first);
}})"#
    );
    match evaluate(tab, &script, true) {
        Value::String(s) if !s.is_empty() => s,
        _ => panic!(
            "page: {what}: not within {PAGE_WAIT_MS} ms\n{}",
            page_summary(tab)
        ),
    }
}

fn evaluate(tab: &Tab, script: &str, await_promise: bool) -> Value {
    tab.evaluate(script, await_promise)
        .unwrap_or_else(|e| panic!("evaluate failed: {e}\n{script}"))
        .value
        .unwrap_or(Value::Null)
}

/// What the page shows, for failure messages.
fn page_summary(tab: &Tab) -> String {
    let value = evaluate(
        tab,
        "JSON.stringify({state: document.getElementById('state').textContent, \
           log: [...document.querySelectorAll('#log li')].map(li => li.textContent), \
           clients: [...document.querySelectorAll('#clients li')].map(li => li.textContent)})",
        false,
    );
    value.as_str().unwrap_or("?").to_string()
}

/// JavaScript: the texts of the elements matching `selector`, joined by `sep`.
fn texts(selector: &str, sep: &str) -> String {
    format!("[...document.querySelectorAll('{selector}')].map(e => e.textContent).join({sep:?})")
}

/// JavaScript, true when the log shows a message we sent with `text`, its
/// `status` ("delivered", ...) and, when given, its `scope` ("to all", ...).
fn sent_shows(text: &str, scope: Option<&str>, status: &str) -> String {
    let scope = scope.map_or(String::new(), |scope| {
        format!("li.querySelector('.scope').textContent === {scope:?} && ")
    });
    format!(
        "[...document.querySelectorAll('#log li.out')].some(li => \
           li.querySelector('.text').textContent === {text:?} && {scope}\
           li.querySelector('.status').textContent === {status:?})"
    )
}

/// Waits until the page is connected, and returns (emitter, exhibitor).
fn wait_connected(tab: &Tab) -> (u16, u16) {
    let ids = wait_for(
        tab,
        "connected with two ids",
        "document.getElementById('state').dataset.state === 'connected' && \
         document.getElementById('emitter-id').textContent + ' ' + \
         document.getElementById('exhibitor-id').textContent",
    );
    let (emitter, exhibitor) = ids.split_once(' ').expect("two ids");
    (emitter.parse().unwrap(), exhibitor.parse().unwrap())
}

fn wait_clients(tab: &Tab, want: &str) {
    wait_for(
        tab,
        &format!("client list {want:?}"),
        &format!(
            "(() => {{ const t = {}; return t === {want:?} && t; }})()",
            texts("#clients li", ", ")
        ),
    );
}

/// Focuses `selector` and presses `keys`, as a keyboard user does.
fn press_keys(tab: &Tab, selector: &str, keys: &[&str]) {
    tab.find_element(selector).unwrap().focus().unwrap();
    for key in keys {
        tab.press_key(key).unwrap();
    }
}

/// Types into the message box and presses Enter, as a keyboard user does.
fn type_and_send(tab: &Tab, text: &str) {
    tab.find_element("#text").unwrap().focus().unwrap();
    tab.send_character(text).unwrap();
    tab.press_key("Enter").unwrap();
}

fn screenshot(tab: &Tab, name: &str, (width, height): (u32, u32)) {
    tab.call_method(Emulation::SetDeviceMetricsOverride {
        width,
        height,
        device_scale_factor: 1.0,
        mobile: width < 600,
        scale: None,
        screen_width: None,
        screen_height: None,
        position_x: None,
        position_y: None,
        dont_set_visible_size: None,
        screen_orientation: None,
        viewport: None,
        display_feature: None,
        device_posture: None,
    })
    .unwrap();
    // Wait for the layout at the new size before capturing it.
    wait_for(
        tab,
        "viewport resized",
        &format!("window.innerWidth === {width} && 'yes'"),
    );
    let png = tab
        .capture_screenshot(Page::CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let target = Path::new(env!("CARGO_BIN_EXE_server"))
        .ancestors()
        .nth(2)
        .expect("target dir");
    std::fs::write(target.join(name), png).unwrap();
}

/// The page's codec agrees with the Rust one: escaping (the exhibitor's
/// escape_text) on hand-picked and random bytes, and frame bytes both ways.
fn codec_matches_rust(tab: &Tab) {
    let mut cases: Vec<Vec<u8>> = vec![
        b"plain".to_vec(),
        "Oi, tudo bem? ção 😀".as_bytes().to_vec(),
        b"a\x1b[2Jb\nc\\d\re\tf\x00\x7f".to_vec(),
        "\u{85}\u{9f}\u{a0}".as_bytes().to_vec(),
        b"\xff\xfeok\xc0\xaf\xe0\x80\x80\xed\xa0\x80\xf4\x90\x80\x80".to_vec(),
        b"\xe2\x82\xe2\x82\xac\xf0\x9f\x98".to_vec(),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let len = (rng.next() % 24) as usize;
        // Mostly high bytes, where UTF-8 validity is decided.
        cases.push(
            (0..len)
                .map(|_| match rng.next() % 4 {
                    0 => (rng.next() % 0x80) as u8,
                    _ => 0x80 | (rng.next() % 0x80) as u8,
                })
                .collect(),
        );
    }
    let input = serde_json::to_string(&cases).unwrap();
    let shown = evaluate(
        tab,
        &format!("JSON.stringify({input}.map(b => EvchatCodec.escapeText(Uint8Array.from(b))))"),
        false,
    );
    let shown: Vec<String> = serde_json::from_str(shown.as_str().unwrap()).unwrap();
    for (bytes, js) in cases.iter().zip(&shown) {
        assert_eq!(js, &escape_text(bytes), "escapeText({bytes:x?})");
    }

    // Bidi controls that reorder a line are shown as \u{..}.
    let bidi = evaluate(
        tab,
        "EvchatCodec.escapeText(new \
         TextEncoder().encode('a\\u200e\\u200f\\u202a\\u202e\\u2066\\u2069b'))",
        false,
    );
    assert_eq!(
        bidi.as_str().unwrap(),
        "a\\u{200e}\\u{200f}\\u{202a}\\u{202e}\\u{2066}\\u{2069}b"
    );

    let frames = [
        Frame::bare(Kind::Oi, 0, 0xffff, 0),
        Frame::bare(Kind::Ok, 4096, 1, 65535),
        Frame::msg(1, 0, 7, "hi ção".as_bytes().to_vec()).unwrap(),
        Frame::clist(0xffff, 4096, 3, vec![1, 2, 4096, 8191]).unwrap(),
    ];
    let ext = [
        ExtFrame::Hello(Hello {
            origin: 0,
            dest: 0xffff,
            seq: 0,
            version: 1,
            name: b"alice".to_vec(),
            secret: SecretBytes::new(b"pw".to_vec()),
        }),
        ExtFrame::HelloAck(HelloAck {
            origin: 0xffff,
            dest: 0,
            seq: 0,
            code: 3,
            version: 1,
            roles: 7,
            name: b"Alice".to_vec(),
        }),
        ExtFrame::Who(Who {
            origin: 0xffff,
            dest: 4096,
            seq: 9,
            id: 4097,
            roles: 15,
            name: b"bob.b-1_x".to_vec(),
        }),
        ExtFrame::Kick(Header {
            kind: KICK,
            origin: 1,
            dest: 2,
            seq: 5,
        }),
        ExtFrame::Join(Join {
            origin: 1,
            dest: 0xffff,
            seq: 4,
            flags: FLAG_QUEUE,
            name: b"jobs".to_vec(),
            prefetch: None,
        }),
        ExtFrame::Leave(Leave {
            origin: 1,
            dest: 0xffff,
            seq: 5,
            name: b"ops".to_vec(),
        }),
        ExtFrame::Rooms(Header {
            kind: ROOMS,
            origin: 1,
            dest: 0xffff,
            seq: 6,
        }),
        ExtFrame::RoomAck(RoomAck {
            origin: 0xffff,
            dest: 1,
            seq: 4,
            code: 0,
            flags: FLAG_QUEUE,
            room: 0x4001,
            members: 300,
            name: b"jobs".to_vec(),
        }),
        ExtFrame::RoomList(RoomList {
            origin: 0xffff,
            dest: 1,
            seq: 6,
            rooms: vec![
                RoomEntry {
                    room: 0x4000,
                    flags: 0,
                    members: 2,
                    name: b"ops".to_vec(),
                },
                RoomEntry {
                    room: 0x7fff,
                    flags: FLAG_QUEUE,
                    members: 1024,
                    name: b"a.b-c_d".to_vec(),
                },
            ],
        }),
        ExtFrame::RoomList(RoomList {
            origin: 0xffff,
            dest: 1,
            seq: 7,
            rooms: vec![],
        }),
        ExtFrame::Tell(Tell {
            origin: 1,
            dest: 0xffff,
            seq: 8,
            name: b"bob".to_vec(),
            text: "hi ção".as_bytes().to_vec().into(),
        }),
        ExtFrame::Tell(Tell {
            origin: 1,
            dest: 0xffff,
            seq: 9,
            name: b"bob".to_vec(),
            text: Vec::new().into(),
        }),
        ExtFrame::Waiting(Waiting {
            origin: 0xffff,
            dest: 4096,
            seq: 3,
            time_ms: 1_764_596_702_123,
        }),
    ];
    let bytes_of = frames
        .iter()
        .map(|f| (f.to_string(), f.to_bytes().to_vec()))
        .chain(ext.iter().map(|f| (f.to_string(), f.to_bytes().to_vec())));
    for (frame, bytes) in bytes_of {
        let js = evaluate(
            tab,
            &format!(
                "(() => {{ const f = EvchatCodec.decode(Uint8Array.from({bytes:?})); \
                   return JSON.stringify([...EvchatCodec.encode(f)]); }})()"
            ),
            false,
        );
        let round: Vec<u8> = serde_json::from_str(js.as_str().unwrap()).unwrap();
        assert_eq!(round, bytes, "decode+encode of {frame}");
    }
    // One WebSocket message is exactly one frame: short, trailing,
    // malformed and unknown-type messages are refused, with the reason.
    for (bytes, reason) in [
        (&b"\x00\x01\x00\x00\x00"[..], "short frame"),
        (b"\x00\x05\x00\x01\x00\x00\x00\x01\x00\x03hi", "short MSG"),
        (b"\x00\x01\x00\x00\x00\x00\x00\x00\x00", "trailing bytes"),
        (b"\x00\x13\x00\x00\x00\x00\x00\x00", "unknown frame type 19"),
        // WAITING's L is 8, no other.
        (
            b"\x00\x12\xff\xff\x10\x00\x00\x01\x00\x07\x00\x00\x00\x00\x00\x00\x00",
            "malformed WAITING: L is 7",
        ),
        // TELL whose NL (9) runs past L (3).
        (
            b"\x00\x11\x00\x01\xff\xff\x00\x01\x00\x03\x09ab",
            "malformed TELL",
        ),
        (
            b"\x00\x0c\x00\x00\x00\x00\x00\x00",
            "short JOIN: no length field",
        ),
        // L = 67, one over JOIN's limit.
        (
            b"\x00\x0c\x00\x01\xff\xff\x00\x01\x00\x43",
            "malformed JOIN: L is 67",
        ),
        // ROOMACK whose NL (3) does not add up to L (9).
        (
            b"\x00\x0f\xff\xff\x00\x01\x00\x01\x00\x09\x00\x00\x40\x00\x00\x01\x03op",
            "malformed ROOMACK",
        ),
        // ROOMLIST announcing two rooms with bytes for one.
        (
            b"\x00\x10\xff\xff\x00\x01\x00\x01\x00\x0a\x00\x02\x40\x00\x00\x00\x01\x02ab",
            "malformed ROOMLIST",
        ),
        (
            b"\x00\x09\xff\xff\x00\x00\x00\x00",
            "short HELLOACK: no length",
        ),
        // L = 29, one over HELLOACK's limit: refused from the length alone.
        (
            b"\x00\x09\xff\xff\x00\x00\x00\x00\x00\x1d",
            "malformed HELLOACK: L is 29",
        ),
        // WHO whose NL (3) does not add up to L (6).
        (
            b"\x00\x0a\xff\xff\x10\x00\x00\x00\x00\x06\x00\x01\x07\x03ab",
            "malformed WHO",
        ),
        (
            b"\x00\x0a\xff\xff\x10\x00\x00\x00\x00\x06\x00\x01\x07\x02ab!",
            "trailing bytes",
        ),
        // HELLO whose SL (5) is more than the bytes left.
        (
            b"\x00\x08\x00\x00\xff\xff\x00\x00\x00\x06\x01\x00\x00\x05pw",
            "malformed HELLO",
        ),
    ] {
        let err = evaluate(
            tab,
            &format!(
                "(() => {{ try {{ EvchatCodec.decode(Uint8Array.from({bytes:?})); return \
                 'accepted'; }} \
                   catch (e) {{ return e.message; }} }})()"
            ),
            false,
        );
        let err = err.as_str().unwrap();
        assert!(err.starts_with(reason), "{bytes:x?}: {err}");
    }
}

#[test]
fn page_chats_with_cli_clients_and_survives_a_server_restart() {
    let Some(path) = chromium() else { return };
    // The restart must reuse the port the page knows.
    let port = ReservedPort::new();
    let mut server = Server::start_on(&port, &[]);
    let (cli_exhibitor, cli_exhibitor_id) = server.exhibitor();
    assert_eq!(cli_exhibitor_id, 4096);

    let (_browser, tab, problems) = open_page(path, port.addr().port());

    // Its two ids: the exhibitor registers first, the emitter pairs with it.
    assert_eq!(wait_connected(&tab), (1, 4097));
    wait_for(
        &tab,
        "the ids announced in the log",
        &format!(
            "{}.includes('connected: you are emitter 1 / exhibitor 4097') && 'yes'",
            texts("#log li.note", "\n")
        ),
    );
    wait_clients(
        &tab,
        "emitter 1 (you), exhibitor 4096, exhibitor 4097 (you)",
    );

    codec_matches_rust(&tab);

    // A broadcast typed in the page: the CLI exhibitor prints it; the page's
    // own exhibitor shows it too, so the OK comes back and it is delivered.
    type_and_send(&tab, "hello from the browser, olá");
    cli_exhibitor
        .stdout
        .expect_line("Message from 1 to all: hello from the browser, olá");
    wait_for(
        &tab,
        "the broadcast delivered",
        &format!(
            "{} && 'yes'",
            sent_shows("hello from the browser, olá", Some("to all"), "delivered")
        ),
    );

    // A unicast to the CLI exhibitor, the destination picked with the keyboard.
    press_keys(&tab, "#dest", &["ArrowDown", "ArrowDown"]);
    assert_eq!(
        evaluate(&tab, "document.getElementById('dest').value", false),
        Value::String("4096".into())
    );
    type_and_send(&tab, "just for you");
    cli_exhibitor
        .stdout
        .expect_line("Message from 1: just for you");
    wait_for(
        &tab,
        "the unicast delivered",
        &format!(
            "{} && 'yes'",
            sent_shows("just for you", Some("to exhibitor 4096"), "delivered")
        ),
    );

    // A CLI emitter writes to the page's exhibitor, control characters
    // included; the page shows them escaped as the exhibitor would, and its
    // OK is what makes the emitter print "delivered".
    let (mut cli_emitter, cli_emitter_id) = server.emitter(Some(cli_exhibitor_id));
    assert_eq!(cli_emitter_id, 2);
    let sent = "hi from the terminal\t\x1b[2J ção";
    cli_emitter.input(&format!("(4097) {sent}\n"));
    cli_emitter.stdout.expect_line("delivered #1");
    let shown = escape_text(sent.as_bytes());
    wait_for(
        &tab,
        "the CLI emitter's message",
        &format!(
            "[...document.querySelectorAll('#log li.in')].some(li => \
               li.querySelector('.from').textContent === 'emitter 2' && \
               li.querySelector('.scope').textContent === 'to you' && \
               li.querySelector('.text').textContent === {shown:?}) && 'yes'"
        ),
    );
    cli_emitter.input("(0) to everyone\n");
    cli_emitter.stdout.expect_line("delivered #2");
    cli_exhibitor
        .stdout
        .expect_line("Message from 2 to all: to everyone");
    wait_for(
        &tab,
        "the CLI emitter's broadcast",
        "[...document.querySelectorAll('#log li.in')].some(li => \
           li.querySelector('.scope').textContent === 'to all' && \
           li.querySelector('.text').textContent === 'to everyone') && 'yes'",
    );
    // A message from an id the list lacked made the page ask again.
    wait_clients(
        &tab,
        "emitter 1 (you), emitter 2, exhibitor 4096, exhibitor 4097 (you)",
    );

    screenshot(&tab, "browser-phone.png", PHONE);
    screenshot(&tab, "browser.png", DESKTOP);

    // The log follows new messages while it is scrolled to the bottom...
    for i in 1..=12 {
        cli_emitter.input(&format!("(4097) line {i}\n"));
        cli_emitter
            .stdout
            .expect_line(&format!("delivered #{}", i + 2));
    }
    const AT_BOTTOM: &str = "(log => log.scrollHeight - log.scrollTop - log.clientHeight < 2)\
                             (document.getElementById('log'))";
    wait_for(
        &tab,
        "the log scrolled to the newest line",
        &format!(
            "document.querySelector('#log li:last-child .text').textContent === 'line 12' && \
             {AT_BOTTOM} && 'yes'"
        ),
    );
    // ...but not while the reader has scrolled up: then a button offers
    // the new messages, and takes the keyboard there.
    evaluate(&tab, "document.getElementById('log').scrollTop = 0", false);
    wait_for(
        &tab,
        "the log scrolled to the top",
        "document.getElementById('log').scrollTop === 0 && 'yes'",
    );
    cli_emitter.input("(4097) while you read\n");
    cli_emitter.stdout.expect_line("delivered #15");
    wait_for(
        &tab,
        "a new line shown without moving the reader",
        "document.querySelector('#log li:last-child .text').textContent === 'while you read' && \
         document.getElementById('log').scrollTop === 0 && \
         !document.getElementById('jump').hidden && 'yes'",
    );
    press_keys(&tab, "#jump", &["Enter"]);
    wait_for(
        &tab,
        "the log back at the newest line",
        &format!("document.getElementById('jump').hidden && {AT_BOTTOM} && 'yes'"),
    );

    // The server shuts down (FLW to everyone) and comes back on the same port.
    server.proc.signal(libc::SIGTERM);
    cli_exhibitor.stdout.expect_line("closed by server");
    cli_emitter.stdout.expect_line("closed by server");
    assert!(server.proc.wait().success());
    wait_for(
        &tab,
        "the server's FLW shown",
        &format!(
            "{}.includes('server closed the chat') && \
             document.getElementById('state').dataset.state !== 'connected' && 'yes'",
            texts("#log li.note", "\n")
        ),
    );
    let server = Server::start_on(&port, &[]);
    assert_eq!(wait_connected(&tab), (1, 4096));
    wait_for(
        &tab,
        "the new ids announced",
        &format!(
            "{}.includes('reconnected: you are now emitter 1 / exhibitor 4096') && 'yes'",
            texts("#log li.note", "\n")
        ),
    );
    wait_clients(&tab, "emitter 1 (you), exhibitor 4096 (you)");

    // The chosen destination (4096) meant another client before the
    // restart: the page makes the user choose again rather than guess.
    assert_eq!(
        evaluate(&tab, "document.getElementById('dest').value", false),
        Value::String(String::new())
    );
    type_and_send(&tab, "back again");
    wait_for(
        &tab,
        "the refusal to send without a destination",
        &format!(
            "{}.includes('not sent: choose who gets it') && 'yes'",
            texts("#log li.note", "\n")
        ),
    );

    // And the chat works again.
    let (cli_exhibitor, _) = server.exhibitor();
    press_keys(&tab, "#dest", &["ArrowDown"]);
    assert_eq!(
        evaluate(&tab, "document.getElementById('dest').value", false),
        Value::String("0".into())
    );
    press_keys(&tab, "#text", &["Enter"]);
    cli_exhibitor
        .stdout
        .expect_line("Message from 1 to all: back again");
    wait_for(
        &tab,
        "the message after the restart delivered",
        &format!("{} && 'yes'", sent_shows("back again", None, "delivered")),
    );

    // The list refreshed on demand (keyboard: Refresh, Enter) shows the new
    // CLI exhibitor; pick it.
    press_keys(&tab, "#refresh", &["Enter"]);
    wait_clients(
        &tab,
        "emitter 1 (you), exhibitor 4096 (you), exhibitor 4097",
    );
    press_keys(&tab, "#dest", &["End"]);
    assert_eq!(
        evaluate(&tab, "document.getElementById('dest').value", false),
        Value::String("4097".into())
    );
    // It leaves; once the list says so, the choice stays (marked "left")
    // instead of falling back to everyone, and a message to it is not
    // delivered.
    drop(cli_exhibitor);
    press_keys(&tab, "#refresh", &["Enter"]);
    wait_clients(&tab, "emitter 1 (you), exhibitor 4096 (you)");
    assert_eq!(
        evaluate(
            &tab,
            "document.getElementById('dest').selectedOptions[0].textContent",
            false
        ),
        Value::String("exhibitor 4097 (left)".into())
    );
    type_and_send(&tab, "anyone there?");
    wait_for(
        &tab,
        "the message to a departed client not delivered",
        &format!(
            "{} && 'yes'",
            sent_shows("anyone there?", None, "not delivered")
        ),
    );

    // A network drop (the server killed, no FLW) while a message awaits its
    // answer: the page says it cannot know, and waits to reconnect.
    let mut silent = server.raw();
    assert_eq!(silent.identify_exhibitor(), 4097);
    press_keys(&tab, "#refresh", &["Enter"]);
    wait_clients(
        &tab,
        "emitter 1 (you), exhibitor 4096 (you), exhibitor 4097",
    );
    type_and_send(&tab, "are you there?");
    let msg = silent.expect_frame();
    assert_eq!((msg.kind, msg.origin, msg.dest), (Kind::Msg, 1, 4097));
    server.proc.signal(libc::SIGKILL);
    wait_for(
        &tab,
        "the unanswered message unconfirmed after the drop",
        &format!(
            "{} && {}.endsWith('connection lost') && \
             document.getElementById('state').dataset.state === 'waiting' && 'yes'",
            sent_shows("are you there?", None, "unconfirmed"),
            texts("#log li.note .text", "\n")
        ),
    );

    // Nothing went wrong in the page along the way.
    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

/// A server with history replays its recent broadcasts to every exhibitor
/// that joins, a reconnected page's too: the page shows each message once,
/// including one the server got while the page was away.
#[test]
fn page_reconnected_to_a_server_with_history_shows_each_message_once() {
    let Some(path) = chromium() else { return };
    let dir = TempDir::new("page-replay");
    let history = ["--history", dir.arg()];
    let port = ReservedPort::new();
    let mut server = Server::start_on(&port, &history);

    let (_browser, tab, problems) = open_page(path, port.addr().port());
    assert_eq!(wait_connected(&tab), (1, 4096));
    let (mut cli_emitter, _) = server.emitter(None);
    cli_emitter.input("(0) one\n");
    cli_emitter.stdout.expect_line("delivered #1");
    cli_emitter.input("(0) two\n");
    cli_emitter.stdout.expect_line("delivered #2");
    type_and_send(&tab, "from the page");
    wait_for(
        &tab,
        "the page's broadcast delivered, after the two",
        &format!(
            "{} === 'one|two' && \
             document.querySelector('#log li.out .status').textContent === 'delivered' && 'yes'",
            texts("#log li.in .text", "|")
        ),
    );

    // The server restarts on the same log; as the page comes back (before
    // or after it: either way the page must show it once), another emitter
    // speaks to a CLI exhibitor.
    server.proc.signal(libc::SIGTERM);
    cli_emitter.stdout.expect_line("closed by server");
    assert!(server.proc.wait().success());
    let server = Server::start_on(&port, &history);
    let (_cli_exhibitor, _) = server.exhibitor();
    let (mut cli_emitter, _) = server.emitter(None);
    cli_emitter.input("(0) while you were away\n");
    cli_emitter.stdout.expect_line("delivered #1");
    wait_for(
        &tab,
        "the page reconnected",
        &format!(
            "{}.includes('reconnected: you are now emitter ') && \
             document.getElementById('state').dataset.state === 'connected' && 'yes'",
            texts("#log li.note", "\n")
        ),
    );
    cli_emitter.input("(0) three\n");
    cli_emitter.stdout.expect_line("delivered #2");
    wait_for(
        &tab,
        "the message after the reconnection",
        &format!(
            "{}.endsWith('|three') && 'yes'",
            texts("#log li.in .text", "|")
        ),
    );
    assert_eq!(
        evaluate(&tab, &texts("#log li.in .text", "|"), false),
        Value::String("one|two|while you were away|three".into()),
        "{}",
        page_summary(&tab)
    );
    assert_eq!(
        evaluate(&tab, &texts("#log li.out .text", "|"), false),
        Value::String("from the page".into())
    );

    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

// ---- the identity extension: sign-in, names ---------------------------

/// The roles of a session without accounts: view, emit, broadcast.
const PLAIN_ROLES: u8 = 7;
/// Alice's password in the accounts file of the sign-in tests.
const ALICE_PASSWORD: &str = "correct horse battery";

/// HELLO(0, 65535, seq 0), version 1, written out byte by byte.
fn hello(name: &str, secret: &[u8]) -> Vec<u8> {
    let mut wire = raw_hdr(8, 0, 0xffff, 0);
    wire.extend_from_slice(&((4 + name.len() + secret.len()) as u16).to_be_bytes());
    wire.extend_from_slice(&[1, name.len() as u8]);
    wire.extend_from_slice(name.as_bytes());
    wire.extend_from_slice(&(secret.len() as u16).to_be_bytes());
    wire.extend_from_slice(secret);
    wire
}

/// HELLOACK(65535, 0, seq 0): code 0, version 1, `roles`, `name`.
fn accepted(roles: u8, name: &str) -> Vec<u8> {
    let mut wire = raw_hdr(9, 0xffff, 0, 0);
    wire.extend_from_slice(&((4 + name.len()) as u16).to_be_bytes());
    wire.extend_from_slice(&[0, 1, roles, name.len() as u8]);
    wire.extend_from_slice(name.as_bytes());
    wire
}

/// WHO(65535, `to`, `seq`): `id` is `name`, with `roles`.
fn who(to: u16, seq: u16, id: u16, roles: u8, name: &str) -> Vec<u8> {
    let mut wire = raw_hdr(10, 0xffff, to, seq);
    wire.extend_from_slice(&((4 + name.len()) as u16).to_be_bytes());
    wire.extend_from_slice(&id.to_be_bytes());
    wire.extend_from_slice(&[roles, name.len() as u8]);
    wire.extend_from_slice(name.as_bytes());
    wire
}

/// A raw TCP client that opted in with `hello_bytes`, got `ack`, and
/// registered: an exhibitor (`origin` 0) or an emitter paired with one.
fn opted_in(server: &Server, hello_bytes: &[u8], ack: &[u8], origin: u16) -> (Raw, u16) {
    let mut raw = server.raw();
    raw.send(hello_bytes);
    expect_exact(&mut raw, ack);
    let id = if origin == 0 {
        raw.identify_exhibitor()
    } else {
        raw.identify_emitter(origin)
    };
    (raw, id)
}

/// A token for bob: `evt_` and 64 hex digits.
fn bob_token() -> String {
    format!("evt_{}", "0123456789abcdef".repeat(4))
}

/// A token for viewer, who may only view.
fn viewer_token() -> String {
    format!("evt_{}", "fedcba9876543210".repeat(4))
}

/// An accounts file (mode 0600): alice with a password (argon2id, the
/// parameters `evchat user add` uses) and bob with a token, who may view,
/// emit and broadcast; viewer with a token, who may only view.
fn accounts_file(dir: &TempDir) -> String {
    let all = Roles::parse("view,emit,broadcast").unwrap();
    let token = |t: String| Secret::for_token(&Credential::new(t.into_bytes()));
    let password = Credential::new(ALICE_PASSWORD.as_bytes().to_vec());
    let mut accounts = Accounts::default();
    for (name, roles, secret) in [
        ("alice", all, Secret::for_password(&password).unwrap()),
        ("bob", all, token(bob_token())),
        (
            "viewer",
            Roles::parse("view").unwrap(),
            token(viewer_token()),
        ),
    ] {
        accounts.upsert(Account {
            name: Name::new(name).unwrap(),
            roles,
            secret,
            expires: None,
        });
    }
    let path = dir.path().join("accounts");
    accounts.save(&path).unwrap();
    path.to_str().unwrap().to_string()
}

/// Types `text` into the field `selector`, as a keyboard user does.
fn type_into(tab: &Tab, selector: &str, text: &str) {
    tab.find_element(selector).unwrap().focus().unwrap();
    tab.send_character(text).unwrap();
}

/// Signs in with the form: user, secret, Enter.
fn sign_in(tab: &Tab, user: &str, secret: &str) {
    type_into(tab, "#user", user);
    type_into(tab, "#secret", secret);
    tab.press_key("Enter").unwrap();
}

/// Waits until the sign-in form shows, in the log's place, with `problem`
/// as its sentence ("" for none), and the state line asks to sign in.
fn wait_sign_in_form(tab: &Tab, problem: &str) {
    wait_for(
        tab,
        &format!("the sign-in form saying {problem:?}"),
        &format!(
            "(() => {{ const p = document.getElementById('sign-in-problem'); \
               return document.body.dataset.view === 'sign-in' && \
                 !document.getElementById('sign-in').hidden && \
                 getComputedStyle(document.querySelector('.layout')).display === 'none' && \
                 getComputedStyle(document.getElementById('composer')).display === 'none' && \
                 document.getElementById('state').textContent === 'sign in to chat' && \
                 !document.getElementById('sign-in-button').disabled && \
                 (p.hidden ? '' : p.textContent) === {problem:?} && 'yes'; }})()"
        ),
    );
}

/// JavaScript: the text of the element with id `id`.
fn text_of(id: &str) -> String {
    format!("document.getElementById('{id}').textContent")
}

fn dom_text(tab: &Tab, id: &str) -> String {
    match evaluate(tab, &text_of(id), false) {
        Value::String(s) => s,
        other => panic!("#{id}: {other:?}"),
    }
}

/// With `--auth`: the page shows the form, signs in with a password, and
/// chats with a TCP client signed in with a token, each side shown the
/// other's name.
#[test]
fn page_signs_in_with_a_password_and_shows_names() {
    let Some(path) = chromium() else { return };
    let dir = TempDir::new("page-sign-in");
    let file = accounts_file(&dir);
    let server = Server::start(&["--auth", &file]);
    let bob_hello = hello("bob", bob_token().as_bytes());
    let (mut bob_ex, bob_ex_id) = opted_in(&server, &bob_hello, &accepted(7, "bob"), 0);
    let (mut bob_em, bob_em_id) = opted_in(&server, &bob_hello, &accepted(7, "bob"), bob_ex_id);
    assert_eq!((bob_em_id, bob_ex_id), (1, 4096));

    let (_browser, tab, problems) = open_page(path, server.addr.port());
    // The page's first HELLO has no secret: code 1, so it asks.
    wait_sign_in_form(&tab, "");
    assert_eq!(
        evaluate(
            &tab,
            "getComputedStyle(document.querySelector('.identity')).display",
            false
        ),
        Value::String("none".into())
    );

    sign_in(&tab, "alice", ALICE_PASSWORD);
    assert_eq!(wait_connected(&tab), (2, 4097));
    assert_eq!(dom_text(&tab, "own-name"), "alice");
    wait_for(
        &tab,
        "the sign-in announced",
        &format!(
            "{}.includes('connected: you are alice, emitter 2 / exhibitor 4097') && 'yes'",
            texts("#log li.note", "\n")
        ),
    );
    // The form is gone, the password with it, and nothing went in the URL.
    assert_eq!(
        evaluate(
            &tab,
            "[document.body.dataset.view, document.getElementById('sign-in').hidden, \
              document.getElementById('secret').value, location.href, \
              document.getElementById('sign-out').hidden, \
              document.getElementById('name-form').hidden].join('|')",
            false
        ),
        Value::String(format!(
            "chat|true||http://127.0.0.1:{}/|false|true",
            server.addr.port()
        ))
    );
    // WHO named every listed id; the page acknowledged each (else the
    // server would cut it at the ack timeout).
    wait_clients(
        &tab,
        "bob · emitter 1, alice · emitter 2 (you), bob · exhibitor 4096, \
         alice · exhibitor 4097 (you)",
    );

    // To bob by name: the picker's fourth entry.
    press_keys(&tab, "#dest", &["ArrowDown", "ArrowDown", "ArrowDown"]);
    assert_eq!(
        evaluate(
            &tab,
            "document.getElementById('dest').selectedOptions[0].textContent",
            false
        ),
        Value::String("bob (exhibitor 4096)".into())
    );
    type_and_send(&tab, "hi bob");
    // bob's exhibitor is told who id 2 is, then gets the message.
    expect_exact(&mut bob_ex, &who(bob_ex_id, 0, 2, PLAIN_ROLES, "alice"));
    let to_bob = bob_ex.expect_frame();
    assert_eq!(
        (
            to_bob.kind,
            to_bob.origin,
            to_bob.dest,
            to_bob.text().map(|t| &t[..])
        ),
        (Kind::Msg, 2, bob_ex_id, Some(&b"hi bob"[..]))
    );
    bob_ex.send(&hdr(Kind::Ok, bob_ex_id, 0xffff, 0));
    bob_ex.send(&hdr(Kind::Ok, bob_ex_id, 2, to_bob.seq));
    wait_for(
        &tab,
        "the message to bob delivered",
        &format!(
            "{} && 'yes'",
            sent_shows("hi bob", Some("to bob"), "delivered")
        ),
    );

    // bob writes back: the page shows his name, not his id. His OK also
    // says the page acknowledged each WHO: the server settles acks in order,
    // so a WHO left unacknowledged would hold this MSG's entry until the
    // ack timeout cut the page, and bob would get ERRO.
    bob_em.send(&msg(bob_em_id, 4097, 1, b"hello alice"));
    expect_exact(&mut bob_em, &hdr(Kind::Ok, 0xffff, bob_em_id, 1));
    wait_for(
        &tab,
        "bob's message shown by name",
        "[...document.querySelectorAll('#log li.in')].some(li => \
           li.querySelector('.from').textContent === 'bob' && \
           li.querySelector('.scope').textContent === 'to you' && \
           li.querySelector('.text').textContent === 'hello alice') && 'yes'",
    );
    screenshot(&tab, "page-signed-in.png", DESKTOP);

    // Signing out ends the session and brings the form back, empty.
    press_keys(&tab, "#sign-out", &["Enter"]);
    wait_sign_in_form(&tab, "");
    assert_eq!(dom_text(&tab, "own-name"), "");

    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

/// Each refusal is one plain sentence on the form: a wrong password and an
/// unknown user read alike, then too many failures; what the page can
/// judge itself is refused before anything is sent.
#[test]
fn page_says_why_a_sign_in_is_refused() {
    let Some(path) = chromium() else { return };
    let dir = TempDir::new("page-refused");
    let file = accounts_file(&dir);
    let server = Server::start(&["--auth", &file, "--auth-failures", "2"]);
    let (_browser, tab, problems) = open_page(path, server.addr.port());
    wait_sign_in_form(&tab, "");

    // Judged by the page: no HELLO goes out, so no failure is counted.
    sign_in(&tab, "1alice", "whatever");
    wait_sign_in_form(
        &tab,
        "A user name starts with a letter, then up to 23 letters, digits, \".\", \"_\" or \"-\".",
    );
    evaluate(&tab, "document.getElementById('user').value = ''", false);
    evaluate(&tab, "document.getElementById('secret').value = ''", false);
    sign_in(&tab, "alice", "");
    wait_sign_in_form(&tab, "Enter your password or token.");
    // 257 bytes: one over what HELLO carries.
    type_into(&tab, "#secret", &"é".repeat(128));
    type_into(&tab, "#secret", "x");
    tab.press_key("Enter").unwrap();
    wait_sign_in_form(&tab, "A password or token is at most 256 bytes.");
    evaluate(&tab, "document.getElementById('secret').value = ''", false);

    // Refused by the server (code 2): one sentence for both causes.
    type_into(&tab, "#secret", "not the password");
    tab.press_key("Enter").unwrap();
    wait_sign_in_form(&tab, "Wrong user name or password.");
    assert_eq!(
        evaluate(&tab, "document.getElementById('secret').value", false),
        Value::String(String::new()),
        "the refused password is cleared"
    );
    screenshot(&tab, "page-sign-in.png", DESKTOP);
    evaluate(&tab, "document.getElementById('user').value = ''", false);
    sign_in(&tab, "nobody", "not the password");
    wait_sign_in_form(&tab, "Wrong user name or password.");

    // The budget of 2 is spent: even the right password is not checked.
    evaluate(&tab, "document.getElementById('user').value = ''", false);
    sign_in(&tab, "alice", ALICE_PASSWORD);
    wait_sign_in_form(
        &tab,
        "Too many failed sign-ins from your address. Try again later.",
    );
    assert_eq!(dom_text(&tab, "emitter-id"), "–");

    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

/// Without `--auth`: the page chats at once without a name, offers one,
/// says clearly when it is taken, claims another while the chat goes on,
/// and an opted-in TCP exhibitor is told the page's name.
#[test]
fn page_claims_a_name_and_others_see_it() {
    let Some(path) = chromium() else { return };
    let server = Server::start(&[]);
    let (mut carol, carol_id) = opted_in(
        &server,
        &hello("carol", b""),
        &accepted(PLAIN_ROLES, "carol"),
        0,
    );
    assert_eq!(carol_id, 4096);

    let (_browser, tab, problems) = open_page(path, server.addr.port());
    assert_eq!(wait_connected(&tab), (1, 4097));
    assert_eq!(dom_text(&tab, "own-name"), "");
    assert_eq!(
        evaluate(
            &tab,
            "[document.getElementById('name-form').hidden, \
              document.getElementById('sign-out').hidden, document.body.dataset.view].join('|')",
            false
        ),
        Value::String("false|true|chat".into())
    );
    wait_clients(
        &tab,
        "emitter 1 (you), carol · exhibitor 4096, exhibitor 4097 (you)",
    );

    // The header's height before any refusal: a refusal must not move
    // what is under it.
    let header_height =
        "String(document.querySelector('header.top').getBoundingClientRect().height)";
    let before = evaluate(&tab, header_height, false);

    // Not a name: said at once, nothing sent.
    type_into(&tab, "#name", "9lives");
    tab.press_key("Enter").unwrap();
    wait_for(
        &tab,
        "the bad name refused",
        &format!(
            "{} === 'A name starts with a letter, then up to 23 letters, digits, \
             \".\", \"_\" or \"-\".' && 'yes'",
            text_of("name-problem")
        ),
    );

    // Taken (any case): the sentence names it; the chat goes on meanwhile.
    evaluate(&tab, "document.getElementById('name').value = ''", false);
    type_into(&tab, "#name", "Carol");
    tab.press_key("Enter").unwrap();
    wait_for(
        &tab,
        "the taken name refused",
        &format!(
            "{} === 'The name \"Carol\" is taken. Choose another.' && \
             !document.getElementById('name-problem').hidden && 'yes'",
            text_of("name-problem")
        ),
    );
    assert_eq!(wait_connected(&tab), (1, 4097));
    assert_eq!(
        evaluate(&tab, header_height, false),
        before,
        "the refusal changed the header's height"
    );
    screenshot(&tab, "page-name-taken.png", DESKTOP);
    screenshot(&tab, "page-name-taken-phone.png", PHONE);
    let phone_before = evaluate(&tab, header_height, false);
    evaluate(
        &tab,
        "document.getElementById('name-problem').hidden = true",
        false,
    );
    let phone_without = evaluate(&tab, header_height, false);
    evaluate(
        &tab,
        "document.getElementById('name-problem').hidden = false",
        false,
    );
    assert_eq!(phone_before, phone_without, "at phone width too");
    // Editing the name puts the sentence away.
    type_into(&tab, "#name", "x");
    wait_for(
        &tab,
        "the refusal put away on editing",
        "document.getElementById('name-problem').hidden && 'yes'",
    );

    // Another name, on the connection the server kept: the new session
    // takes over and the old one leaves.
    evaluate(&tab, "document.getElementById('name').value = ''", false);
    type_into(&tab, "#name", "alice");
    tab.press_key("Enter").unwrap();
    wait_for(
        &tab,
        "the name claimed",
        &format!(
            "{} === 'alice' && document.getElementById('state').dataset.state === 'connected' \
             && 'yes'",
            text_of("own-name")
        ),
    );
    let (emitter, exhibitor) = wait_connected(&tab);
    wait_for(
        &tab,
        "the claim announced",
        &format!(
            "{}.includes('name claimed: you are alice, emitter {emitter} / exhibitor \
             {exhibitor}') && document.getElementById('name-problem').hidden && 'yes'",
            texts("#log li.note", "\n")
        ),
    );
    wait_clients(
        &tab,
        &format!(
            "alice · emitter {emitter} (you), carol · exhibitor 4096, \
             alice · exhibitor {exhibitor} (you)"
        ),
    );

    // carol is told the name before the first message from it.
    type_and_send(&tab, "hi all");
    expect_exact(&mut carol, &who(carol_id, 0, emitter, PLAIN_ROLES, "alice"));
    let hi = carol.expect_frame();
    assert_eq!(
        (hi.kind, hi.origin, hi.dest, hi.text().map(|t| &t[..])),
        (Kind::Msg, emitter, 0, Some(&b"hi all"[..]))
    );
    carol.send(&hdr(Kind::Ok, carol_id, 0xffff, 0));
    carol.send(&hdr(Kind::Ok, carol_id, emitter, hi.seq));
    wait_for(
        &tab,
        "the broadcast delivered",
        &format!(
            "{} && 'yes'",
            sent_shows("hi all", Some("to all"), "delivered")
        ),
    );

    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

/// The page follows the server across restarts: from no accounts to
/// accounts (the form comes back), signed in to an account that may only
/// view (no emitter), and back to no accounts (code 7: the page drops the
/// credentials and joins without them on the same connection).
#[test]
fn page_follows_the_server_between_accounts_and_none() {
    let Some(path) = chromium() else { return };
    let dir = TempDir::new("page-modes");
    let file = accounts_file(&dir);
    let port = ReservedPort::new();
    let mut server = Server::start_on(&port, &[]);
    let (_browser, tab, problems) = open_page(path, port.addr().port());
    assert_eq!(wait_connected(&tab), (1, 4096));
    let stop = |server: &mut Server| {
        server.proc.signal(libc::SIGTERM);
        assert!(server.proc.wait().success());
    };

    stop(&mut server);
    let mut server = Server::start_on(&port, &["--auth", &file]);
    wait_sign_in_form(&tab, "");
    assert_eq!(
        evaluate(&tab, "document.getElementById('name-form').hidden", false),
        Value::Bool(true)
    );

    sign_in(&tab, "viewer", &viewer_token());
    wait_for(
        &tab,
        "signed in, view only",
        &format!(
            "document.getElementById('state').textContent === 'connected, view only' && \
             document.getElementById('send').disabled && \
             {}.includes('reconnected: you are now viewer, exhibitor 4096 (view only: this \
             account cannot send)') && 'yes'",
            texts("#log li.note", "\n")
        ),
    );
    assert_eq!(
        [
            dom_text(&tab, "own-name"),
            dom_text(&tab, "emitter-id"),
            dom_text(&tab, "exhibitor-id")
        ],
        ["viewer", "–", "4096"]
    );
    // It reads: bob's broadcast, shown by name, acknowledged.
    let (mut bob, bob_id) = opted_in(
        &server,
        &hello("bob", bob_token().as_bytes()),
        &accepted(7, "bob"),
        1,
    );
    bob.send(&msg(bob_id, 0, 1, b"anyone reading?"));
    expect_exact(&mut bob, &hdr(Kind::Ok, 0xffff, bob_id, 1));
    wait_for(
        &tab,
        "bob's broadcast shown by name",
        "[...document.querySelectorAll('#log li.in')].some(li => \
           li.querySelector('.from').textContent === 'bob' && \
           li.querySelector('.text').textContent === 'anyone reading?') && 'yes'",
    );
    drop(bob);

    stop(&mut server);
    let _server = Server::start_on(&port, &[]);
    wait_for(
        &tab,
        "joined without an account",
        "document.getElementById('state').dataset.state === 'connected' && \
         document.getElementById('emitter-id').textContent === '1' && \
         document.getElementById('own-name').textContent === '' && \
         !document.getElementById('name-form').hidden && \
         document.getElementById('sign-out').hidden && \
         document.body.dataset.view === 'chat' && 'yes'",
    );
    wait_clients(&tab, "emitter 1 (you), exhibitor 4096 (you)");

    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

/// A taken name leaves the claim's connection open for another HELLO;
/// when the user takes longer than the handshake timeout, the server
/// closes it, quietly for the page, and the next name goes out on a new
/// connection.
#[test]
fn page_claims_a_name_after_the_kept_connection_timed_out() {
    let Some(path) = chromium() else { return };
    let server = Server::start(&["--handshake-timeout", "2"]);
    let (_carol, _) = opted_in(
        &server,
        &hello("carol", b""),
        &accepted(PLAIN_ROLES, "carol"),
        0,
    );
    let (_browser, tab, problems) = open_page(path, server.addr.port());
    assert_eq!(wait_connected(&tab), (1, 4097));

    type_into(&tab, "#name", "carol");
    tab.press_key("Enter").unwrap();
    wait_for(
        &tab,
        "the taken name refused",
        &format!(
            "{} === 'The name \"carol\" is taken. Choose another.' && 'yes'",
            text_of("name-problem")
        ),
    );
    server.proc.stderr.skip_until(
        "the kept connection closed",
        Duration::from_secs(10),
        |line| line.contains("no OI within the handshake timeout"),
    );
    // The chat went on, and the page said nothing of that close.
    assert_eq!(wait_connected(&tab), (1, 4097));
    assert_eq!(
        evaluate(&tab, &texts("#log li.note .text", "|"), false),
        Value::String("connected: you are emitter 1 / exhibitor 4097".into())
    );

    evaluate(&tab, "document.getElementById('name').value = ''", false);
    type_into(&tab, "#name", "alice");
    tab.press_key("Enter").unwrap();
    wait_for(
        &tab,
        "the name claimed on a new connection",
        &format!(
            "{} === 'alice' && document.getElementById('name-problem').hidden && \
             document.getElementById('state').dataset.state === 'connected' && \
             {}.includes('name claimed: you are alice, ') && 'yes'",
            text_of("own-name"),
            texts("#log li.note", "\n")
        ),
    );

    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

/// The base64 SHA-256 of the server certificate's public key, as
/// Chromium's --ignore-certificate-errors-spki-list takes it (the openssl
/// binary computes it, as Chromium's documentation shows).
fn spki_hash(cert: &Path) -> String {
    let script = format!(
        "{openssl} x509 -in '{cert}' -pubkey -noout | {openssl} pkey -pubin -outform der \
         | {openssl} dgst -sha256 -binary | {openssl} base64",
        openssl = crate::tls::openssl(),
        cert = cert.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn page_over_https_chats_over_wss_with_a_tls_client() {
    let Some(path) = chromium() else { return };
    let certs = crate::tls::Certs::new("browser-https");
    // Plain connections are refused: the page connects only if it used wss.
    let server = crate::tls::tls_server(&certs, &["--require-tls"]);
    let mut tcp = crate::tls::TlsRaw::connect(&server, &certs);
    let tcp_id = tcp.identify(0);
    let trust = format!(
        "--ignore-certificate-errors-spki-list={}",
        spki_hash(&certs.path("cert.pem"))
    );
    let browser = launch_with(path, &[OsStr::new(&trust)]);
    let tab = browser.new_tab().unwrap();
    let problems = watch_problems(&tab);
    let url = format!("https://localhost:{}/", server.addr.port());
    tab.navigate_to(&url)
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    assert_eq!(
        evaluate(&tab, "location.protocol", false),
        Value::String("https:".into())
    );
    let (emitter, exhibitor) = wait_connected(&tab);
    wait_clients(
        &tab,
        &format!("emitter {emitter} (you), exhibitor {tcp_id}, exhibitor {exhibitor} (you)"),
    );
    type_and_send(&tab, "from https, olá");
    let sent = Frame::msg(emitter, 0, 0, "from https, olá".as_bytes().to_vec()).unwrap();
    let got = tcp.expect_bytes(sent.to_bytes().len());
    let seq = u16::from_be_bytes([got[6], got[7]]);
    let sent = Frame::msg(emitter, 0, seq, "from https, olá".as_bytes().to_vec()).unwrap();
    assert_eq!(got, sent.to_bytes().to_vec(), "the broadcast's bytes");
    tcp.send(&Frame::bare(Kind::Ok, tcp_id, emitter, seq).to_bytes());
    wait_for(
        &tab,
        "the broadcast delivered",
        &format!(
            "{} && 'yes'",
            sent_shows("from https, olá", Some("to all"), "delivered")
        ),
    );
    // And the other way: an emitter over TLS broadcasts, the page shows it.
    let mut em = crate::tls::TlsRaw::connect(&server, &certs);
    let em_id = em.identify(tcp_id);
    em.send(
        &Frame::msg(em_id, 0, 1, b"to the page over TLS".to_vec())
            .unwrap()
            .to_bytes(),
    );
    wait_for(
        &tab,
        "the TLS client's broadcast shown",
        &format!(
            "{}.split('|').includes('to the page over TLS') && 'yes'",
            texts("#log li.in .text", "|")
        ),
    );
    let problems = problems.lock().unwrap().clone();
    assert!(
        problems.is_empty(),
        "the page reported problems: {problems:?}"
    );
}

/// JavaScript: the rooms list, each room's parts joined by `|` and the
/// rooms by `, ` ("#ops|2 members|Open|Leave").
const ROOMS_SHOWN: &str = "[...document.querySelectorAll('#rooms li')].map(li => \
     [...li.children].map(e => e.textContent).join('|')).join(', ')";

/// Claims `name` with the name field and waits until the page chats as it.
fn claim_name(tab: &Tab, name: &str) {
    type_into(tab, "#name", name);
    tab.press_key("Enter").unwrap();
    wait_for(
        tab,
        &format!("the name {name} claimed"),
        &format!(
            "{} === {name:?} && document.getElementById('state').dataset.state === 'connected' \
             && 'yes'",
            text_of("own-name")
        ),
    );
}

/// Joins `typed` with the rooms form (Enter), and waits for the page to
/// say it joined `room` (the server's spelling) and open its conversation.
fn join_with_form(tab: &Tab, typed: &str, room: &str) {
    type_into(tab, "#room-name", typed);
    tab.press_key("Enter").unwrap();
    wait_for(
        tab,
        &format!("#{room} joined"),
        &format!(
            "{}.includes('joined #{room}') && \
             document.querySelector('#conversations button[aria-current=\"true\"]') \
               .textContent === '#{room}' && 'yes'",
            texts("#log li.note", "\n")
        ),
    );
}

/// JavaScript: the texts of the received entries of conversation `conv`,
/// with their sender and scope, one a line ("alice in #ops: hi").
fn conversation_lines(conv: &str) -> String {
    format!(
        "[...document.querySelectorAll('#log li.in[data-conv=\"{conv}\"]')].map(li => \
           li.querySelector('.from').textContent + ' ' + li.querySelector('.scope').textContent \
           + ': ' + li.querySelector('.text').textContent).join('\\n')"
    )
}

/// Two pages in one room; one leaves (closes its page) and comes back with
/// the same name on a server with `--history`: it is shown, in the room's
/// conversation, what the room said meanwhile, once and in order, and
/// switching conversations shows each one's lines only.
#[test]
fn page_member_back_in_a_room_sees_what_it_missed() {
    let Some(path) = chromium() else { return };
    let dir = TempDir::new("page-rooms");
    let server = Server::start(&["--history", dir.arg()]);
    let (_browser, alice, problems) = open_page(path.clone(), server.addr.port());
    wait_connected(&alice);
    // Without a name the page says why rooms cannot be joined: a muted
    // hint, since nothing was refused yet.
    wait_for(
        &alice,
        "rooms need a name",
        &format!(
            "{} === 'Rooms belong to names: choose a name (or sign in) to join one.' && \
             document.getElementById('room-problem').dataset.tone === 'hint' && \
             getComputedStyle(document.getElementById('room-problem')).fontWeight === '400' && \
             document.getElementById('room-join').disabled && 'yes'",
            text_of("room-problem")
        ),
    );
    claim_name(&alice, "alice");
    let (_, alice_exhibitor) = wait_connected(&alice);
    // bob's page in a browser of its own: a background tab is not given
    // focus or keys.
    let bob_browser = launch(path);
    let url = format!("http://127.0.0.1:{}/", server.addr.port());
    let open_bob = || {
        let bob = bob_browser.new_tab().unwrap();
        bob.navigate_to(&url)
            .unwrap()
            .wait_until_navigated()
            .unwrap();
        wait_connected(&bob);
        claim_name(&bob, "bob");
        bob
    };
    let bob = open_bob();

    // Not a room name: said at once, nothing sent.
    type_into(&alice, "#room-name", "#9lives");
    alice.press_key("Enter").unwrap();
    wait_for(
        &alice,
        "the bad room name refused",
        &format!(
            "{} === 'A room name starts with a letter, then up to 23 letters, digits, \
             \".\", \"_\" or \"-\".' && 'yes'",
            text_of("room-problem")
        ),
    );
    evaluate(
        &alice,
        "document.getElementById('room-name').value = ''",
        false,
    );
    join_with_form(&alice, "#ops", "ops");
    // The server's refusals are sentences too: #ops is no queue.
    evaluate(
        &alice,
        "document.getElementById('room-queue').checked = true",
        false,
    );
    type_into(&alice, "#room-name", "ops");
    alice.press_key("Enter").unwrap();
    wait_for(
        &alice,
        "the other kind refused",
        &format!(
            "{} === '#ops is an ordinary room, not a queue: join it without \"queue\".' && 'yes'",
            text_of("room-problem")
        ),
    );
    evaluate(
        &alice,
        "document.getElementById('room-queue').checked = false; \
         document.getElementById('room-name').value = ''; \
         document.getElementById('room-name').dispatchEvent(new Event('input'))",
        false,
    );
    // Editing the field clears the last answer.
    wait_for(
        &alice,
        "the answer cleared",
        "document.getElementById('room-problem').hidden && 'yes'",
    );
    // Any case, with or without '#', is the same room.
    join_with_form(&bob, "OPS", "ops");
    wait_for(
        &bob,
        "the room listed with two members",
        &format!("{ROOMS_SHOWN} === '#ops|2 members|Open|Leave' && 'yes'"),
    );
    let room = evaluate(
        &bob,
        "document.querySelector('#rooms li').dataset.room",
        false,
    );
    let room: u16 = room.as_str().unwrap().parse().unwrap();
    assert!((0x4000..=0x7fff).contains(&room), "room id {room}");
    let conv = format!("room:{room}");

    // alice writes in the room's conversation (the picker follows it).
    type_and_send(&alice, "before you left");
    wait_for(
        &alice,
        "the room message delivered",
        &format!(
            "{} && 'yes'",
            sent_shows("before you left", Some("in #ops"), "delivered")
        ),
    );
    wait_for(
        &bob,
        "the room message shown in its conversation",
        &format!(
            "(() => {{ const t = {}; return t === 'alice in #ops: before you left' && t; }})()",
            conversation_lines(&conv)
        ),
    );

    // Choosing alice in "To" moves bob to their conversation; his line
    // starts one on alice's page too.
    evaluate(
        &bob,
        &format!(
            "(() => {{ const d = document.getElementById('dest'); d.value = '{alice_exhibitor}'; \
               d.dispatchEvent(new Event('change')); }})()"
        ),
        false,
    );
    type_and_send(&bob, "psst");
    wait_for(
        &alice,
        "bob's private line in his conversation",
        &format!(
            "(() => {{ const t = {}; return t === 'bob to you: psst' && t; }})()",
            conversation_lines("person:bob")
        ),
    );

    // bob closes his page (FLW); his name stays a member.
    bob.close(true).unwrap();
    // Until the server has let bob go, alice's Refresh still lists him.
    let deadline = std::time::Instant::now() + Duration::from_millis(PAGE_WAIT_MS);
    loop {
        let listed = evaluate(
            &alice,
            "new Promise((resolve) => { const list = document.getElementById('clients'); \
               const observer = new MutationObserver(() => { observer.disconnect(); \
                 resolve(list.textContent); }); \
               observer.observe(list, { childList: true }); \
               document.getElementById('refresh').click(); \
               setTimeout(() => { observer.disconnect(); resolve(list.textContent); }, 2000); })",
            true,
        );
        if !listed.as_str().unwrap().contains("bob") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bob still listed: {listed}"
        );
    }
    for text in ["while you were away", "and this"] {
        type_and_send(&alice, text);
        wait_for(
            &alice,
            "delivered to the room (alice's own page)",
            &format!(
                "{} && 'yes'",
                sent_shows(text, Some("in #ops"), "delivered")
            ),
        );
    }
    // bob's conversation while he is away: "To" says so rather than keep
    // #ops, and what alice writes there waits for him (TELL), as "/tell
    // bob" would: bob is a member of #ops, so the server knows his name.
    evaluate(
        &alice,
        "document.querySelector('#conversations button[data-conv=\"person:bob\"]').click()",
        false,
    );
    wait_for(
        &alice,
        "\"To\" says bob is away",
        "document.getElementById('dest').value === '' && \
         document.getElementById('dest').selectedOptions[0].textContent === \
         'bob is not connected' && 'yes'",
    );
    type_and_send(&alice, "are you there?");
    wait_for(
        &alice,
        "the message stored for bob",
        &format!(
            "{} && 'yes'",
            sent_shows("are you there?", Some("to bob"), "stored for bob")
        ),
    );
    assert_eq!(
        evaluate(&alice, "document.getElementById('text').value", false),
        Value::String(String::new()),
        "the box is cleared once told"
    );
    // A broadcast too, so that switching conversations has lines to hide.
    evaluate(
        &alice,
        "document.querySelector('#conversations button[data-conv=\"everyone\"]').click()",
        false,
    );
    type_and_send(&alice, "to everyone");
    wait_for(
        &alice,
        "the broadcast delivered",
        &format!(
            "{} && 'yes'",
            sent_shows("to everyone", Some("to all"), "delivered")
        ),
    );

    // bob comes back with the same name: what the room said while he was
    // away is shown, in its conversation, once, in order, and not what he
    // had seen.
    let bob = open_bob();
    wait_for(
        &bob,
        "the missed room messages",
        &format!(
            "(() => {{ const t = {}; return t === 'alice in #ops: while you were away\\n\
             alice in #ops: and this' && t; }})()",
            conversation_lines(&conv)
        ),
    );
    // His page knows he is a member (the room's messages reached him).
    wait_for(
        &bob,
        "bob shown as a member",
        &format!("{ROOMS_SHOWN} === '#ops|2 members|Open|Leave' && 'yes'"),
    );
    // Opening the room's conversation shows its lines only.
    evaluate(
        &bob,
        &format!("document.querySelector('#conversations button[data-conv=\"{conv}\"]').click()"),
        false,
    );
    let visible = "[...document.querySelectorAll('#log li.in')].filter(li => !li.hidden)\
                   .map(li => li.querySelector('.text').textContent).join('|')";
    wait_for(
        &bob,
        "only the room's lines",
        &format!(
            "(() => {{ const t = {visible}; return t === 'while you were away|and this' && t; }})()"
        ),
    );
    evaluate(
        &bob,
        "document.querySelector('#conversations button[data-conv=\"everyone\"]').click()",
        false,
    );
    wait_for(
        &bob,
        "only the broadcasts",
        &format!("(() => {{ const t = {visible}; return t === 'to everyone' && t; }})()"),
    );

    // bob answers in the room; alice's page, in the room's conversation
    // with its list refreshed, is the README's picture.
    evaluate(
        &bob,
        &format!("document.querySelector('#conversations button[data-conv=\"{conv}\"]').click()"),
        false,
    );
    type_and_send(&bob, "back, thanks");
    wait_for(
        &alice,
        "bob's answer in the room",
        &format!(
            "{}.endsWith('bob in #ops: back, thanks') && 'yes'",
            conversation_lines(&conv)
        ),
    );
    evaluate(
        &alice,
        &format!("document.querySelector('#conversations button[data-conv=\"{conv}\"]').click()"),
        false,
    );
    evaluate(
        &alice,
        "document.getElementById('rooms-refresh').click()",
        false,
    );
    wait_for(
        &alice,
        "the room's count refreshed",
        &format!("{ROOMS_SHOWN} === '#ops|2 members|Open|Leave' && 'yes'"),
    );
    type_into(&alice, "#text", "welcome back");
    screenshot(&alice, "page-rooms.png", DESKTOP);

    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

/// `evchat chat ADDR --name NAME`, piped, once it has said who it is.
fn named_chat(server: &Server, name: &str) -> crate::util::Proc {
    let chat = crate::util::Proc::spawn("evchat", &["chat", &server.target(), "--name", name]);
    let said = chat.stdout.expect_prefixed(&format!("you are {name}, "));
    assert!(said.ends_with(" (exhibitor)"), "{said}");
    chat
}

/// A message told (TELL) to bob while he was away, by a real `evchat chat`,
/// is shown on bob's page when he claims his name again, marked "while you
/// were away". The page acknowledges WAITING as well as the MSG after it
/// (PROTOCOL.md, "Waiting messages": both count in rule 4's FIFO): a page
/// that acknowledged only the MSG would be one ack short and cut off at
/// `--ack-timeout`. A plain exhibitor that never acknowledges is the
/// clock: once the server has cut it off, more than the ack timeout has
/// passed since the page was sent WAITING, and the page, still connected
/// with the same ids, is shown a message sent after that.
#[test]
fn page_back_with_its_name_shows_a_waiting_message_marked_and_stays_connected() {
    let Some(path) = chromium() else { return };
    let dir = TempDir::new("page-tell");
    let server = Server::start(&["--history", dir.arg(), "--ack-timeout", "1"]);
    // bob's name is a member of #ops, then offline.
    let mut bob_chat = named_chat(&server, "bob");
    bob_chat.input("/join #ops\n");
    bob_chat.stdout.expect_line("joined #ops (1 member)");
    bob_chat.close_input();
    assert_eq!(bob_chat.wait().code(), Some(0));
    let mut alice = named_chat(&server, "alice");
    let before = now_ms();
    alice.input("/msg bob the build is green\n");
    alice
        .stdout
        .expect_line("you to bob: the build is green ⏳ stored for bob");
    let after = now_ms();

    let (_browser, bob, problems) = open_page(path, server.addr.port());
    wait_connected(&bob);
    claim_name(&bob, "bob");
    let ids = wait_connected(&bob);
    let waited = "[...document.querySelectorAll('#log li.in.waited')].map(li => \
                  li.querySelector('.from').textContent + ' ' + \
                  li.querySelector('.scope').textContent + ': ' + \
                  li.querySelector('.text').textContent).join('\\n')";
    wait_for(
        &bob,
        "the waiting message shown marked",
        &format!(
            "(() => {{ const t = {waited}; \
               return t === 'alice while you were away: the build is green' && t; }})()"
        ),
    );
    // Marked with the time the server stored it, not the time shown.
    let stamped = evaluate(
        &bob,
        "String(Date.parse(document.querySelector('#log li.in.waited time').dateTime))",
        false,
    );
    let stamped: u64 = stamped.as_str().unwrap().parse().unwrap();
    assert!(
        (before..=after).contains(&stamped),
        "stored at {stamped}, not between {before} and {after}"
    );

    // The clock: a MSG to a plain exhibitor that never acknowledges fails
    // (ERRO to its emitter) once --ack-timeout has passed.
    let mut mute = Raw::connect(server.addr);
    let mute_id = mute.identify_exhibitor();
    let mut clock = Raw::connect(server.addr);
    let clock_id = clock.identify_emitter(1);
    clock.send(&msg(clock_id, mute_id, 1, b"tick"));
    assert_eq!(
        clock.frame_within(Duration::from_millis(PAGE_WAIT_MS)),
        Some(Frame::bare(Kind::Erro, 0xffff, clock_id, 1)),
        "the mute exhibitor's delivery fails at the ack timeout"
    );

    alice.input("/msg bob still there?\n");
    alice.stdout.expect_line("you to bob: still there? ✓");
    wait_for(
        &bob,
        "the later message shown live",
        &format!(
            "(() => {{ const t = {}; return t === 'alice to you: still there?' && t; }})()",
            "[...document.querySelectorAll('#log li.in:not(.waited)')].map(li => \
               li.querySelector('.from').textContent + ' ' + \
               li.querySelector('.scope').textContent + ': ' + \
               li.querySelector('.text').textContent).join('\\n')"
        ),
    );
    assert_eq!(wait_connected(&bob), ids, "the page kept its session");
    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.unwrap().as_millis() as u64
}

/// JavaScript: whether the newest note the page shows says exactly `want`.
fn last_note_is(want: &str) -> String {
    format!(
        "(() => {{ const n = [...document.querySelectorAll('#log li.note .text')]; \
           return n.length > 0 && n[n.length - 1].textContent === {want:?} && 'yes'; }})()"
    )
}

/// The page leaves a message for a name that is offline: "/tell NAME
/// text" sends TELL, its entry says "stored for bob", and bob's page,
/// claiming the name later, shows it marked as waited for. bob never
/// joined a room: the server knows his name because he signed in since it
/// started (PROTOCOL.md, "Known names"). A name never seen, a bad name and
/// a bare "/tell" each get their sentence, and a TELL to a name online is
/// shown there at once, "delivered".
#[test]
fn page_tells_an_offline_name_and_the_name_sees_it_on_sign_in() {
    let Some(path) = chromium() else { return };
    let dir = TempDir::new("page-tells");
    let server = Server::start(&["--history", dir.arg()]);
    let mut bob_chat = named_chat(&server, "bob");
    bob_chat.close_input();
    assert_eq!(bob_chat.wait().code(), Some(0));

    let (_alice_browser, alice, alice_problems) = open_page(path.clone(), server.addr.port());
    wait_connected(&alice);
    claim_name(&alice, "alice");
    type_and_send(&alice, "/tell");
    wait_for(
        &alice,
        "the usage of /tell",
        &last_note_is("not sent: /tell NAME message leaves a message for NAME, online or not"),
    );
    // A line not sent stays in the box, to be mended.
    let clear = "document.getElementById('text').value = ''";
    evaluate(&alice, clear, false);
    type_and_send(&alice, "/tell 1bob hi");
    wait_for(
        &alice,
        "a bad name refused before sending",
        &last_note_is(
            "not sent: \"1bob\" is not a name: a letter, then up to 23 letters, digits, \".\", \"_\" or \"-\"",
        ),
    );
    evaluate(&alice, clear, false);
    type_and_send(&alice, "/tell dave hi");
    wait_for(
        &alice,
        "a name the server does not know",
        &format!(
            "{} && 'yes'",
            sent_shows(
                "hi",
                Some("to dave"),
                "not delivered: no one named dave is known to the server"
            )
        ),
    );
    type_and_send(&alice, "/tell bob see you at 3");
    wait_for(
        &alice,
        "the message stored for bob",
        &format!(
            "{} && 'yes'",
            sent_shows("see you at 3", Some("to bob"), "stored for bob")
        ),
    );
    assert_eq!(
        evaluate(&alice, "document.getElementById('text').value", false),
        Value::String(String::new()),
        "the box is cleared once told"
    );

    let (_bob_browser, bob, bob_problems) = open_page(path, server.addr.port());
    wait_connected(&bob);
    claim_name(&bob, "bob");
    let waited = "[...document.querySelectorAll('#log li.in.waited')].map(li => \
                  li.querySelector('.from').textContent + ' ' + \
                  li.querySelector('.scope').textContent + ': ' + \
                  li.querySelector('.text').textContent).join('\\n')";
    wait_for(
        &bob,
        "the told message shown marked",
        &format!(
            "(() => {{ const t = {waited}; \
               return t === 'alice while you were away: see you at 3' && t; }})()"
        ),
    );
    // bob answers with /tell too: alice is online, so it is a MSG to her.
    type_and_send(&bob, "/tell alice got it");
    wait_for(
        &bob,
        "the answer delivered",
        &format!(
            "{} && 'yes'",
            sent_shows("got it", Some("to alice"), "delivered")
        ),
    );
    wait_for(
        &alice,
        "bob's answer shown",
        &format!(
            "(() => {{ const t = {}; return t === 'bob to you: got it' && t; }})()",
            conversation_lines("person:bob")
        ),
    );
    for problems in [alice_problems, bob_problems] {
        let problems = problems.lock().unwrap();
        assert!(problems.is_empty(), "the page reported: {problems:#?}");
    }
}

/// What the page says to "/help".
const PAGE_HELP: &str = "Write a message and choose who gets it in the list beside it. /tell \
                         NAME message leaves a message for NAME, online or not. A message that \
                         starts with / is written with two: //like this.";

/// Lines that start with / are the page's commands: "/help" says what the
/// page understands, another command (evchat chat's "/to bob") is said
/// not sent and stays in the box, and "//" sends a line that starts with
/// "/". A TELL the server refuses with ERRO (no --history: an offline name
/// waits for nothing) says why, as evchat chat does. Before, "/help" and
/// "/to" went out as messages and the refused TELL read "not delivered".
#[test]
fn page_commands_are_said_not_sent_and_a_refused_tell_says_why() {
    let Some(path) = chromium() else { return };
    let server = Server::start(&[]);
    let (_browser, alice, problems) = open_page(path, server.addr.port());
    wait_connected(&alice);
    claim_name(&alice, "alice");
    type_and_send(&alice, "/help");
    wait_for(&alice, "the page's help", &last_note_is(PAGE_HELP));
    type_and_send(&alice, "/to bob");
    wait_for(
        &alice,
        "a command of evchat chat's, not sent",
        &last_note_is(
            "not sent: the page knows /tell and /help, not /to; a message that starts with / \
             is written with two (//like this)",
        ),
    );
    assert_eq!(
        evaluate(&alice, "document.getElementById('text').value", false),
        Value::String("/to bob".to_string()),
        "a line not sent stays in the box"
    );
    evaluate(&alice, "document.getElementById('text').value = ''", false);
    // Any case, and spaces after it.
    type_and_send(&alice, "/HELP ");
    wait_for(&alice, "the page's help again", &last_note_is(PAGE_HELP));
    type_and_send(&alice, "//slash");
    wait_for(
        &alice,
        "a line starting with / sent with one",
        &format!(
            "{} && 'yes'",
            sent_shows("/slash", Some("to all"), "delivered")
        ),
    );
    type_and_send(&alice, "/tell bob hi");
    wait_for(
        &alice,
        "the refused TELL's reason",
        &format!(
            "{} && 'yes'",
            sent_shows(
                "hi",
                Some("to bob"),
                "not delivered: bob is not online (a server keeps messages for later only with \
                 --history)"
            )
        ),
    );
    // In the conversation of someone away a line goes as TELL, and "//"
    // stands for "/" there too ("To" as the page sets it there).
    evaluate(
        &alice,
        "(() => { const d = document.getElementById('dest'); \
           d.appendChild(new Option('carol is not connected', '')); d.value = ''; })()",
        false,
    );
    type_and_send(&alice, "//shrug");
    wait_for(
        &alice,
        "the TELL with one slash",
        &format!(
            "{} && 'yes'",
            sent_shows(
                "/shrug",
                Some("to carol"),
                "not delivered: carol is not online (a server keeps messages for later only \
                 with --history)"
            )
        ),
    );
    let problems = problems.lock().unwrap();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}
