//! The identity extension in the event loop (PROTOCOL.md, "Extension:
//! identity"): answering HELLO, and with accounts (`--auth`) handing its
//! secret to the [`Verifier`] thread and the verdict back to the client and
//! the router. The router is told a session's name and roles bits, never a
//! secret or how it was checked; the verifier's notify callback wakes the
//! loop's `mio::Waker`, and the outcomes are drained each turn, as the
//! turn's hellos are handed to it together at the turn's end.
//!
//! Only the error path of the loop's parse comes here (a type the plain
//! codec does not know), so a client that never sends HELLO costs nothing
//! more per frame.

use super::Server;
use crate::auth::{
    Accounts, AccountsError, Credential, Expiry, FailureBudget, Name, Request, Source, Tarpit,
    Verifier, looks_like_token,
};
use crate::proto::ext::{
    Code, ExtError, ExtFrame, FLAG_QUEUE, HELLO, HELLOACK, Hello, HelloAck, JOIN, KICK, LEAVE,
    PLAIN_ROLES, ROOMS, TELL, VERSION,
};
use crate::proto::{Header, SERVER_ID};
use crate::router::{ConnId, HelloPlace, NameAnswer, NameTaken};
use mio::Waker;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info, warn};

/// Sources the failure budget remembers at most (PROTOCOL.md, "Limits").
const BUDGET_SOURCES: usize = 4096;

/// Refusals held for `--auth-delay` at most at once; more are answered at
/// once (PROTOCOL.md, "Limits").
const HELD_REFUSALS: usize = 4096;

/// Accounts for the identity extension (`server --auth FILE`).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The accounts file, read at start (and on reload) with
    /// [`Accounts::load`].
    pub file: PathBuf,
    /// Refused sign-ins per source within `window` before its hellos are
    /// refused unchecked (`--auth-failures`); checks still in flight
    /// count against it, so guesses sent at once get no more.
    pub failures: u32,
    /// The failure budget's window (`--auth-window`).
    pub window: Duration,
    /// Sign-ins waiting for the verifier; one more is "busy"
    /// (`--auth-queue`).
    pub queue: usize,
    /// Connections from one address (IPv6: /64) that have not finished
    /// HELLO and OI; one more is closed at accept (`--max-unidentified`).
    pub max_unidentified: usize,
    /// How long after its HELLO a refused sign-in (code 2 or 5) is
    /// answered at the soonest (`--auth-delay`): a client guessing one
    /// connection after another gets one guess a delay (zero: at once).
    pub refusal_delay: Duration,
}

impl AuthConfig {
    /// The defaults, with this accounts file.
    pub fn new(file: PathBuf) -> AuthConfig {
        AuthConfig {
            file,
            failures: 10,
            window: Duration::from_secs(60),
            queue: 64,
            max_unidentified: 64,
            refusal_delay: Duration::from_secs(1),
        }
    }
}

/// A sign-in being checked.
struct Checking {
    conn: ConnId,
    peer: IpAddr,
    /// The HELLO's seq, which the HELLOACK echoes.
    seq: u16,
    /// When the HELLO arrived: what a refusal's delay runs from.
    since: Instant,
    /// Whether it counts against its source's budget while in flight (a
    /// password: see [`Server::on_hello`]).
    counted: bool,
}

/// A password sign-in waiting for its source's budget to allow a check.
struct Waiting {
    conn: ConnId,
    /// The tag it waits for in `by_conn` (so a later connection in its
    /// slot is never answered), and then is checked under.
    tag: u64,
    seq: u16,
    since: Instant,
    name: Name,
    secret: Credential,
}

