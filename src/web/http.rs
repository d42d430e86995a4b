//! HTTP/1.1 on the web port: the request head (parsed with `httparse`,
//! bounded by [`MAX_HEAD_LEN`]) and the answer to it: the page's files, the
//! WebSocket upgrade's 101 (after the handshake and origin checks), an
//! error status, or, for `/metrics` and `/stats`, word that the server must
//! answer from its own state ([`Answer::Report`]; [`report_answer`] then
//! writes it). Every answer but the upgrade closes the connection.

use super::page;

/// A request head larger than this is refused (the connection is closed).
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Headers parsed per request; a browser's upgrade sends about a dozen.
const MAX_HEADERS: usize = 32;

/// Why a request head could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head over {MAX_HEAD_LEN} bytes")]
    TooLarge,
    #[error("malformed request head: {0}")]
    Malformed(String),
}

/// The parts of an HTTP request the server acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without its query string.
    pub path: String,
    /// `HTTP/1.x`: the minor version.
    pub version: u8,
    pub host: Option<String>,
    pub origin: Option<String>,
    pub upgrade: Option<String>,
    pub connection: Option<String>,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    /// The `Authorization` header, which may carry a secret.
    pub authorization: Option<Authorization>,
}

/// An `Authorization` header's value. It may hold a token, so its `Debug`
/// shows nothing of it, and nothing here logs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Authorization(String);

impl Authorization {
    /// The credentials of a `Bearer` scheme (RFC 6750; the scheme's name
    /// in any case), if that is the scheme.
    pub fn bearer(&self) -> Option<&str> {
        let (scheme, credentials) = self.0.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credentials.trim())
    }
}

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorization(..)")
    }
}

/// What the server reports on its own state over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// `GET /metrics`: the Prometheus text format.
    Metrics,
    /// `GET /stats`: JSON, totals and one entry per client.
    Stats,
}

/// The request head at the start of `buf`, and the bytes it takes;
/// `Ok(None)` while it is incomplete and still within [`MAX_HEAD_LEN`].
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > MAX_HEAD_LEN {
        return Err(HeadError::TooLarge);
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let target = req.path.unwrap_or("/");
    let request = Request {
        method: req.method.unwrap_or("").to_string(),
        path: target.split('?').next().unwrap_or("/").to_string(),
        version: req.version.unwrap_or(0),
        host: header("host"),
        origin: header("origin"),
        upgrade: header("upgrade"),
        connection: header("connection"),
        ws_key: header("sec-websocket-key"),
        ws_version: header("sec-websocket-version"),
        authorization: header("authorization").map(Authorization),
    };
    Ok(Some((request, len)))
}

/// What the server does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes, then close.
    Close { status: u16, bytes: Vec<u8> },
    /// Send these bytes (the 101), then speak WebSocket.
    Upgrade { bytes: Vec<u8> },
    /// The server answers from its own state (see [`report_answer`]).
    Report(Report),
}

impl Answer {
    /// The bytes that go on the wire.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Answer::Close { bytes, .. } | Answer::Upgrade { bytes } => bytes,
            Answer::Report(_) => &[],
        }
    }
}

/// Decides the answer to `req`: the page's files, the WebSocket upgrade on
/// `/ws`, or an error status. Browser pages from `allowed_origins`
/// (`https://chat.example`), besides the server's own, may open a WebSocket.
pub fn answer(req: &Request, allowed_origins: &[String]) -> Answer {
    if req.method != "GET" {
        return status(405, "only GET is served\n", &[("Allow", "GET")]);
    }
    match req.path.as_str() {
        "/ws" => return upgrade(req, allowed_origins),
        "/metrics" => return Answer::Report(Report::Metrics),
        "/stats" => return Answer::Report(Report::Stats),
        _ => {}
    }
    match page::asset(&req.path) {
        Some(asset) => reply(200, asset.content_type, asset.body, &[]),
        None => status(404, "not found\n", &[]),
    }
}

