//! The server's reports on itself against the real binaries: `GET /metrics`
//! (parsed by the Prometheus client library's own parser), `GET /stats`,
//! who may read them (401, 403, 200 byte for byte), `evchat stats` with
//! `--once` and `--json`, and `server --log-format json`. Every count is
//! checked against what the test itself sent and read.
//!
//! The parser is Debian's python3-prometheus-client (`.ci/run` installs
//! it). Without it the parsing test fails, with the command that installs
//! it; outside CI (never when `CI=true`), `EVCHAT_SKIP_PROMETHEUS=1` skips it.

use crate::util::*;
use evchat::auth::{Account, Accounts, Credential, Name, Roles, Secret};
use evchat::proto::*;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

const S: ClientId = SERVER_ID;
const PYTHON: &str = "/usr/bin/python3";

/// HELLO(0, 65535, seq 0), version 1, `name`, no secret.
fn hello(name: &[u8]) -> Vec<u8> {
    let mut wire = hdr_raw(8, 0, S, 0);
    wire.extend_from_slice(&((4 + name.len()) as u16).to_be_bytes());
    wire.push(1);
    wire.push(name.len() as u8);
    wire.extend_from_slice(name);
    wire.extend_from_slice(&0u16.to_be_bytes());
    wire
}

/// HELLOACK(65535, 0, seq 0): code 0, version 1, roles 7, `name`.
fn helloack(name: &[u8]) -> Vec<u8> {
    let mut wire = hdr_raw(9, S, 0, 0);
    wire.extend_from_slice(&((4 + name.len()) as u16).to_be_bytes());
    wire.extend_from_slice(&[0, 1, 7, name.len() as u8]);
    wire.extend_from_slice(name);
    wire
}

fn hdr_raw(kind: u16, origin: u16, dest: u16, seq: u16) -> Vec<u8> {
    [kind, origin, dest, seq]
        .iter()
        .flat_map(|f| f.to_be_bytes())
        .collect()
}

/// `GET path` with these extra header lines.
fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").into_bytes()
}

/// The bytes of an answer as they came (head and body).
fn answer_len(answer: &HttpAnswer) -> usize {
    let head: usize = answer
        .headers
        .iter()
        .map(|(name, value)| name.len() + 2 + value.len() + 2)
        .sum();
    answer.status_line.len() + 2 + head + 2 + answer.body.len()
}

fn assert_common_headers(answer: &HttpAnswer) {
    assert_eq!(answer.header("X-Content-Type-Options"), "nosniff");
    assert_eq!(answer.header("Cache-Control"), "no-store");
    assert_eq!(answer.header("Connection"), "close");
}