/// What the loop holds for sign-ins.
pub(super) struct Auth {
    verifier: Verifier,
    budget: FailureBudget,
    next_tag: u64,
    /// Sign-ins being checked, by tag.
    checking: HashMap<u64, Checking>,
    /// Password sign-ins waiting for a check in flight from their source
    /// to end (their source's failures plus checks in flight reached the
    /// budget), oldest first. Bounded by the unidentified connections a
    /// source may hold (`--max-unidentified`).
    waiting: HashMap<Source, VecDeque<Waiting>>,
    /// The tag each connection waits for (dropped with the connection, so
    /// that a verdict never reaches a later connection in the same slot).
    by_conn: HashMap<ConnId, u64>,
    /// The account (lower-case key) of each signed-in connection, indexed
    /// by connection (slab indices are dense: 16 bytes a slot, where a map
    /// cost an idle session about 50), and how many connections each such
    /// account has: what expiry is checked on.
    signed_in: Vec<Option<Arc<str>>>,
    live: HashMap<Arc<str>, u32>,
    /// When the earliest expiry of a signed-in account passes.
    next_expiry: Option<Instant>,
    /// Connections not yet identified, per source.
    unidentified: HashMap<Source, usize>,
    max_unidentified: usize,
    /// Refusals waiting for `--auth-delay`: the connection, the tag it
    /// waits for in `by_conn` (so a later connection in its slot is never
    /// answered), the HELLO's seq and the code.
    held: Tarpit<(ConnId, u64, u16, Code)>,
}

impl Auth {
    /// Loads the accounts and starts the verifier, which wakes the loop
    /// after each check.
    pub(super) fn start(config: &AuthConfig, waker: Arc<Waker>) -> Result<Auth, AccountsError> {
        let accounts = Accounts::load(&config.file)?;
        let verifier = Verifier::new(accounts, config.queue, move || {
            if let Err(e) = waker.wake() {
                warn!(error = %e, "could not wake the event loop");
            }
        })
        .map_err(|source| AccountsError::Read {
            path: config.file.display().to_string(),
            source,
        })?;
        Ok(Auth {
            verifier,
            budget: FailureBudget::new(config.failures, config.window, BUDGET_SOURCES),
            next_tag: 0,
            checking: HashMap::new(),
            waiting: HashMap::new(),
            by_conn: HashMap::new(),
            signed_in: Vec::new(),
            live: HashMap::new(),
            next_expiry: None,
            unidentified: HashMap::new(),
            max_unidentified: config.max_unidentified.max(1),
            held: Tarpit::new(config.refusal_delay, HELD_REFUSALS),
        })
    }

    /// The accounts as last loaded (a report's access check reads them).
    pub(super) fn accounts(&self) -> Arc<Accounts> {
        self.verifier.accounts()
    }

    pub(super) fn forget_conn(&mut self, conn: ConnId) {
        self.by_conn.remove(&conn);
        if let Some(key) = self.signed_in.get_mut(conn).and_then(Option::take)
            && let Some(count) = self.live.get_mut(&key)
        {
            *count -= 1;
            if *count == 0 {
                self.live.remove(&key);
            }
        }
    }

    /// Forgets the failures of sources whose window has passed (memory
    /// is bounded anyway; this keeps the table small when idle).
    pub(super) fn forget_expired_failures(&mut self, now: Instant) {
        self.budget.forget_expired(now);
    }