fn upgrade(req: &Request, allowed_origins: &[String]) -> Answer {
    if req.version != 1 {
        return status(400, "WebSocket needs HTTP/1.1\n", &[]);
    }
    let has_token = |value: &Option<String>, token: &str| {
        value.as_deref().is_some_and(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token(&req.upgrade, "websocket") || !has_token(&req.connection, "upgrade") {
        return status(
            426,
            "this path speaks WebSocket only\n",
            &[("Upgrade", "websocket")],
        );
    }
    match req.ws_version.as_deref() {
        None => return status(400, "missing Sec-WebSocket-Version\n", &[]),
        Some("13") => {}
        Some(_) => {
            return status(
                426,
                "unsupported WebSocket version\n",
                &[("Sec-WebSocket-Version", "13")],
            );
        }
    }
    let Some(key) = req.ws_key.as_deref().filter(|k| is_valid_ws_key(k)) else {
        return status(400, "missing or malformed Sec-WebSocket-Key\n", &[]);
    };
    if let Some(origin) = &req.origin
        && !origin_allowed(origin, req.host.as_deref(), allowed_origins)
    {
        return status(403, "cross-origin WebSocket refused\n", &[]);
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let bytes = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Answer::Upgrade {
        bytes: bytes.into_bytes(),
    }
}

/// A key is the base64 form of 16 bytes: 22 characters and `==`.
fn is_valid_ws_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes.ends_with(b"==")
        && bytes[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        // The last character before the padding carries 2 bits: the
        // other 4 must be zero.
        && b"AQgw".contains(&bytes[21])
}

/// An `Origin` passes when its host (and port) is the request's `Host`, or
/// when it is listed in `--allow-origin`.
fn origin_allowed(origin: &str, host: Option<&str>, allowed_origins: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    if allowed_origins
        .iter()
        .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    match (authority, host) {
        (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// The headers every answer carries: no caching, no sniffing, and a
/// content policy that allows the page's own origin only (no inline code).
const COMMON_HEADERS: &str = "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
     Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'\r\nConnection: close\r\n";

/// How the server answers a [`Report`] request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportAnswer {
    /// 200 with this body, of this content type.
    Body {
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// 401: credentials are needed (a `Bearer` token).
    Unauthorized,
    /// 403: this address may not read it.
    Forbidden,
}

/// The bytes of the answer to a [`Report`] request; its status.
pub fn report_answer(answer: ReportAnswer) -> (u16, Vec<u8>) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match answer {
        ReportAnswer::Body { content_type, body } => {
            (200, reply_bytes(200, content_type, &body, &[]))
        }
        ReportAnswer::Unauthorized => (
            401,
            reply_bytes(
                401,
                TEXT,
                b"an admin account's token is needed: Authorization: Bearer evt_...\n",
                &[("WWW-Authenticate", "Bearer realm=\"evchat\"")],
            ),
        ),
        ReportAnswer::Forbidden => (
            403,
            reply_bytes(403, TEXT, b"not allowed from this address\n", &[]),
        ),
    }
}

/// The answer to a head that cannot be parsed.
pub fn bad_request() -> Answer {
    status(400, "malformed request\n", &[])
}

/// The answer to an unencrypted request on a server that requires TLS
/// (`--require-tls`): 403, and the address to use instead when the `Host`
/// header is a plain host name or address.
pub fn tls_required(host: Option<&str>) -> Answer {
    let plain_host = host.filter(|host| {
        !host.is_empty()
            && host.len() <= 255
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    });
    let body = match plain_host {
        Some(host) => format!("this server requires TLS: open https://{host}/ instead\n"),
        None => "this server requires TLS: use https:// instead\n".to_string(),
    };
    status(403, &body, &[])
}

fn status(code: u16, body: &str, extra: &[(&str, &str)]) -> Answer {
    reply(code, "text/plain; charset=utf-8", body.as_bytes(), extra)
}

fn reply(code: u16, content_type: &str, body: &[u8], extra: &[(&str, &str)]) -> Answer {
    Answer::Close {
        status: code,
        bytes: reply_bytes(code, content_type, body, extra),
    }
}

fn reply_bytes(code: u16, content_type: &str, body: &[u8], extra: &[(&str, &str)]) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n{COMMON_HEADERS}",
        reason_phrase(code),
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_keys_are_sixteen_bytes_in_base64() {
        assert!(is_valid_ws_key("dGhlIHNhbXBsZSBub25jZQ=="));
        // Both of base64's non-alphanumeric characters.
        assert!(is_valid_ws_key(&format!("{}A==", "+".repeat(21))));
        assert!(is_valid_ws_key(&format!("{}A==", "/".repeat(21))));
        assert!(!is_valid_ws_key("dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_ws_key("dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!is_valid_ws_key("dGhlIHNhbXBsZSBub25j*Q=="));
        assert!(!is_valid_ws_key(""));
    }
}