/// The samples of a text exposition: `name{labels}` to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').expect("name and value");
            (key.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn metrics(server: &Server) -> HashMap<String, f64> {
    let answer = http_exchange(server.addr, &get("/metrics", ""));
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    samples(std::str::from_utf8(&answer.body).unwrap())
}

/// A plain exhibitor, and an emitter named by HELLO paired with it (an
/// exhibitor that opted in would be told the emitter's name by WHO).
fn named_pair(server: &Server, name: &[u8]) -> (Raw, ClientId, Raw, ClientId) {
    let mut ex = server.raw();
    let ex_id = ex.identify_exhibitor();
    let mut em = server.raw();
    em.send(&hello(name));
    expect_exact(&mut em, &helloack(name));
    let em_id = em.identify_emitter(ex_id);
    (ex, ex_id, em, em_id)
}

/// `n` MSGs from `em` to `ex`, each delivered, acknowledged and answered.
fn exchange(em: &mut Raw, em_id: ClientId, ex: &mut Raw, ex_id: ClientId, n: u16) {
    for seq in 0..n {
        let m = msg(em_id, ex_id, seq, b"counted");
        em.send(&m);
        expect_exact(ex, &m);
        ex.send(&hdr(Kind::Ok, ex_id, em_id, seq));
        expect_exact(em, &hdr(Kind::Ok, S, em_id, seq));
    }
}

/// Waits until the server has removed an answered HTTP connection, so
/// that the next report counts it closed.
fn wait_http_closed(server: &Server) {
    server
        .proc
        .stderr
        .skip_until("an HTTP connection's removal", TIMEOUT, |line| {
            line.contains("disconnected") && line.contains("transport=http")
        });
}

// ---- /metrics ------------------------------------------------------------

#[test]
fn metrics_count_exactly_the_messages_sent() {
    let server = Server::start(&[]);
    let (mut ex, ex_id, mut em, em_id) = named_pair(&server, b"alice");
    let before = metrics(&server);
    exchange(&mut em, em_id, &mut ex, ex_id, 5);
    let after = metrics(&server);
    let diff = |key: &str| after[key] - before[key];
    assert_eq!(diff(r#"evchat_frames_received_total{type="MSG"}"#), 5.0);
    assert_eq!(diff(r#"evchat_frames_received_total{type="OK"}"#), 5.0);
    assert_eq!(diff(r#"evchat_frames_sent_total{type="MSG"}"#), 5.0);
    assert_eq!(diff(r#"evchat_frames_sent_total{type="OK"}"#), 5.0);
    assert_eq!(diff("evchat_deliveries_total"), 5.0);
    // One scrape between: its request and its answer; and five of each frame.
    let frames_in = 5 * (msg(0, 0, 0, b"counted").len() + 8);
    assert_eq!(
        diff("evchat_received_bytes_total"),
        (frames_in + get("/metrics", "").len()) as f64
    );
    assert_eq!(diff("evchat_connections_opened_total"), 1.0);
    assert_eq!(
        after[r#"evchat_clients{kind="exhibitor",transport="tcp"}"#],
        1.0
    );
    assert_eq!(
        after[r#"evchat_clients{kind="emitter",transport="tcp"}"#],
        1.0
    );
    assert_eq!(after["evchat_acks_pending"], 0.0);
    assert_eq!(after["evchat_output_queue_bytes"], 0.0);
    assert_eq!(
        after[r#"evchat_loop_turn_seconds_bucket{le="+Inf"}"#],
        after["evchat_loop_turn_seconds_count"]
    );
}

#[test]
fn metrics_parse_with_the_prometheus_client_parser() {
    let Some(python) = prometheus_parser() else {
        return;
    };
    let server = Server::start(&[]);
    let (mut ex, ex_id, mut em, em_id) = named_pair(&server, b"alice");
    exchange(&mut em, em_id, &mut ex, ex_id, 2);
    let answer = http_exchange(server.addr, &get("/metrics", ""));
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        answer.header("Content-Type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    // The parser's view: each family's type and samples, as JSON.
    let script = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = {}\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   out[f.name] = {'type': f.type, 'samples': [[s.name, s.labels, s.value] for s in f.samples]}\n\
        print(json.dumps(out))\n";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&answer.body).unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "the parser refused it: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    let families: Value = serde_json::from_slice(&done.stdout).unwrap();
    // Counters are named without `_total` by the parser.
    assert_eq!(families["evchat_deliveries"]["type"], "counter");
    assert_eq!(
        families["evchat_deliveries"]["samples"],
        serde_json::json!([["evchat_deliveries_total", {}, 2.0]])
    );
    assert_eq!(families["evchat_loop_turn_seconds"]["type"], "histogram");
    assert_eq!(families["evchat_clients"]["type"], "gauge");
    assert_eq!(families["evchat_output_queue_bytes"]["type"], "gauge");
    let msgs_in = &families["evchat_frames_received"]["samples"];
    assert!(
        msgs_in
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["evchat_frames_received_total", {"type": "MSG"}, 2.0])),
        "{msgs_in}"
    );
    // Every family the server writes came through.
    let written = std::str::from_utf8(&answer.body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .count();
    assert_eq!(families.as_object().unwrap().len(), written);
}

/// Debian's python3 with the Prometheus client library, or None when a
/// developer outside CI chose to skip (see the module's doc).
fn prometheus_parser() -> Option<&'static str> {
    let present = Command::new(PYTHON)
        .args(["-c", "import prometheus_client.parser"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Some(PYTHON);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !ci && std::env::var("EVCHAT_SKIP_PROMETHEUS").is_ok_and(|v| v == "1") {
        eprintln!("skipped: no prometheus_client (EVCHAT_SKIP_PROMETHEUS=1)");
        return None;
    }
    panic!(
        "{PYTHON} cannot import prometheus_client: apt-get install -y --no-install-recommends \
         python3-prometheus-client (.ci/run does this). Outside CI, EVCHAT_SKIP_PROMETHEUS=1 \
         skips this test."
    );
}

// ---- who may read them -----------------------------------------------------

/// A token for `name`: `evt_` and 64 hex digits, varied by the name.
fn token(name: &str) -> String {
    let digits: String = (0..64)
        .map(|i| {
            let b = name.as_bytes()[i % name.len()] as usize + i;
            char::from_digit((b % 16) as u32, 16).unwrap()
        })
        .collect();
    format!("evt_{digits}")
}

/// A server with `--auth`: `boss` is an admin, `alice` is not.
fn auth_server(dir: &TempDir, extra: &[&str]) -> Server {
    let mut all = Accounts::default();
    for (name, roles) in [("boss", "view,admin"), ("alice", "view,emit,broadcast")] {
        all.upsert(Account {
            name: Name::new(name).unwrap(),
            roles: Roles::parse(roles).unwrap(),
            secret: Secret::for_token(&Credential::new(token(name).into_bytes())),
            expires: None,
        });
    }
    let path = dir.path().join("accounts");
    all.save(&path).unwrap();
    let mut args = vec!["--auth", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

const UNAUTHORIZED_BODY: &str =
    "an admin account's token is needed: Authorization: Bearer evt_...\n";

#[test]
fn with_auth_a_report_without_an_admin_token_is_401_and_tells_nothing() {
    let dir = TempDir::new("metrics-401");
    let server = auth_server(&dir, &[]);
    let long = format!("Authorization: Bearer evt_{}\r\n", "a".repeat(300));
    let alice = format!("Authorization: Bearer {}\r\n", token("alice"));
    let boss_basic = format!("Authorization: Basic {}\r\n", token("boss"));
    let refused = [
        String::new(),
        alice,
        "Authorization: Bearer hunter2\r\n".into(),
        "Authorization: Bearer\r\n".into(),
        "Authorization: Bearer \r\n".into(),
        boss_basic,
        long,
    ];
    for path in ["/metrics", "/stats"] {
        for extra in &refused {
            let answer = http_exchange(server.addr, &get(path, extra));
            assert_eq!(
                answer.status_line, "HTTP/1.1 401 Unauthorized",
                "{path} {extra:?}"
            );
            assert_eq!(answer.header("WWW-Authenticate"), "Bearer realm=\"evchat\"");
            assert_eq!(answer.header("Content-Type"), "text/plain; charset=utf-8");
            assert_common_headers(&answer);
            assert_eq!(
                answer.body,
                UNAUTHORIZED_BODY.as_bytes(),
                "{path} {extra:?}"
            );
        }
    }
    // The tokens tried never reach the log.
    let boss = format!("Authorization: bearer {}\r\n", token("boss"));
    let answer = http_exchange(server.addr, &get("/metrics", &boss));
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    let lines = server.proc.stderr.drain();
    assert!(lines.iter().any(|l| l.contains("status=401")), "{lines:?}");
    for line in lines {
        assert!(!line.contains("evt_"), "a token in the log: {line}");
    }
}

#[test]
fn with_auth_an_admin_token_reads_both_reports() {
    let dir = TempDir::new("metrics-admin");
    let server = auth_server(&dir, &[]);
    let boss = format!("Authorization: Bearer {}\r\n", token("boss"));
    let answer = http_exchange(server.addr, &get("/metrics", &boss));
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    assert_common_headers(&answer);
    let text = std::str::from_utf8(&answer.body).unwrap();
    assert_eq!(samples(text)["evchat_scrapes_refused_total"], 0.0);
    let answer = http_exchange(server.addr, &get("/stats", &boss));
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    assert_eq!(answer.header("Content-Type"), "application/json");
    let stats: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(stats["totals"]["connections_opened"], 2);
}

#[test]
fn with_auth_an_allowed_range_reads_without_a_token() {
    let dir = TempDir::new("metrics-allow-auth");
    let server = auth_server(&dir, &["--metrics-allow", "127.0.0.0/8"]);
    let answer = http_exchange(server.addr, &get("/metrics", ""));
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
}

#[test]
fn without_auth_an_address_outside_the_allowed_ranges_is_403() {
    let server = Server::start(&["--metrics-allow", "192.0.2.0/24", "--metrics-allow", "::1"]);
    for path in ["/metrics", "/stats"] {
        let answer = http_exchange(server.addr, &get(path, ""));
        assert_eq!(answer.status_line, "HTTP/1.1 403 Forbidden", "{path}");
        assert_eq!(answer.header("Content-Type"), "text/plain; charset=utf-8");
        assert_common_headers(&answer);
        assert_eq!(answer.body, b"not allowed from this address\n");
        assert!(answer.headers.iter().all(|(n, _)| n != "WWW-Authenticate"));
    }
}

#[test]
fn a_metrics_allow_that_is_no_range_refuses_start() {
    for (value, why) in [
        (
            "10.0.0.1/8",
            "10.0.0.1 has bits set past its /8: write the network address",
        ),
        ("10.0.0.0/33", "'33' is not a prefix length of 0..=32 bits"),
        ("localhost", "'localhost' is not an IP address"),
    ] {
        let done = Command::new(bin("server"))
            .args(["0", "--metrics-allow", value])
            .output()
            .unwrap();
        assert_eq!(done.status.code(), Some(2), "{value}");
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(
            stderr.contains(&format!(
                "invalid value '{value}' for '--metrics-allow <CIDR>': {why}"
            )),
            "{value}: {stderr}"
        );
    }
}

// ---- /stats and evchat stats ---------------------------------------------

/// What `evchat stats` sends (its module's doc).
fn stats_request(addr: &str) -> Vec<u8> {
    format!(
        "GET /stats HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: evchat-stats\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS`, by the calendar.
fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let (mut year, mut day) = (1970u64, days);
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    while day >= if leap(year) { 366 } else { 365 } {
        day -= if leap(year) { 366 } else { 365 };
        year += 1;
    }
    let lengths = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 0;
    while day >= lengths[month] {
        day -= lengths[month];
        month += 1;
    }
    let in_day = secs % 86_400;
    format!(
        "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        month + 1,
        day + 1,
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

#[test]
fn stats_once_shows_exactly_what_the_server_counted() {
    let server = Server::start(&[]);
    let addr = server.target();
    let (mut ex, ex_id, mut em, em_id) = named_pair(&server, b"alice");
    exchange(&mut em, em_id, &mut ex, ex_id, 3);
    // The server's start and the clients' times, from /stats itself.
    let request = stats_request(&addr);
    let first = http_exchange(server.addr, &request);
    wait_http_closed(&server);
    let stats: Value = serde_json::from_slice(&first.body).unwrap();
    let client = |conn: u64| {
        stats["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["conn"] == conn)
            .unwrap_or_else(|| panic!("no conn {conn} in {stats}"))
            .clone()
    };
    let (ex_entry, em_entry) = (client(0), client(1));

    let out = Command::new(bin("evchat"))
        .args(["stats", &addr, "--once"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Everything the clients and the first request sent and read.
    let hello_len = hello(b"alice").len();
    let msg_len = msg(0, 0, 0, b"counted").len();
    let bytes_in = hello_len + 2 * 8 + 3 * (msg_len + 8) + 2 * request.len();
    let bytes_out = helloack(b"alice").len() + 2 * 8 + 3 * (msg_len + 8) + answer_len(&first);
    let row = |entry: &Value, kind: &str, name: &str| {
        format!(
            "{:>5} {:>5} {:<16} {:<12} {:<4} {:<21} {:<19} {:>9} {:>7}\n",
            entry["conn"].as_u64().unwrap(),
            entry["id"].as_u64().unwrap(),
            name,
            kind,
            "tcp",
            entry["peer"].as_str().unwrap(),
            utc(entry["since"].as_u64().unwrap()),
            0,
            0
        )
    };
    let want = format!(
        "evchat {version} at {addr}, started {started}\n\
         clients     2 (emitters 1, exhibitors 1, unidentified 0; tcp 2, ws 0, tls 0, wss 0)\n\
         delivered   3, acks pending 0, queued 0 bytes\n\
         frames in   9: OK 3, OI 2, MSG 3, HELLO 1\n\
         frames out  9: OK 5, MSG 3, HELLOACK 1\n\
         bytes       in {bytes_in}, out {bytes_out}\n\
         connections opened 4, closed 1; slow consumers 0, ack timeouts 0; sign-ins 0, refused 0\n\
         \n\
         2 of 2 clients, busiest first\n\
         {:>5} {:>5} {:<16} {:<12} {:<4} {:<21} {:<19} {:>9} {:>7}\n\
         {ex_row}{em_row}",
        "CONN",
        "ID",
        "NAME",
        "KIND",
        "VIA",
        "PEER",
        "SINCE (UTC)",
        "QUEUE",
        "PENDING",
        version = env!("CARGO_PKG_VERSION"),
        started = utc(stats["start_time"].as_u64().unwrap()),
        ex_row = row(&ex_entry, "exhibitor", "-"),
        em_row = row(&em_entry, "emitter", "alice"),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

/// TELL (17) and WAITING (18) are counted like every other type, and
/// `evchat stats` shows every type the server counts (JOIN's and TELL's
/// were left out of its list, and of its totals).
#[test]
fn a_tell_is_counted_and_shown_by_evchat_stats() {
    let server = Server::start(&[]);
    let addr = server.target();
    let (_ex, _ex_id, mut em, em_id) = named_pair(&server, b"alice");
    let tell = ext::ExtFrame::Tell(ext::Tell {
        origin: em_id,
        dest: S,
        seq: 0,
        name: b"nobody".to_vec(),
        text: b"hi".to_vec().into(),
    });
    em.send(&tell.to_bytes());
    // Without history a TELL to a name offline is refused.
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 0));
    let (_, json, _) = crate::check::evchat(&["stats", &addr, "--json"]);
    let stats: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(stats["totals"]["frames_received"]["TELL"], 1, "{stats}");
    let (_, text, _) = crate::check::evchat(&["stats", &addr, "--once"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("frames in "))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(line, "frames in   4: OI 2, HELLO 1, TELL 1", "{text}");
}

#[test]
fn stats_json_is_the_servers_answer_listing_each_client_with_its_name() {
    let server = Server::start(&[]);
    let addr = server.target();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (ex, ex_id, em, em_id) = named_pair(&server, b"alice");
    let out = Command::new(bin("evchat"))
        .args(["stats", &addr, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    let stats: Value = serde_json::from_str(&text).unwrap();
    let since = stats["clients"][0]["since"].as_u64().unwrap();
    assert!(since >= before && since <= stats["time"].as_u64().unwrap());
    let entry = |conn: u64, id: ClientId, name: Value, kind: &str, raw: &Raw| {
        serde_json::json!({
            "conn": conn, "id": id, "name": name, "kind": kind, "transport": "tcp",
            "peer": raw.stream.local_addr().unwrap().to_string(),
            "since": stats["clients"][conn as usize]["since"],
            "queue_bytes": 0, "pending_acks": 0,
        })
    };
    assert_eq!(
        stats["clients"],
        serde_json::json!([
            entry(0, ex_id, Value::Null, "exhibitor", &ex),
            entry(1, em_id, "alice".into(), "emitter", &em),
        ])
    );
    assert_eq!(stats["clients_total"], 2);
    assert_eq!(stats["clients_listed"], 2);
    let totals = &stats["totals"];
    assert_eq!(totals["frames_received"]["HELLO"], 1);
    assert_eq!(totals["frames_received"]["OI"], 2);
    assert_eq!(totals["frames_sent"]["HELLOACK"], 1);
    assert_eq!(
        totals["clients"],
        serde_json::json!({"unidentified": 0, "emitter": 1, "exhibitor": 1})
    );
}

#[test]
fn stats_asks_for_a_token_on_a_server_with_auth_and_uses_one() {
    let dir = TempDir::new("stats-token");
    let server = auth_server(&dir, &[]);
    let addr = server.target();
    let refused = Command::new(bin("evchat"))
        .args(["stats", &addr, "--once"])
        .env_remove("EVCHAT_TOKEN")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        format!(
            "evchat stats: {addr} answered 401: the server has --auth: give an admin account's \
             token with --token-file or EVCHAT_TOKEN\n"
        )
    );
    let not_admin = Command::new(bin("evchat"))
        .args(["stats", &addr, "--json"])
        .env("EVCHAT_TOKEN", token("alice"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&not_admin.stderr),
        format!("evchat stats: {addr} answered 401: the token is not an admin account's\n")
    );
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{}\n", token("boss"))).unwrap();
    let read = Command::new(bin("evchat"))
        .args([
            "stats",
            &addr,
            "--json",
            "--token-file",
            file.to_str().unwrap(),
        ])
        .env_remove("EVCHAT_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        read.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let stats: Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(stats["clients_total"], 0);
    // Neither way prints the token.
    for out in [&refused, &not_admin, &read] {
        assert!(!String::from_utf8_lossy(&out.stderr).contains("evt_"));
    }
}

#[test]
fn stats_refuses_a_token_file_that_holds_no_token() {
    let dir = TempDir::new("stats-bad-token");
    let file = dir.path().join("token");
    std::fs::write(&file, "hunter2\n").unwrap();
    let out = Command::new(bin("evchat"))
        .args([
            "stats",
            "127.0.0.1:9",
            "--once",
            "--token-file",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "evchat stats: --token-file {}: not a token (evt_ and hex digits; a password is not \
             taken here)\n",
            file.display()
        )
    );
}

/// No server there, or no port given: the clients' sentences, not the
/// system's "Connection refused (os error 111)"; a missing port is a usage
/// error (status 2), as in `evchat chat` and `evchat check`.
#[test]
fn stats_without_a_server_or_a_port_says_so_as_the_clients_do() {
    let unused = ReservedPort::new();
    let addr = unused.target();
    for (given, code, said) in [
        (
            addr.as_str(),
            1,
            format!(
                "cannot connect to {addr}: nothing is listening there (connection refused) — is \
                 the server running?"
            ),
        ),
        (
            "127.0.0.1",
            2,
            "'127.0.0.1' is not HOST:PORT (a host name or address, then a port: 127.0.0.1:5000)"
                .to_string(),
        ),
    ] {
        let (status, _, err) = crate::check::evchat(&["stats", given, "--once"]);
        assert_eq!(status, code, "{given}");
        assert_eq!(err, format!("evchat stats: {said}\n"));
    }
}

#[test]
fn stats_says_when_the_port_is_not_an_evchat_servers_http() {
    // A binary-only server: the request is no frame, so it is closed
    // without an HTTP answer.
    let server = Server::start(&["--no-web"]);
    let out = Command::new(bin("evchat"))
        .args(["stats", &server.target(), "--once"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr,
        format!(
            "evchat stats: {}: not an HTTP answer (is this an evchat server's port?)\n",
            server.target()
        )
    );
}

// ---- --log-format json ------------------------------------------------------

#[test]
fn json_logs_are_one_object_a_line_with_the_text_lines_fields() {
    let server = Server::start(&["--log-format", "json"]);
    let mut raw = server.raw();
    let id = raw.identify_exhibitor();
    let local = raw.stream.local_addr().unwrap().to_string();
    let (skipped, line) = server
        .proc
        .stderr
        .skip_until("the connected line", TIMEOUT, |l| {
            l.contains("\"message\":\"connected\"")
        });
    for earlier in skipped {
        let _: Value =
            serde_json::from_str(&earlier).unwrap_or_else(|e| panic!("not JSON ({e}): {earlier}"));
    }
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["level"], "INFO");
    assert_eq!(event["target"], "evchat::server");
    assert_eq!(
        event["fields"],
        serde_json::json!({"message": "connected", "conn": 0, "peer": local})
    );
    assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));
    drop(raw);
    let (_, line) = server
        .proc
        .stderr
        .skip_until("the disconnected line", TIMEOUT, |l| {
            l.contains("\"message\":\"disconnected\"")
        });
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        event["fields"],
        serde_json::json!({
            "message": "disconnected", "conn": 0, "id": id, "peer": local,
            "transport": "tcp", "reason": "peer closed the connection",
        })
    );
}

#[test]
fn stats_live_redraws_with_rates_since_the_last_screen() {
    let server = Server::start(&[]);
    let (mut ex, ex_id, mut em, em_id) = named_pair(&server, b"alice");
    let view = Proc::spawn("evchat", &["stats", &server.target(), "--interval", "0.1"]);
    let screen_start = |l: &str| l.starts_with("evchat ") && l.contains(" at ");
    view.stdout
        .skip_until("the first screen", TIMEOUT, screen_start);
    let (first, _) = view
        .stdout
        .skip_until("the second screen", TIMEOUT, screen_start);
    // The first screen has no rates yet; every later one has.
    assert!(
        first
            .iter()
            .any(|l| l == "delivered   0, acks pending 0, queued 0 bytes"),
        "{first:?}"
    );
    exchange(&mut em, em_id, &mut ex, ex_id, 2);
    let (_, line) = view
        .stdout
        .skip_until("a screen with the two deliveries", TIMEOUT, |l| {
            l.starts_with("delivered   2 (")
        });
    let rate = line
        .strip_prefix("delivered   2 (")
        .and_then(|rest| rest.strip_suffix("/s), acks pending 0, queued 0 bytes"))
        .unwrap_or_else(|| panic!("{line}"));
    rate.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
    // Not a terminal: no escape sequences.
    assert!(first.iter().all(|l| !l.contains('\x1b')));
}

/// A listener that answers one request with `answer`, on a port the test
/// holds (no bind-then-drop race).
fn fake_http(answer: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if std::io::Read::read(&mut stream, &mut byte).unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
        }
        // The peer may stop reading once it has seen enough.
        let _ = stream.write_all(&answer);
    });
    (addr, thread)
}

#[test]
fn stats_refuses_an_answer_that_is_not_stats_json_or_too_large() {
    let oversize = {
        let mut answer = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        answer.resize(answer.len() + (16 << 20) + 1, b' ');
        answer
    };
    for (answer, why) in [
        (
            b"HTTP/1.1 200 OK\r\n\r\n{\"totals\":".to_vec(),
            "the /stats JSON does not parse: EOF while parsing a value at line 1 column 10",
        ),
        (
            b"HTTP/1.1 200 OK\r\n\r\n{\"totals\":{}}".to_vec(),
            "the /stats JSON has no totals or clients",
        ),
        (
            b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(),
            "not an HTTP/1.1 status line",
        ),
        (oversize, "answer over 16777216 bytes"),
    ] {
        let (addr, thread) = fake_http(answer);
        let out = Command::new(bin("evchat"))
            .args(["stats", &addr, "--once"])
            .output()
            .unwrap();
        thread.join().unwrap();
        assert_eq!(out.status.code(), Some(1), "{why}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("evchat stats: {addr}: {why}\n")
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn history_appends_and_fsyncs_are_counted() {
    let dir = TempDir::new("metrics-history");
    let server = Server::start(&["--history", dir.arg(), "--fsync", "always"]);
    let (mut ex, ex_id, mut em, em_id) = named_pair(&server, b"alice");
    let before = metrics(&server);
    assert_eq!(before["evchat_history_appends_total"], 0.0);
    exchange(&mut em, em_id, &mut ex, ex_id, 4);
    let after = metrics(&server);
    assert_eq!(after["evchat_history_appends_total"], 4.0);
    assert_eq!(
        after["evchat_history_appended_bytes_total"],
        (4 * b"counted".len()) as f64
    );
    // Under `always` each OK waited for a sync round: at least one ran.
    assert!(after["evchat_history_fsyncs_total"] >= 1.0, "{after:?}");
    assert!(after["evchat_history_fsync_seconds_total"] > 0.0);
    assert!(after["evchat_history_write_seconds_total"] > 0.0);
}