    /// `conn` signed in to the account `key`, whose secret expires then.
    fn signed_in(&mut self, conn: ConnId, key: Box<str>, expires: Option<Expiry>) {
        // One copy of the key per account, however many sessions it holds.
        let key = match self.live.get_key_value(&*key) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(key),
        };
        *self.live.entry(key.clone()).or_default() += 1;
        if self.signed_in.len() <= conn {
            self.signed_in.resize(conn + 1, None);
        }
        self.signed_in[conn] = Some(key);
        if let Some(at) = expires.map(instant_of) {
            self.next_expiry = Some(self.next_expiry.map_or(at, |e| e.min(at)));
        }
    }

    /// The accounts with sessions whose secret has expired at `now`; notes
    /// when the next one expires. Read from the current accounts, so that
    /// a reload's expiry applies to sessions already signed in.
    fn expired(&mut self, now: SystemTime) -> Vec<Box<str>> {
        let accounts = self.verifier.accounts();
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for key in self.live.keys() {
            let Some(expiry) = accounts.get(key).and_then(|a| a.expires) else {
                continue;
            };
            if expiry.has_passed(now) {
                expired.push(Box::from(&**key));
            } else {
                let at = instant_of(expiry);
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        self.next_expiry = next;
        expired
    }
}

/// The loop's clock reading at which `expiry` passes.
fn instant_of(expiry: Expiry) -> Instant {
    let left = expiry
        .as_system_time()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    Instant::now() + left
}

/// What the loop does after an extension frame.
pub(super) enum ExtStep {
    /// The frame was taken: this many bytes; go on reading.
    Took(usize),
    /// Not whole yet: wait for more bytes.
    Wait,
    /// Stop reading this connection (closing, or waiting for a verdict).
    Stop,
}

impl Server {
    /// An extension type at the front of `buf` (the plain codec does not
    /// know it). Read only where the extension allows it; anywhere else it
    /// is an unknown type (rule 7) or a frame before OI (rule 1).
    pub(super) fn on_extension(&mut self, conn: ConnId, header: Header, buf: &[u8]) -> ExtStep {
        let now = self.wire.now;
        let place = self.router.hello_place(conn);
        match (place, header.kind) {
            (Some(HelloPlace::Open), HELLO) => match ExtFrame::parse(buf) {
                Ok(None) => ExtStep::Wait,
                Ok(Some((ExtFrame::Hello(hello), len))) => {
                    // Taken; while it is checked (or the connection closes)
                    // the router takes no more input from it.
                    self.on_hello(conn, hello);
                    ExtStep::Took(len)
                }
                Ok(Some(_)) | Err(_) => {
                    info!(conn, "malformed HELLO");
                    self.hello_ack(conn, header.seq, Code::Malformed, 0, b"");
                    ExtStep::Stop
                }
            },
            (Some(HelloPlace::Accepted), HELLO) => {
                info!(conn, "second HELLO after acceptance");
                self.hello_ack(conn, header.seq, Code::Malformed, 0, b"");
                ExtStep::Stop
            }
            // A HELLO after OI is refused like a second OI (ERRO, kept).
            (Some(HelloPlace::AfterOi), HELLO | KICK | JOIN | LEAVE | ROOMS | TELL) => {
                match ExtFrame::parse(buf) {
                    Ok(None) => ExtStep::Wait,
                    Ok(Some((ExtFrame::Kick(kick), len))) => {
                        self.router.kick(conn, kick, now, &mut self.wire);
                        ExtStep::Took(len)
                    }
                    Ok(Some((ExtFrame::Join(join), len))) => {
                        let header = ExtFrame::Join(join.clone()).header();
                        let room = room_name(&join.name);
                        let queue = join.flags & FLAG_QUEUE != 0;
                        let prefetch = join.prefetch.unwrap_or(1);
                        let room = room.as_ref().map(Name::as_str);
                        self.router
                            .join(conn, header, queue, prefetch, room, now, &mut self.wire);
                        ExtStep::Took(len)
                    }
                    Ok(Some((ExtFrame::Leave(leave), len))) => {
                        let header = ExtFrame::Leave(leave.clone()).header();
                        let room = room_name(&leave.name);
                        let room = room.as_ref().map(Name::as_str);
                        self.router.leave(conn, header, room, now, &mut self.wire);
                        ExtStep::Took(len)
                    }
                    Ok(Some((ExtFrame::Rooms(header), len))) => {
                        self.router.list_rooms(conn, header, now, &mut self.wire);
                        ExtStep::Took(len)
                    }
                    Ok(Some((ExtFrame::Tell(tell), len))) => {
                        let name = room_name(&tell.name);
                        let name = name.as_ref().map(Name::as_str);
                        // A TELL is rare: one clock read each, for the
                        // time a stored one is shown with.
                        let now_ms = super::history::wall_clock_ms();
                        self.router.tell_request(
                            conn,
                            header,
                            name,
                            tell.text,
                            now_ms,
                            now,
                            &mut self.wire,
                        );
                        ExtStep::Took(len)
                    }
                    Ok(Some((_, len))) => {
                        info!(conn, kind = header.kind, "extension frame refused after OI");
                        self.router.refuse(conn, header.seq, now, &mut self.wire);
                        ExtStep::Took(len)
                    }
                    Err(ExtError::Malformed(_) | ExtError::NotExtension(_)) => {
                        self.router
                            .on_undecodable(conn, header, now, &mut self.wire);
                        ExtStep::Stop
                    }
                }
            }
            _ => {
                self.router
                    .on_undecodable(conn, header, now, &mut self.wire);
                ExtStep::Stop
            }
        }
    }

    /// A well-formed HELLO from a connection that has not opted in yet.
    fn on_hello(&mut self, conn: ConnId, hello: Hello) {
        let now = self.wire.now;
        let seq = hello.seq;
        if hello.version != VERSION {
            info!(
                conn,
                version = hello.version,
                "HELLO of an unsupported version"
            );
            return self.hello_ack(conn, seq, Code::Version, 0, b"");
        }
        let name = std::str::from_utf8(&hello.name)
            .ok()
            .and_then(|s| Name::new(s).ok());
        let Some(auth) = self.auth.as_mut() else {
            // No accounts: the HELLO claims a name (or none) for the session.
            if !hello.secret.is_empty() {
                return self.hello_ack(conn, seq, Code::NoAccounts, 0, b"");
            }
            if hello.name.is_empty() {
                return self.accept(conn, seq, None, PLAIN_ROLES, true);
            }
            let Some(name) = name else {
                return self.hello_ack(conn, seq, Code::BadName, 0, b"");
            };
            return self.accept(conn, seq, Some(&name), PLAIN_ROLES, true);
        };
        let Some(peer) = self.wire.conns.get(conn).map(|slot| slot.peer.ip()) else {
            return;
        };
        if !auth.budget.allows(peer, now) {
            info!(conn, %peer, "sign-in refused unchecked: too many refused from this source");
            self.wire.metrics.sign_in_failures += 1;
            return self.refuse_later(conn, seq, now, Code::TooManyFailures);
        }
        if hello.secret.is_empty() {
            info!(conn, "HELLO without a secret to a server with accounts");
            return self.hello_ack(conn, seq, Code::AccountsRequired, 0, b"");
        }
        let Some(name) = name else {
            return self.hello_ack(conn, seq, Code::BadName, 0, b"");
        };
        // A presented token costs one SHA-256 and guessing 256 bits is
        // futile, so only passwords (argon2) count while in flight: guesses
        // sent at once all arrive before the first failure is known. A
        // password over the budget waits for a check in flight to end
        // rather than being refused: honest sign-ins behind one address (a
        // proxy, a NAT) are slowed, never refused for it.
        let counted = !looks_like_token(hello.secret.as_bytes());
        let secret = Credential::new(hello.secret.into_vec());
        let tag = auth.next_tag;
        auth.next_tag += 1;
        auth.by_conn.insert(conn, tag);
        self.router.hello_checking(conn);
        if counted && !auth.budget.begin_check(peer, now) {
            debug!(conn, %peer, "sign-in waits for a check in flight from its source");
            auth.waiting
                .entry(Source::from(peer))
                .or_default()
                .push_back(Waiting {
                    conn,
                    tag,
                    seq,
                    since: now,
                    name,
                    secret,
                });
            return;
        }
        self.submit_check(conn, tag, peer, seq, now, &name, secret, counted);
    }

    /// Hands a sign-in to the verifier; code 7 (busy) if its queue is full.
    #[allow(clippy::too_many_arguments)]
    fn submit_check(
        &mut self,
        conn: ConnId,
        tag: u64,
        peer: IpAddr,
        seq: u16,
        since: Instant,
        name: &Name,
        secret: Credential,
        counted: bool,
    ) {
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        let request = Request {
            tag,
            name: name.as_str().to_string(),
            secret,
        };
        if auth.verifier.submit(request).is_err() {
            if counted {
                auth.budget.end_check(peer);
            }
            auth.by_conn.remove(&conn);
            warn!(conn, "sign-in refused: the verifier's queue is full");
            return self.hello_ack(conn, seq, Code::Busy, 0, b"");
        }
        debug!(conn, "sign-in queued for the verifier");
        auth.checking.insert(
            tag,
            Checking {
                conn,
                peer,
                seq,
                since,
                counted,
            },
        );
    }

    /// Starts the waiting sign-ins of `peer`'s source that its budget now
    /// allows, skipping connections gone meanwhile; refuses them all (code
    /// 5) once its failures have spent the budget.
    fn start_waiting(&mut self, peer: IpAddr) {
        let now = self.wire.now;
        let source = Source::from(peer);
        loop {
            let Some(auth) = self.auth.as_mut() else {
                return;
            };
            let Some(queue) = auth.waiting.get_mut(&source) else {
                return;
            };
            let Some(next) = queue.pop_front() else {
                auth.waiting.remove(&source);
                return;
            };
            if auth.by_conn.get(&next.conn) != Some(&next.tag) {
                continue;
            }
            if !auth.budget.allows(peer, now) {
                auth.by_conn.remove(&next.conn);
                info!(conn = next.conn, %peer, "sign-in refused unchecked: too many refused from this source");
                self.wire.metrics.sign_in_failures += 1;
                self.refuse_later(next.conn, next.seq, next.since, Code::TooManyFailures);
                continue;
            }
            if !auth.budget.begin_check(peer, now) {
                queue.push_front(next);
                return;
            }
            let Waiting {
                conn,
                tag,
                seq,
                since,
                name,
                secret,
            } = next;
            self.submit_check(conn, tag, peer, seq, since, &name, secret, true);
        }
    }

    /// Code 0 for `conn`, the router told; code 3 if the name is taken.
    /// With several nodes a claimed name is asked of the engine first: the
    /// HELLO waits for [`Server::name_answered`].
    fn accept(&mut self, conn: ConnId, seq: u16, name: Option<&Name>, roles: u8, claim: bool) {
        let shown = name.map(Name::as_str);
        if claim
            && self.wire.cluster.is_some()
            && let Some(shown) = shown
        {
            if self
                .router
                .claim_name(conn, seq, shown, roles, &mut self.wire)
                .is_err()
            {
                info!(conn, "HELLO's name is taken");
                self.hello_ack(conn, seq, Code::NameTaken, 0, b"");
            }
            return;
        }
        match self
            .router
            .hello_accepted(conn, shown, roles, claim, &mut self.wire)
        {
            Ok(()) => {
                let bytes = shown.unwrap_or("").as_bytes().to_vec();
                self.hello_ack(conn, seq, Code::Accepted, roles, &bytes);
            }
            Err(NameTaken) => {
                info!(conn, "HELLO's name is taken");
                self.hello_ack(conn, seq, Code::NameTaken, 0, b"");
            }
        }
    }

    /// The engine answered a HELLO's name claim (several nodes).
    pub(super) fn name_answered(&mut self, answer: NameAnswer) {
        match answer {
            NameAnswer::Accepted {
                conn,
                seq,
                name,
                roles,
            } => self.hello_ack(conn, seq, Code::Accepted, roles, name.as_bytes()),
            NameAnswer::Taken { conn, seq } => {
                info!(conn, "HELLO's name is taken on another node");
                self.hello_ack(conn, seq, Code::NameTaken, 0, b"");
            }
            NameAnswer::Failed { conn, seq } => {
                warn!(
                    conn,
                    "HELLO refused: the name could not be claimed (cluster engine unavailable)"
                );
                self.hello_ack(conn, seq, Code::Busy, 0, b"");
            }
        }
    }

    /// Sends HELLOACK; a code that closes closes the connection after it.
    fn hello_ack(&mut self, conn: ConnId, seq: u16, code: Code, roles: u8, name: &[u8]) {
        let ack = ExtFrame::HelloAck(HelloAck {
            origin: SERVER_ID,
            dest: 0,
            seq,
            code: code as u8,
            version: VERSION,
            roles,
            name: name.to_vec(),
        });
        self.wire.metrics.frames_out[usize::from(HELLOACK)] += 1;
        self.wire.queue_for(conn, &ack);
        if code.closes() {
            self.router
                .hello_refused(conn, self.wire.now, &mut self.wire);
            self.settle_dropped();
        }
    }

    /// Gives the verifier the turn's sign-ins at once (one lock, at most
    /// one wake-up of its thread, however many hellos the turn read).
    pub(super) fn hand_off_sign_ins(&mut self) {
        if let Some(auth) = self.auth.as_mut() {
            auth.verifier.hand_off();
        }
    }

    /// Answers the sign-ins the verifier has finished.
    pub(super) fn drain_sign_ins(&mut self) {
        let now = self.wire.now;
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        let outcomes: Vec<_> = auth.verifier.drain_results().collect();
        // Sources whose checks in flight ended: their waiting sign-ins may
        // start once this turn's failures are counted.
        let mut ended = Vec::new();
        for outcome in outcomes {
            let Some(auth) = self.auth.as_mut() else {
                return;
            };
            let Some(Checking {
                conn,
                peer,
                seq,
                since,
                counted,
            }) = auth.checking.remove(&outcome.tag)
            else {
                continue;
            };
            if counted {
                auth.budget.end_check(peer);
                ended.push(peer);
            }
            let live = auth.by_conn.get(&conn) == Some(&outcome.tag);
            if live {
                auth.by_conn.remove(&conn);
            }
            if let Err(refusal) = &outcome.result {
                // Counted even when the client has gone: hanging up does
                // not buy another guess.
                auth.budget.record_failure(peer, now);
                info!(conn, %peer, cause = %refusal.cause, "sign-in refused");
                self.wire.metrics.sign_in_failures += 1;
            }
            if !live {
                continue;
            }
            match outcome.result {
                Ok(identity) => {
                    info!(conn, %peer, name = %identity.name, roles = %identity.roles, "signed in");
                    self.wire.metrics.sign_ins += 1;
                    if let Some(auth) = self.auth.as_mut() {
                        auth.signed_in(conn, identity.name.key().into(), identity.expires);
                    }
                    self.accept(
                        conn,
                        seq,
                        Some(&identity.name),
                        identity.roles.bits(),
                        false,
                    );
                }
                Err(_) => self.refuse_later(conn, seq, since, Code::Refused),
            }
        }
        for peer in ended {
            self.start_waiting(peer);
        }
        self.settle_dropped();
    }

    /// Answers a refused HELLO that arrived at `since` no sooner than
    /// `--auth-delay` after it (the tarpit), keeping the session waiting as
    /// while its secret is checked; at once when that has passed or too
    /// many refusals are held.
    fn refuse_later(&mut self, conn: ConnId, seq: u16, since: Instant, code: Code) {
        let now = self.wire.now;
        let Some(auth) = self.auth.as_mut() else {
            return self.hello_ack(conn, seq, code, 0, b"");
        };
        let tag = auth.next_tag;
        if auth.held.hold(now, since, (conn, tag, seq, code)).is_some() {
            return self.hello_ack(conn, seq, code, 0, b"");
        }
        auth.next_tag += 1;
        auth.by_conn.insert(conn, tag);
        self.router.hello_checking(conn);
    }

    /// Sends the held refusals that are due, to connections still open.
    pub(super) fn answer_held_refusals(&mut self) {
        let now = self.wire.now;
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        if auth.held.next_due().is_none_or(|due| now < due) {
            return;
        }
        let due: Vec<_> = auth.held.take_due(now).collect();
        for (conn, tag, seq, code) in due {
            let Some(auth) = self.auth.as_mut() else {
                return;
            };
            if auth.by_conn.get(&conn) != Some(&tag) {
                continue;
            }
            auth.by_conn.remove(&conn);
            self.hello_ack(conn, seq, code, 0, b"");
        }
    }

    /// When the earliest held refusal is due, for the poll.
    pub(super) fn next_held_refusal(&self) -> Option<Instant> {
        self.auth.as_ref()?.held.next_due()
    }

    /// Hands the router the accounts' names as they are now (at start and
    /// after each reload): the offline names a TELL may be stored for.
    pub(super) fn hand_account_names(&mut self) {
        if let Some(auth) = &self.auth {
            let accounts = auth.accounts();
            let names = accounts.iter().map(|a| a.name.as_str());
            self.router.know_account_names(names);
        }
    }

    /// Reloads the accounts file (SIGHUP) with the same checks as at
    /// start. A file that does not load is refused with a log line and the
    /// old accounts are kept; otherwise the sessions of every account gone,
    /// whose roles lost a bit or whose secret changed get FLW and close
    /// (`Accounts::revoked_since`), and sign-ins checked from now on use
    /// the new accounts.
    pub(super) fn reload_accounts(&mut self) {
        let now = self.wire.now;
        let (Some(auth), Some(config)) = (self.auth.as_mut(), self.config.auth.as_ref()) else {
            info!("SIGHUP: no --auth, nothing to reload");
            return;
        };
        let accounts = match Accounts::load(&config.file) {
            Ok(accounts) => accounts,
            Err(e) => {
                warn!(error = %e, "SIGHUP: the accounts file is refused; the old accounts stay");
                return;
            }
        };
        let revoked = accounts.revoked_since(&auth.verifier.accounts());
        let count = accounts.len();
        auth.verifier.replace_accounts(accounts);
        // A changed expiry applies to the sessions already signed in.
        auth.next_expiry = Some(now);
        self.hand_account_names();
        let mut ended = 0;
        for name in &revoked {
            ended += self.router.revoke(&name.key(), now, &mut self.wire);
        }
        info!(
            accounts = count,
            revoked = revoked.len(),
            sessions_ended = ended,
            "SIGHUP: accounts reloaded"
        );
        self.settle_dropped();
    }

    /// Ends the sessions of accounts whose secret has expired, as by KICK
    /// (FLW, closed on the OK), once their expiry passes.
    pub(super) fn end_expired_sessions(&mut self) {
        let now = self.wire.now;
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        if auth.next_expiry.is_none_or(|at| now < at) {
            return;
        }
        for key in auth.expired(SystemTime::now()) {
            let ended = self.router.revoke(&key, now, &mut self.wire);
            info!(account = %key, sessions_ended = ended, "secret expired: sessions ended");
        }
        self.settle_dropped();
    }

    /// When the next signed-in account's secret expires, for the poll.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.auth.as_ref()?.next_expiry
    }

    /// Whether a connection from `peer` may be admitted, and whether it is
    /// counted as unidentified: with `--auth`, at most
    /// `--max-unidentified` from one source at once (None: close it).
    pub(super) fn admit_unidentified(&mut self, peer: SocketAddr) -> Option<bool> {
        let Some(auth) = self.auth.as_mut() else {
            return Some(false);
        };
        let count = auth
            .unidentified
            .entry(Source::from(peer.ip()))
            .or_default();
        if *count >= auth.max_unidentified {
            warn!(
                %peer,
                limit = auth.max_unidentified,
                "too many unidentified connections from this address: closed at accept"
            );
            return None;
        }
        *count += 1;
        Some(true)
    }

    /// `conn` has its id, or is going: it no longer counts as unidentified.
    pub(super) fn identified(&mut self, conn: ConnId) {
        let Some(slot) = self.wire.conns.get_mut(conn) else {
            return;
        };
        slot.unidentified = false;
        let source = Source::from(slot.peer.ip());
        if let Some(auth) = self.auth.as_mut()
            && let Some(count) = auth.unidentified.get_mut(&source)
        {
            *count -= 1;
            if *count == 0 {
                auth.unidentified.remove(&source);
            }
        }
    }

    /// Forgets what waits on `conn` (it is being removed).
    pub(super) fn forget_sign_in(&mut self, conn: ConnId) {
        if let Some(auth) = self.auth.as_mut() {
            auth.forget_conn(conn);
        }
    }
}

/// A room name as sent, if it follows the name rule (the router is handed
/// only names that do: one rule, the accounts' [`Name`]).
fn room_name(bytes: &[u8]) -> Option<Name> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| Name::new(s).ok())
}
