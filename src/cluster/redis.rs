//! The Redis engine (CLUSTER.md): two bridge threads beside the event
//! loop, with the `redis` crate's blocking client, and the loop's own
//! connection for publishing (`publisher.rs`). The command thread joins (a
//! new incarnation, its lease, the id table read after the subscription),
//! runs claims, releases, shows and rooms as the loop queues them (and
//! publishes while the loop has no connection of its own: it opens one and
//! hands it over), renews the lease and reaps dead nodes; the subscriber
//! thread subscribes to the change channel and this node's channel, tells
//! the loop the id table and hands the subscription over: the loop reads
//! it (`subscription.rs`), not the crate. Both queues are bounded, every
//! call has a timeout, and each event wakes the loop. A lost lease fences
//! the incarnation and joins a new one; a lost subscription is made again,
//! and the id table read again, while the lease holds.

use super::publisher::{PublishError, Publisher};
use super::scripts::{CLAIM, CLAIM_NAME, JOIN_ROOM, LEAVE_ROOM, REAP, RELEASE, RELEASE_NAME, SHOW};
use super::subscription::{Reply, Subscription};
use super::{Engine, Event, NodeId, Request, RoomJoin, RoomOutcome, RoomState};
use crate::proto::ext::ROOM_IDS;
use crate::proto::{ClientId, EMITTER_IDS, EXHIBITOR_IDS};
use std::collections::{HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// How many room ids the range offers a node at most (the router's
/// `MAX_ROOMS_CEILING`: a ROOMLIST of them all fits in one frame).
const ROOM_ID_SPAN: u16 = 2048;
/// The name of a node's publishing connection in `CLIENT LIST`.
pub const PUBLISHER_NAME: &str = "evchat-publisher";
/// Every key and channel starts with this.
const PREFIX: &str = "evchat:";
/// How long any one call to Redis may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How many given-up connections wait to be killed at most (one a failed
/// call, and the next connection kills them all, so this is reached only
/// if Redis stops answering `CLIENT KILL` without failing the connection).
const ABANDONED_MAX: usize = 16;
/// How long a failed join waits before the next attempt.
const REJOIN_PAUSE: Duration = Duration::from_millis(500);
/// At most this many publishes go to Redis as one pipeline.
const PIPELINE_MAX: usize = 64;
/// The packed pipeline's buffer is kept up to this size between pipelines.
const PACKED_KEEP: usize = 1 << 20;
/// At most this many releases (of ids and of names together) wait for the
/// engine to return; past it a release is given up (held until this
/// incarnation ends, as before retries). A node holds at most 8,191 ids
/// and a name per session.
const PENDING_RELEASES_MAX: usize = 16_384;

/// How a node uses Redis (`server --cluster URL --node NAME`).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://HOST:PORT`.
    pub url: String,
    /// Shown in the node's lease and in logs.
    pub node: String,
    /// How long a lease lives unless renewed.
    pub lease: Duration,
    /// How often it is renewed (and dead nodes reaped).
    pub renew: Duration,
    /// No successful renewal for this long fences the node.
    pub fence_after: Duration,
    /// Requests the loop may queue before [`Engine::submit`] gives them back.
    pub queue: usize,
}

impl RedisConfig {
    /// The default lease (CLUSTER.md): a dead node's ids are free within
    /// 8 s (the lease, then the next reap).
    pub const LEASE: Duration = Duration::from_secs(6);

    /// Requests the loop may queue by default (`--cluster-queue`): a
    /// window of relays to every other node and a burst of claims.
    pub const QUEUE: usize = 4096;

    /// For this server and node name, with a lease of `lease`: renewed
    /// every third of it, fenced after two thirds without a renewal.
    pub fn new(url: String, node: String, lease: Duration) -> RedisConfig {
        RedisConfig {
            url,
            node,
            lease,
            renew: lease / 3,
            fence_after: lease * 2 / 3,
            queue: RedisConfig::QUEUE,
        }
    }
}

/// The loop's handle on the two bridge threads, and its own connection for
/// publishing (`publisher.rs`).
pub struct RedisEngine {
    requests: Option<SyncSender<Request>>,
    /// What the loop and the command thread share about the publishing
    /// connection and the order of requests.
    shared: Arc<Shared>,
    /// The loop's poll and the tokens of the engine's sockets.
    polled: Polled,
    publisher: Option<Publisher<mio::net::TcpStream>>,
    /// The subscription, once handed over; what it has told since the
    /// last drain.
    subscribed: Option<Subscribed>,
    heard: Vec<Event>,
    /// The subscription's reading stopped at the bound (`queue` events
    /// a drain) with more to read: the next drain reads on.
    more_heard: bool,
    /// Wakes the loop (when reading stopped at the bound: the socket
    /// will not be reported again for what it already holds).
    wake: Arc<dyn Fn() + Send + Sync>,
    /// Whether the publishing connection is polled for room to write too
    /// (only while bytes wait: each write would report room again).
    polled_for_room: bool,
    /// Requests handed to the command thread so far (its `done` catches
    /// up as it finishes them).
    handed: u64,
    /// Requests that wait, in order, for the other path to finish what it
    /// was given (see [`Shared`]); at most `queue`.
    held: VecDeque<Request>,
    queue: usize,
    /// Batches the publishing connection failed, for the next drain.
    failed: Vec<Event>,
    /// Dropped first at the end, so that a bridge thread blocked handing
    /// over an event sees the loop gone.
    events: Option<Receiver<Event>>,
    /// Cleared before each drain (see [`Tell::woken`]).
    woken: Arc<AtomicBool>,
    commands: Option<JoinHandle<()>>,
}

/// What the loop and the command thread share. A batch published on the
/// loop's connection must not overtake a script the thread has not
/// finished (a claim or a show that other nodes must hear first), nor a
/// script overtake a batch not yet answered: each request goes by its path
/// only when the other has nothing in hand, and waits in order otherwise.
struct Shared {
    /// Requests the thread has finished (or failed).
    done: AtomicU64,
    /// The loop waits for `done` to move: the thread wakes it when it does.
    loop_waits: AtomicBool,
    /// The loop has no publishing connection and would like one.
    want_publisher: AtomicBool,
    /// A connection the thread opened, for the loop to take.
    offered: Mutex<Option<std::net::TcpStream>>,
    offer_ready: AtomicBool,
    /// A subscription the subscriber thread made, for the loop to take.
    subscription: Mutex<Option<Subscribed>>,
    subscription_ready: AtomicBool,
}

/// The subscription to this node's channels, once subscribed and the
/// table told: read by the loop from then on (the subscriber thread opens
/// it, reads the table and hands it over).
struct Subscribed {
    sub: Subscription,
    /// The change channel's name (any other channel is this node's).
    changes: Vec<u8>,
    /// Set when the incarnation ends: the loop drops the subscription.
    stop: Arc<AtomicBool>,
    /// Set by the loop when the connection broke: the command thread
    /// subscribes again, and reads the table again, at the next renewal.
    lost: Arc<AtomicBool>,
}

/// Where the engine's sockets are polled: the loop's registry and the
/// tokens of the publishing connection and of the subscription.
pub struct Polled {
    pub registry: mio::Registry,
    pub publisher: mio::Token,
    pub subscription: mio::Token,
}

/// What the bridge threads share: where events go, and how the loop is woken.
#[derive(Clone)]
struct Tell {
    events: SyncSender<Event>,
    wake: Arc<dyn Fn() + Send + Sync>,
    /// Set when the loop has been woken and has not drained since: events
    /// queued meanwhile wake it no more (each wake is a write to the
    /// loop's waker, a system call, and at 1:1 across nodes every batch
    /// and every ACK would pay one).
    woken: Arc<AtomicBool>,
}

impl Tell {
    /// False once the loop is gone.
    fn event(&self, event: Event) -> bool {
        let sent = self.events.send(event).is_ok();
        // The send, then the flag; the drain clears the flag, then reads
        // (both fenced): so either the drain takes this event or this
        // sees the flag clear and wakes the loop.
        fence(Ordering::SeqCst);
        if !self.woken.swap(true, Ordering::SeqCst) {
            (self.wake)();
        }
        sent
    }
}

impl RedisEngine {
    /// Checks the URL and starts the bridge; joining happens on the command
    /// thread (claims queued meanwhile wait for it).
    pub fn start(
        config: RedisConfig,
        wake: impl Fn() + Send + Sync + 'static,
        polled: Polled,
    ) -> Result<RedisEngine, redis::RedisError> {
        let client = redis::Client::open(config.url.as_str())?;
        // The subscriber reads its own TCP socket (`subscription.rs`): say
        // so at start, not at every attempt to join.
        if !matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::Tcp(..)
        ) {
            return Err(std::io::Error::other(
                "a TCP address is needed (redis://[USER:PASSWORD@]HOST:PORT[/DB]), not a unix socket",
            )
            .into());
        }
        let (requests, inbox) = sync_channel(config.queue);
        let (events_tx, events) = sync_channel(config.queue);
        let woken = Arc::new(AtomicBool::new(false));
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(wake);
        let tell = Tell {
            events: events_tx,
            wake: wake.clone(),
            woken: woken.clone(),
        };
        let shared = Arc::new(Shared {
            done: AtomicU64::new(0),
            loop_waits: AtomicBool::new(false),
            want_publisher: AtomicBool::new(true),
            offered: Mutex::new(None),
            offer_ready: AtomicBool::new(false),
            subscription: Mutex::new(None),
            subscription_ready: AtomicBool::new(false),
        });
        let queue = config.queue;
        let thread_shared = shared.clone();
        let commands = std::thread::Builder::new()
            .name("cluster-commands".into())
            .spawn(move || Commands::new(config, client, inbox, tell, thread_shared).run())
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e)))?;
        Ok(RedisEngine {
            shared,
            polled,
            publisher: None,
            subscribed: None,
            heard: Vec::new(),
            more_heard: false,
            wake,
            polled_for_room: false,
            handed: 0,
            held: VecDeque::new(),
            queue,
            failed: Vec::new(),
            requests: Some(requests),
            events: Some(events),
            woken,
            commands: Some(commands),
        })
    }
}

/// What became of a request offered to its path.
enum Sent {
    Done,
    /// The other path has something in hand: it waits.
    Wait(Request),
    /// The command thread's queue is full.
    Full(Request),
}

impl RedisEngine {
    /// Sends `request` by its path: a publish on the loop's connection
    /// when there is one, anything else (and every publish without one) to
    /// the command thread; each only once the other path has nothing in
    /// hand (see [`Shared`]).
    fn send(&mut self, request: Request) -> Sent {
        if let Request::Publish { to, batch, relays } = request {
            if self.publisher.is_none() {
                return self.hand(Request::Publish { to, batch, relays });
            }
            if self.thread_busy() {
                return Sent::Wait(Request::Publish { to, batch, relays });
            }
            let publisher = self.publisher.as_mut().expect("tested above");
            match publisher.publish(to, batch, relays) {
                Ok(()) => self.poll_for_room(),
                Err(e) => self.publisher_lost(e),
            }
            return Sent::Done;
        }
        if self.publisher.as_ref().is_some_and(Publisher::busy) {
            return Sent::Wait(request);
        }
        self.hand(request)
    }

    /// Hands `request` to the command thread.
    fn hand(&mut self, request: Request) -> Sent {
        let Some(requests) = &self.requests else {
            return Sent::Full(request);
        };
        match requests.try_send(request) {
            Ok(()) => {
                self.handed += 1;
                Sent::Done
            }
            Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) => Sent::Full(r),
        }
    }

    /// Whether the command thread has not finished all it was handed; if
    /// so, it wakes the loop when it finishes the next.
    fn thread_busy(&self) -> bool {
        if self.shared.done.load(Ordering::SeqCst) == self.handed {
            return false;
        }
        self.shared.loop_waits.store(true, Ordering::SeqCst);
        // It may have finished between the two: look again.
        self.shared.done.load(Ordering::SeqCst) != self.handed
    }

    /// Sends what waits, in order, as far as the paths allow.
    fn send_held(&mut self) {
        while let Some(request) = self.held.pop_front() {
            match self.send(request) {
                Sent::Done => {}
                Sent::Wait(request) => {
                    self.held.push_front(request);
                    break;
                }
                Sent::Full(request) => {
                    self.held.push_front(request);
                    self.shared.loop_waits.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
    }

    /// Polls the publishing connection for room to write exactly while
    /// bytes wait for it.
    fn poll_for_room(&mut self) {
        let Some(publisher) = &mut self.publisher else {
            return;
        };
        let (registry, token) = (&self.polled.registry, &self.polled.publisher);
        let blocked = publisher.blocked();
        if blocked == self.polled_for_room {
            return;
        }
        let interest = if blocked {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        };
        match registry.reregister(publisher.stream_mut(), *token, interest) {
            Ok(()) => self.polled_for_room = blocked,
            Err(e) => self.publisher_lost(PublishError::Io(e)),
        }
    }

    /// Takes the connection the command thread opened, if one waits.
    fn adopt_offered(&mut self) {
        if !self.shared.offer_ready.swap(false, Ordering::SeqCst) {
            return;
        }
        let offered = self.shared.offered.lock().map(|mut o| o.take());
        let Ok(Some(stream)) = offered else {
            return;
        };
        if self.publisher.is_some() {
            return;
        }
        let mut stream = mio::net::TcpStream::from_std(stream);
        let (registry, token) = (&self.polled.registry, self.polled.publisher);
        match registry.register(&mut stream, token, mio::Interest::READABLE) {
            Ok(()) => {
                info!("cluster: publishing from the loop");
                self.publisher = Some(Publisher::new(stream));
                self.polled_for_room = false;
            }
            Err(e) => {
                warn!(error = %e, "cluster: cannot poll the publishing connection");
                self.shared.want_publisher.store(true, Ordering::SeqCst);
            }
        }
    }

    /// The publishing connection failed: what it carried unanswered fails
    /// (ERRO to the emitters, as when Redis is down), publishes go by the
    /// command thread, and it opens a new connection.
    fn publisher_lost(&mut self, error: PublishError) {
        warn!(error = %error, "cluster: publishing connection lost; its unanswered batches fail");
        if let Some(mut publisher) = self.publisher.take() {
            let _ = self.polled.registry.deregister(publisher.stream_mut());
            publisher.fail_all(&mut self.failed);
        }
        self.shared.want_publisher.store(true, Ordering::SeqCst);
    }
}

impl RedisEngine {
    /// Takes the subscription the subscriber thread made, if one waits,
    /// and reads what it already has. Called after the drain took the
    /// thread's events: the table it read comes before what was said after.
    fn adopt_subscription(&mut self) {
        if !self.shared.subscription_ready.swap(false, Ordering::SeqCst) {
            return;
        }
        let Ok(Some(subscribed)) = self.shared.subscription.lock().map(|mut s| s.take()) else {
            return;
        };
        self.drop_subscription();
        let fd = subscribed.sub.as_raw_fd();
        let registered = subscribed.sub.set_nonblocking().and_then(|()| {
            self.polled.registry.register(
                &mut mio::unix::SourceFd(&fd),
                self.polled.subscription,
                mio::Interest::READABLE,
            )
        });
        if let Err(e) = registered {
            warn!(error = %e, "cluster: subscription lost");
            subscribed.lost.store(true, Ordering::SeqCst);
            return;
        }
        self.subscribed = Some(subscribed);
        self.read_subscription();
    }

    /// Forgets the subscription (its incarnation ended, or it broke).
    fn drop_subscription(&mut self) {
        if let Some(subscribed) = self.subscribed.take() {
            let fd = subscribed.sub.as_raw_fd();
            let _ = self
                .polled
                .registry
                .deregister(&mut mio::unix::SourceFd(&fd));
        }
    }

    /// Reads every message the subscription has, until its socket has no
    /// more or `queue` events wait for the loop (then the loop is woken,
    /// and its next drain reads on: memory stays bounded whatever Redis
    /// holds for this node). Anything that is not what a subscriber is
    /// sent ends it: the command thread subscribes again at the next
    /// renewal.
    fn read_subscription(&mut self) {
        self.more_heard = false;
        let Some(subscribed) = self.subscribed.as_mut() else {
            return;
        };
        let ended = loop {
            let fault = loop {
                if self.heard.len() >= self.queue {
                    self.more_heard = true;
                    (self.wake)();
                    break None;
                }
                match subscribed.sub.next_reply() {
                    Ok(Some(Reply::Message { channel, payload })) => {
                        self.heard
                            .extend(heard(channel, payload, &subscribed.changes));
                    }
                    Ok(Some(Reply::Ok | Reply::Subscribed)) => {}
                    Ok(None) => break None,
                    Ok(Some(Reply::Error(text))) => {
                        let text = String::from_utf8_lossy(text);
                        break Some(format!("refused by Redis: {text}"));
                    }
                    Err(e) => break Some(e.to_string()),
                }
            };
            if fault.is_some() || self.more_heard {
                break fault;
            }
            match subscribed.sub.fill() {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Some(e.to_string()),
            }
        };
        if let Some(error) = ended {
            warn!(error = %error, "cluster: subscription lost");
            subscribed.lost.store(true, Ordering::SeqCst);
            self.drop_subscription();
        }
    }
}

impl Engine for RedisEngine {
    fn submit(&mut self, request: Request) -> Result<(), Request> {
        let request = if self.held.is_empty() {
            match self.send(request) {
                Sent::Done => return Ok(()),
                Sent::Full(request) => return Err(request),
                Sent::Wait(request) => request,
            }
        } else {
            request
        };
        if self.held.len() >= self.queue {
            return Err(request);
        }
        self.held.push_back(request);
        Ok(())
    }

    fn drain(&mut self, into: &mut Vec<Event>) {
        self.adopt_offered();
        if !self.held.is_empty() {
            self.send_held();
        }
        if let Some(events) = &self.events {
            self.woken.store(false, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            into.extend(events.try_iter());
        }
        if self
            .subscribed
            .as_ref()
            .is_some_and(|s| s.stop.load(Ordering::SeqCst))
        {
            self.drop_subscription();
        }
        self.adopt_subscription();
        if self.more_heard {
            self.read_subscription();
        }
        into.append(&mut self.heard);
        into.append(&mut self.failed);
    }

    fn io_ready(&mut self, token: mio::Token) {
        if token == self.polled.subscription {
            return self.read_subscription();
        }
        let Some(publisher) = self.publisher.as_mut() else {
            return;
        };
        match publisher
            .read(&mut self.failed)
            .and_then(|()| publisher.flush())
        {
            Ok(()) => self.poll_for_room(),
            Err(e) => self.publisher_lost(e),
        }
        if !self.held.is_empty() {
            self.send_held();
        }
    }
}

impl Drop for RedisEngine {
    /// Lets the command thread finish what was queued (the releases of a
    /// shutdown), give up its lease and reap itself, so that its ids are
    /// free at once rather than at the lease's end.
    fn drop(&mut self) {
        // What waits (a shutdown's releases among it) goes to the thread,
        // which does it before leaving; a publish still unanswered on the
        // loop's connection no longer matters.
        if let Some(requests) = &self.requests {
            for request in self.held.drain(..) {
                if requests.send(request).is_err() {
                    break;
                }
            }
        }
        self.requests = None;
        self.events = None;
        if let Some(commands) = self.commands.take() {
            let _ = commands.join();
        }
    }
}

/// Which connection a Redis server knows `con` as: its `CLIENT ID`, and
/// the server's `run_id` (a client id means nothing to a server started
/// since: ids start again from 1 there, and may name another live
/// connection).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConnectionName {
    server: String,
    id: i64,
}

/// What Redis knows `con` as. None when Redis answers with an error (the
/// command renamed away, or an ACL without it) or names no `run_id`:
/// connections then cannot be fenced, and a warning says so.
fn connection_name(con: &mut redis::Connection) -> redis::RedisResult<Option<ConnectionName>> {
    let asked = redis::pipe()
        .cmd("CLIENT")
        .arg("ID")
        .cmd("INFO")
        .arg("server")
        .query::<(i64, String)>(con);
    let (id, info) = match asked {
        Ok(answer) => answer,
        Err(e) if answered(&e) => {
            warn!(error = %e, "cluster: Redis refuses CLIENT ID or INFO: a call on a lost connection may run late");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let server = info
        .lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|run| run.trim().to_string());
    if server.is_none() {
        warn!("cluster: Redis names no run_id: a call on a lost connection may run late");
    }
    Ok(server.map(|server| ConnectionName { server, id }))
}

/// Kills each connection in `abandoned` (`CLIENT KILL ID`) that the server
/// behind `con` (`server`, its `run_id`) made, forgetting those it has
/// killed or no longer knows, and those of an earlier server (gone with
/// it). Err (those not yet done are kept) when `con` fails too.
fn kill_abandoned(
    con: &mut redis::Connection,
    server: &str,
    abandoned: &mut Vec<ConnectionName>,
) -> redis::RedisResult<()> {
    abandoned.retain(|name| name.server == server);
    while let Some(name) = abandoned.first() {
        let killed = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(name.id)
            .query::<i64>(con);
        match killed {
            Ok(_) => {}
            // "No such client": it is gone already.
            Err(e) if answered(&e) => {
                debug!(id = name.id, error = %e, "cluster: abandoned connection gone")
            }
            Err(e) => return Err(e),
        }
        abandoned.remove(0);
    }
    Ok(())
}

/// The ids among a node's `held` set's members. Only that node's scripts
/// write the set: a member that is no id is told, and left alone.
fn ids_in(members: Vec<Vec<u8>>) -> impl Iterator<Item = ClientId> {
    members.into_iter().filter_map(|member| {
        let id = std::str::from_utf8(&member).ok().and_then(|m| m.parse().ok());
        if id.is_none() {
            let member = String::from_utf8_lossy(&member);
            warn!(member = %member.escape_debug(), "cluster: a member of this node's held set that is no id is ignored");
        }
        id
    })
}

/// The names among a node's `names` set's members, as [`ids_in`].
fn names_in(members: Vec<Vec<u8>>) -> impl Iterator<Item = String> {
    members.into_iter().filter_map(|member| {
        let name = String::from_utf8(member).ok();
        if name.is_none() {
            warn!("cluster: a member of this node's names set that is no name is ignored");
        }
        name
    })
}

/// Whether Redis itself answered with this error (so the connection
/// still works), rather than the call failing on the way.
fn answered(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
    )
}

fn key(rest: &str) -> String {
    format!("{PREFIX}{rest}")
}

/// One life of this node in the system.
struct Incarnation {
    node: NodeId,
    held_key: String,
    /// The names this incarnation holds (what its reaping frees).
    names_key: String,
    lease_key: String,
    /// Stops this incarnation's subscriber thread.
    stop_subscriber: Arc<AtomicBool>,
    /// Set by the subscriber when its connection broke.
    subscriber_lost: Arc<AtomicBool>,
}

/// Why an incarnation's service ended.
enum Ended {
    /// The loop is gone: leave cleanly.
    Stopped,
    /// The lease is lost: join again.
    Fenced,
}

struct Commands {
    config: RedisConfig,
    client: redis::Client,
    inbox: Receiver<Request>,
    tell: Tell,
    shared: Arc<Shared>,
    /// Requests taken from `inbox` so far.
    taken: u64,
    /// No publishing connection is tried before this (one try a renewal
    /// period while Redis cannot be reached, not one a request).
    publisher_retry_at: Instant,
    con: Option<redis::Connection>,
    /// What Redis knows `con` as: None until asked, or where Redis does
    /// not say (then nothing can be fenced).
    con_name: Option<ConnectionName>,
    /// Connections given up after a call failed: their last call may
    /// still run late (a partition's retransmission, a stopped Redis
    /// resuming), so each is killed before the next connection does
    /// anything (see [`Commands::connection`]).
    abandoned: Vec<ConnectionName>,
    claim: redis::Script,
    release: redis::Script,
    reap: redis::Script,
    claim_name: redis::Script,
    release_name: redis::Script,
    show: redis::Script,
    join_room: redis::Script,
    leave_room: redis::Script,
    /// The pipeline of publishes being written (see [`pack_publish`]).
    packed: Vec<u8>,
    /// Releases the engine refused (Redis unreachable) in this
    /// incarnation, tried again at each successful renewal (see
    /// [`Commands::retry_releases`]).
    pending: PendingReleases,
    /// The HELLO names (lower case) this incarnation won and has not
    /// released since: only a release of one of these may be handed over
    /// (a name a previous incarnation won is freed by its reap, and may
    /// be another node's by now).
    names: HashSet<String>,
    /// The ids this incarnation won and has not been asked to release.
    ids: HashSet<ClientId>,
    /// A claim (of an id or a name) failed after it was written: it may
    /// have run all the same, leaving Redis recording for this
    /// incarnation what no client here holds. Set until the next
    /// successful renewal compares (see [`Commands::release_unknown`]).
    claims_unsure: bool,
    /// When the last successful lease write (the join's, or a renewal's)
    /// was sent: the lease lives at least [`RedisConfig::lease`] from then.
    lease_sent: Instant,
}

/// Why a call failed, and whether Redis may have received it: a call that
/// was written may still run (Redis stopped runs what its socket holds when
/// it resumes, even from a connection since closed), one that could not
/// even connect never will.
struct CallFailed {
    error: redis::RedisError,
    sent: bool,
}

/// Id and name releases a failed call left undone: the id or name stays
/// held system-wide (no other node can have it) until one goes through.
#[derive(Debug, Default)]
struct PendingReleases {
    ids: Vec<ClientId>,
    /// Each name with whether it may be handed over (see
    /// [`PendingReleases::hand_over`]).
    names: Vec<(String, bool)>,
}

impl PendingReleases {
    fn len(&self) -> usize {
        self.ids.len() + self.names.len()
    }

    /// Keeps `request` (a release) to try again; false past the bound.
    /// `hand_over`: a name release that never reached Redis, of a name
    /// this incarnation won, so Redis still records it as the holder.
    fn keep(&mut self, request: &Request, hand_over: bool) -> bool {
        if self.len() >= PENDING_RELEASES_MAX {
            return false;
        }
        // No check for a copy: an id or name is released once per claim
        // (a claim of it drops what waits), and the script run twice for
        // one would change nothing the second time.
        match request {
            Request::Release { id } => self.ids.push(*id),
            Request::ReleaseName { name } => self.names.push((name.clone(), hand_over)),
            _ => {}
        }
        true
    }

    /// A HELLO on this node claims `name` (lower case, as the router keys
    /// names: so names compare without case): if its release waits and
    /// surely never reached Redis, Redis still records this incarnation
    /// as its holder and no other node can have it, so the release is
    /// dropped and the name passes to the new session without a call.
    /// True when it did.
    fn hand_over(&mut self, name: &str) -> bool {
        let Some(at) = self
            .names
            .iter()
            .position(|(held, hand_over)| *hand_over && held == name)
        else {
            return false;
        };
        self.names.remove(at);
        true
    }

    /// This incarnation was given `id` again: a release of it still
    /// waiting went through after all (the call failed after Redis ran
    /// it) and must not be retried, or it would free the id of a client
    /// now holding it.
    fn claimed_id(&mut self, id: ClientId) {
        self.ids.retain(|&held| held != id);
    }

    /// Whether a release of `name` waits here.
    fn has_name(&self, name: &str) -> bool {
        self.names.iter().any(|(held, _)| held == name)
    }

    /// As [`PendingReleases::claimed_id`], for a HELLO name.
    fn claimed_name(&mut self, name: &str) {
        self.names.retain(|(held, _)| held != name);
    }
}

impl Commands {
    fn new(
        config: RedisConfig,
        client: redis::Client,
        inbox: Receiver<Request>,
        tell: Tell,
        shared: Arc<Shared>,
    ) -> Commands {
        Commands {
            config,
            client,
            inbox,
            tell,
            shared,
            taken: 0,
            publisher_retry_at: Instant::now(),
            con: None,
            con_name: None,
            abandoned: Vec::new(),
            claim: redis::Script::new(CLAIM),
            release: redis::Script::new(RELEASE),
            reap: redis::Script::new(REAP),
            claim_name: redis::Script::new(CLAIM_NAME),
            release_name: redis::Script::new(RELEASE_NAME),
            show: redis::Script::new(SHOW),
            join_room: redis::Script::new(JOIN_ROOM),
            leave_room: redis::Script::new(LEAVE_ROOM),
            packed: Vec::new(),
            pending: PendingReleases::default(),
            names: HashSet::new(),
            ids: HashSet::new(),
            claims_unsure: false,
            lease_sent: Instant::now(),
        }
    }

    fn run(mut self) {
        loop {
            let incarnation = match self.join() {
                Ok(incarnation) => incarnation,
                Err(e) => {
                    warn!(error = %e, url = %self.config.url, "cluster: cannot join; retrying");
                    self.abandon_connection();
                    if self.refuse_for(REJOIN_PAUSE) {
                        return;
                    }
                    continue;
                }
            };
            let ended = self.serve(&incarnation);
            incarnation.stop_subscriber.store(true, Ordering::SeqCst);
            match ended {
                Ended::Stopped => {
                    self.leave(&incarnation);
                    return;
                }
                Ended::Fenced => {
                    warn!(
                        node = incarnation.node,
                        "cluster: lease lost; fencing this node"
                    );
                    if !self.tell.event(Event::Fenced) {
                        return;
                    }
                }
            }
        }
    }

    /// Answers every request as failed for `pause` (not joined: nothing can
    /// be claimed or published). True when the loop is gone.
    fn refuse_for(&mut self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(request) => {
                    self.taken += 1;
                    let told = self.fail(request);
                    self.finished();
                    if !told {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => return true,
            }
        }
    }

    /// Everything taken from the inbox is done: says so, and wakes the loop
    /// if it waits for that (see [`Shared`]).
    fn finished(&self) {
        self.shared.done.store(self.taken, Ordering::SeqCst);
        if self.shared.loop_waits.swap(false, Ordering::SeqCst) {
            (self.tell.wake)();
        }
    }

    /// Opens a connection for the loop to publish on and hands it over;
    /// if it cannot, publishes keep coming here, and [`Commands::serve`]
    /// tries again a renewal period later.
    fn offer_publisher(&mut self) {
        match self.open_publisher() {
            Ok(stream) => {
                if let Ok(mut offered) = self.shared.offered.lock() {
                    *offered = Some(stream);
                }
                self.shared.offer_ready.store(true, Ordering::SeqCst);
                (self.tell.wake)();
            }
            Err(e) => {
                warn!(error = %e, "cluster: cannot open a publishing connection; publishing from this thread");
                self.shared.want_publisher.store(true, Ordering::SeqCst);
                self.publisher_retry_at = Instant::now() + self.config.renew;
            }
        }
    }

    /// A TCP connection to Redis, signed in when the URL has a password,
    /// left non-blocking for the loop's poll.
    fn open_publisher(&self) -> std::io::Result<std::net::TcpStream> {
        let info = self.client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            return Err(std::io::Error::other("publishing needs a TCP address"));
        };
        let address = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))?
            .next()
            .ok_or_else(|| std::io::Error::other("the host has no address"))?;
        let mut stream = std::net::TcpStream::connect_timeout(&address, CALL_TIMEOUT)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = settings.username() {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            call_ok(&mut stream, &args)?;
        }
        // Named, so that an operator (and a test) can tell it in CLIENT LIST.
        call_ok(
            &mut stream,
            &[b"CLIENT", b"SETNAME", PUBLISHER_NAME.as_bytes()],
        )?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    }

    /// Tells the loop `request` could not be done. False when the loop is gone.
    fn fail(&self, request: Request) -> bool {
        match request {
            Request::Claim { claim, .. } => self.tell.event(Event::Claimed { claim, id: None }),
            Request::ClaimName { claim, .. } => {
                self.tell.event(Event::NameClaimed { claim, won: None })
            }
            Request::Publish { to, relays, batch } => self.tell.event(Event::Unreachable {
                node: to,
                relays,
                batch,
            }),
            Request::JoinRoom { claim, .. } | Request::LeaveRoom { claim, .. } => {
                self.tell.event(Event::RoomAnswered {
                    claim,
                    outcome: None,
                })
            }
            Request::Release { .. } | Request::ReleaseName { .. } | Request::Show { .. } => true,
        }
    }

    /// The connection to Redis, made anew if the last was given up. A new
    /// one first kills every abandoned connection: a call written on one
    /// may not have reached Redis yet (a partition holds it, TCP
    /// retransmits it later), and run after this connection's calls it
    /// would undo them (a late release of an id this node has been given
    /// again frees it under its new holder, and another node could then
    /// claim it too). Killed first, it either ran before this connection's
    /// first call or never runs.
    fn connection(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.con.is_none() {
            let mut con = self.client.get_connection_with_timeout(CALL_TIMEOUT)?;
            con.set_read_timeout(Some(CALL_TIMEOUT))?;
            con.set_write_timeout(Some(CALL_TIMEOUT))?;
            let con_name = connection_name(&mut con)?;
            if let Some(name) = &con_name {
                kill_abandoned(&mut con, &name.server, &mut self.abandoned)?;
            }
            self.con_name = con_name;
            self.con = Some(con);
        }
        Ok(self.con.as_mut().expect("connected above"))
    }

    /// Gives up the connection after a failed call: a new one is made for
    /// the next, and this one is killed first (see [`Commands::connection`]).
    fn abandon_connection(&mut self) {
        if self.con.take().is_none() {
            return;
        }
        if let Some(name) = self.con_name.take() {
            if self.abandoned.len() >= ABANDONED_MAX {
                warn!("cluster: too many abandoned engine connections; the oldest is forgotten");
                self.abandoned.remove(0);
            }
            self.abandoned.push(name);
        }
    }

    fn join(&mut self) -> redis::RedisResult<Incarnation> {
        let lease_ms = self.config.lease.as_millis() as u64;
        let name = self.config.node.clone();
        // What an old incarnation left held, its reap frees.
        self.pending = PendingReleases::default();
        self.names.clear();
        self.ids.clear();
        self.claims_unsure = false;
        let con = self.connection()?;
        let node: NodeId = redis::cmd("INCR").arg(key("incarnation")).query(con)?;
        let lease_key = key(&format!("lease:{node}"));
        let lease_sent = Instant::now();
        redis::cmd("SET")
            .arg(&lease_key)
            .arg(&name)
            .arg("PX")
            .arg(lease_ms)
            .query::<()>(con)?;
        redis::cmd("SADD")
            .arg(key("nodes"))
            .arg(node)
            .query::<()>(con)?;
        // Pre-sized, so that a ranged BITPOS never meets a short key.
        redis::cmd("SETBIT")
            .arg(key("ids"))
            .arg(*EXHIBITOR_IDS.end())
            .arg(0)
            .query::<()>(con)?;
        redis::cmd("SETBIT")
            .arg(key("roomids"))
            .arg(*ROOM_IDS.end())
            .arg(0)
            .query::<()>(con)?;
        self.lease_sent = lease_sent;
        let incarnation = Incarnation {
            node,
            held_key: key(&format!("held:{node}")),
            names_key: key(&format!("names:{node}")),
            lease_key,
            stop_subscriber: Arc::new(AtomicBool::new(false)),
            subscriber_lost: Arc::new(AtomicBool::new(false)),
        };
        self.resync(&incarnation)?;
        info!(node, name = %name, "cluster: joined");
        Ok(incarnation)
    }

    /// Subscribes, then reads the id table and what each id shows and
    /// hands them to the loop: at join, and again after the subscription
    /// was lost.
    fn resync(&mut self, incarnation: &Incarnation) -> redis::RedisResult<()> {
        self.subscribe(incarnation)
    }

    /// Starts the incarnation's subscriber and waits until it listens and
    /// has told the loop the table. The subscriber thread reads the table
    /// itself, after subscribing and before the first change it hears: so
    /// every change that raced the read reaches the loop after the table
    /// (and the last word about an id wins), never before it, where the
    /// table would overwrite it (found by `cluster_names.rs`).
    fn subscribe(&self, incarnation: &Incarnation) -> redis::RedisResult<()> {
        let info = self.client.get_connection_info();
        let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            return Err(std::io::Error::other(
                "the subscription needs a TCP address (redis://HOST:PORT)",
            )
            .into());
        };
        let settings = info.redis_settings();
        let auth: Option<(Option<String>, String)> = settings
            .password()
            .map(|password| (settings.username().map(Into::into), password.into()));
        let mut reader = self.client.get_connection_with_timeout(CALL_TIMEOUT)?;
        reader.set_read_timeout(Some(CALL_TIMEOUT))?;
        reader.set_write_timeout(Some(CALL_TIMEOUT))?;
        let node = incarnation.node;
        let channels = [key("chg"), key(&format!("node:{node}"))];
        let (ready_tx, ready) = sync_channel(1);
        let tell = self.tell.clone();
        let stop = incarnation.stop_subscriber.clone();
        let lost = incarnation.subscriber_lost.clone();
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("cluster-subscriber".into())
            .spawn(move || {
                let auth = auth.as_ref().map(|(u, p)| (u.as_deref(), p.as_str()));
                let subscribed = Subscription::open(&host, port, auth, &channels, CALL_TIMEOUT)
                    .map_err(redis::RedisError::from)
                    .and_then(|sub| Ok((sub, read_table(&mut reader, node)?)));
                match subscribed {
                    Ok((mut sub, table)) => {
                        // The table, then what came before it was read,
                        // then (read by the loop) what comes after.
                        let changes = channels[0].clone().into_bytes();
                        let early = sub.take_early().into_iter();
                        let heard = early
                            .filter_map(|(channel, payload)| heard(&channel, &payload, &changes));
                        for event in table.into_iter().chain(heard) {
                            tell.event(event);
                        }
                        let _ = ready_tx.send(Ok(()));
                        let handed = Subscribed {
                            sub,
                            changes,
                            stop,
                            lost,
                        };
                        if let Ok(mut offered) = shared.subscription.lock() {
                            *offered = Some(handed);
                        }
                        shared.subscription_ready.store(true, Ordering::SeqCst);
                        (tell.wake)();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e)))?;
        match ready.recv_timeout(CALL_TIMEOUT * 2) {
            Ok(result) => result,
            Err(_) => {
                incarnation.stop_subscriber.store(true, Ordering::SeqCst);
                Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
            }
        }
    }

    fn serve(&mut self, incarnation: &Incarnation) -> Ended {
        let mut last_renewed = Instant::now();
        let mut next_renew = last_renewed + self.config.renew;
        loop {
            if Instant::now() >= self.publisher_retry_at
                && self.shared.want_publisher.swap(false, Ordering::SeqCst)
            {
                self.offer_publisher();
            }
            let wait = next_renew.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(wait) {
                Ok(request) => {
                    self.taken += 1;
                    let ended = self.handle_queued(incarnation, request);
                    self.finished();
                    if let Some(ended) = ended {
                        return ended;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ended::Stopped,
            }
            let now = Instant::now();
            if now < next_renew {
                continue;
            }
            next_renew = now + self.config.renew;
            match self.renew(incarnation) {
                Ok(true) => {
                    last_renewed = Instant::now();
                    // Before the table is read again: it then shows them free.
                    self.retry_releases(incarnation);
                    self.release_unknown(incarnation);
                    // Back within the lease: subscribe and read the table
                    // again (what changed meanwhile was not heard).
                    if incarnation.subscriber_lost.swap(false, Ordering::SeqCst) {
                        match self.resync(incarnation) {
                            Ok(()) => info!(node = incarnation.node, "cluster: resubscribed"),
                            Err(e) => {
                                warn!(error = %e, "cluster: cannot resubscribe yet");
                                incarnation.subscriber_lost.store(true, Ordering::SeqCst);
                            }
                        }
                    }
                }
                Ok(false) => return Ended::Fenced,
                Err(e) => {
                    warn!(error = %e, "cluster: lease renewal failed");
                    self.abandon_connection();
                }
            }
            if last_renewed.elapsed() >= self.config.fence_after {
                return Ended::Fenced;
            }
        }
    }

    /// Renews the lease (false: it is gone), then reaps dead nodes.
    fn renew(&mut self, incarnation: &Incarnation) -> redis::RedisResult<bool> {
        let lease_ms = self.config.lease.as_millis() as u64;
        let name = self.config.node.clone();
        let con = self.connection()?;
        let sent = Instant::now();
        let renewed: Option<String> = redis::cmd("SET")
            .arg(&incarnation.lease_key)
            .arg(&name)
            .arg("XX")
            .arg("PX")
            .arg(lease_ms)
            .query(con)?;
        if renewed.is_none() {
            return Ok(false);
        }
        self.lease_sent = sent;
        self.reap()?;
        Ok(true)
    }

    /// Whether this incarnation's lease surely still lives: written less
    /// than two thirds of a lease ago (when the node fences itself), so no
    /// reap can yet have freed what it holds.
    fn lease_lives(&self) -> bool {
        self.lease_sent.elapsed() < self.config.fence_after
    }

    /// After a claim failed (see [`Commands::claims_unsure`]): the ids and
    /// names Redis records for this incarnation that it neither holds nor
    /// has a release waiting for are released (a claim that ran after all
    /// would otherwise hold them until the incarnation ends: a phantom id
    /// in every node's CLIST, a name no HELLO could have). Runs on a
    /// connection made after the failed one was killed, so no late claim
    /// can run after it looks.
    fn release_unknown(&mut self, incarnation: &Incarnation) {
        if !self.claims_unsure {
            return;
        }
        let recorded = self.connection().and_then(|con| {
            redis::pipe()
                .cmd("SMEMBERS")
                .arg(&incarnation.held_key)
                .cmd("SMEMBERS")
                .arg(&incarnation.names_key)
                .query::<(Vec<Vec<u8>>, Vec<Vec<u8>>)>(con)
        });
        let (ids, names) = match recorded {
            Ok(recorded) => recorded,
            Err(e) => {
                warn!(error = %e, "cluster: cannot compare claims with Redis yet");
                if !answered(&e) {
                    self.abandon_connection();
                }
                return;
            }
        };
        let names: Vec<String> = names_in(names)
            .filter(|name| !self.names.contains(name) && !self.pending.has_name(name))
            .collect();
        let ids: Vec<ClientId> = ids_in(ids)
            .filter(|id| !self.ids.contains(id) && !self.pending.ids.contains(id))
            .collect();
        for name in &names {
            if let Err(failed) = self.release_name(incarnation, name) {
                warn!(error = %failed.error, "cluster: cannot release an unknown claim yet");
                self.abandon_connection();
                return;
            }
        }
        for &id in &ids {
            if let Err(e) = self.release(incarnation, id) {
                warn!(error = %e, "cluster: cannot release an unknown claim yet");
                self.abandon_connection();
                return;
            }
        }
        if !(ids.is_empty() && names.is_empty()) {
            warn!(
                ?ids,
                names = names.len(),
                "cluster: claims that ran after they failed are released"
            );
        }
        self.claims_unsure = false;
    }

    /// Tries again the releases a failed call left undone (Redis was
    /// unreachable), oldest first, until one fails again: each is the
    /// same checked script (it frees only what this incarnation still
    /// holds), so one that did go through the first time changes nothing.
    fn retry_releases(&mut self, incarnation: &Incarnation) {
        if self.pending.len() == 0 {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        let mut error = None;
        let kept = |done: redis::RedisResult<()>, error: &mut Option<redis::RedisError>| {
            done.map_err(|e| *error = Some(e)).is_ok()
        };
        // Names first: once another node sees a retried id free, the
        // names released with it are free too (one connection, in order).
        let mut names = 0;
        for (name, hand_over) in &mut pending.names {
            if let Err(failed) = self.release_name(incarnation, name) {
                // Written, it may yet run: no longer one to hand over.
                *hand_over &= !failed.sent;
                error = Some(failed.error);
                break;
            }
            names += 1;
        }
        pending.names.drain(..names);
        let ids = if pending.names.is_empty() {
            pending
                .ids
                .iter()
                .take_while(|&&id| kept(self.release(incarnation, id), &mut error))
                .count()
        } else {
            0
        };
        pending.ids.drain(..ids);
        let left = pending.len();
        self.pending = pending;
        match error {
            None => info!(ids, names, "cluster: releases refused earlier went through"),
            Some(e) => {
                warn!(error = %e, left, "cluster: releases still wait for the engine");
                self.abandon_connection();
            }
        }
    }

    fn reap(&mut self) -> redis::RedisResult<()> {
        let script = self.reap.clone();
        let con = self.connection()?;
        let reaped: i64 = script
            .key(key("nodes"))
            .key(key("ids"))
            .key(key("owner"))
            .key(key("who"))
            .key(key("names"))
            .arg(PREFIX)
            .arg(key("chg"))
            .invoke(con)?;
        if reaped > 0 {
            info!(reaped, "cluster: reaped nodes whose lease expired");
        }
        Ok(())
    }

    /// Does `first` and the publishes queued right behind it: consecutive
    /// publishes (up to [`PIPELINE_MAX`]) go to Redis as one pipeline, one
    /// write and one round trip, instead of a round trip each. A claim or
    /// release found behind them is done after them, so order is kept.
    /// Some when the incarnation must end.
    fn handle_queued(&mut self, incarnation: &Incarnation, first: Request) -> Option<Ended> {
        let mut publishes = Vec::new();
        let mut pending = Some(first);
        while let Some(request) = pending.take() {
            if !matches!(request, Request::Publish { .. }) {
                if let Some(ended) = self.publish_all(publishes) {
                    return Some(ended);
                }
                return self.handle(incarnation, request);
            }
            publishes.push(request);
            if publishes.len() < PIPELINE_MAX {
                pending = self.inbox.try_recv().ok();
                self.taken += u64::from(pending.is_some());
            }
        }
        self.publish_all(publishes)
    }

    /// Sends these publishes as one pipeline, written by [`pack_publish`]
    /// into one reused buffer (the redis crate's `Cmd` copied each batch
    /// twice, once into the command and once into its packing: about 55
    /// instructions a delivery at 1:1, CLUSTER.md "Numbers"); a batch that
    /// reached no subscriber, or every one if the call failed, is reported
    /// undelivered.
    fn publish_all(&mut self, publishes: Vec<Request>) -> Option<Ended> {
        if publishes.is_empty() {
            return None;
        }
        let mut packed = std::mem::take(&mut self.packed);
        packed.clear();
        for request in &publishes {
            if let Request::Publish { to, batch, .. } = request {
                pack_publish(&mut packed, *to, batch);
            }
        }
        let counts = self
            .connection()
            .and_then(|con| send_and_count(con, &packed, publishes.len()));
        // Kept for the next pipeline, but not a burst's worth of batches.
        packed.truncate(0);
        packed.shrink_to(PACKED_KEEP);
        self.packed = packed;
        let failed: Vec<Request> = match counts {
            Ok(counts) => publishes
                .into_iter()
                .zip(counts)
                .filter(|&(_, count)| count == 0)
                .map(|(request, _)| request)
                .collect(),
            Err(e) => {
                warn!(error = %e, "cluster: engine call failed");
                self.abandon_connection();
                publishes
            }
        };
        for request in failed {
            debug!("cluster: batch reached no subscriber");
            if !self.fail(request) {
                return Some(Ended::Stopped);
            }
        }
        None
    }

    /// Does one request; Some when the incarnation must end.
    fn handle(&mut self, incarnation: &Incarnation, request: Request) -> Option<Ended> {
        if let Request::ClaimName { claim, name } = &request
            && self.lease_lives()
            && self.pending.hand_over(name)
        {
            info!(
                name = %name,
                "cluster: a name whose release waited for Redis passes to a new session here"
            );
            self.names.insert(name.clone());
            let event = Event::NameClaimed {
                claim: *claim,
                won: Some(true),
            };
            return (!self.tell.event(event)).then_some(Ended::Stopped);
        }
        // Set for a name release that failed before reaching Redis.
        let mut hand_over = false;
        let result = match &request {
            Request::Claim { claim, exhibitor } => {
                let range = if *exhibitor {
                    EXHIBITOR_IDS
                } else {
                    EMITTER_IDS
                };
                match self.claim(incarnation, *range.start(), *range.end()) {
                    Ok(-2) => {
                        self.tell.event(Event::Claimed {
                            claim: *claim,
                            id: None,
                        });
                        return Some(Ended::Fenced);
                    }
                    Ok(id) => {
                        let id = ClientId::try_from(id).ok().filter(|id| range.contains(id));
                        if let Some(id) = id {
                            self.pending.claimed_id(id);
                            self.ids.insert(id);
                        }
                        let sent = self.tell.event(Event::Claimed { claim: *claim, id });
                        return (!sent).then_some(Ended::Stopped);
                    }
                    Err(e) => Err(e),
                }
            }
            Request::ClaimName { claim, name } => match self.claim_name(incarnation, name) {
                Ok(-2) => {
                    let claim = *claim;
                    self.tell.event(Event::NameClaimed { claim, won: None });
                    return Some(Ended::Fenced);
                }
                Ok(won) => {
                    if won == 1 {
                        self.pending.claimed_name(name);
                        self.names.insert(name.clone());
                    }
                    let event = Event::NameClaimed {
                        claim: *claim,
                        won: Some(won == 1),
                    };
                    return (!self.tell.event(event)).then_some(Ended::Stopped);
                }
                Err(e) => Err(e),
            },
            Request::JoinRoom { claim, join } => match self.join_room(incarnation, join) {
                Ok(RoomReply::Fenced) => {
                    let claim = *claim;
                    self.tell.event(Event::RoomAnswered {
                        claim,
                        outcome: None,
                    });
                    return Some(Ended::Fenced);
                }
                Ok(reply) => {
                    let event = reply.answer(*claim);
                    return (!self.tell.event(event)).then_some(Ended::Stopped);
                }
                Err(e) => Err(e),
            },
            Request::LeaveRoom { claim, key, member } => match self.leave_room(key, member) {
                Ok(reply) => {
                    let event = reply.answer(*claim);
                    return (!self.tell.event(event)).then_some(Ended::Stopped);
                }
                Err(e) => Err(e),
            },
            Request::ReleaseName { name } => {
                let ours = self.names.remove(name.as_str());
                self.release_name(incarnation, name).map_err(|failed| {
                    hand_over = ours && !failed.sent;
                    failed.error
                })
            }
            Request::Show { id, roles, name } => self.show(incarnation, *id, *roles, name),
            Request::Release { id } => {
                self.ids.remove(id);
                self.release(incarnation, *id)
            }
            Request::Publish { .. } => return self.publish_all(vec![request]),
        };
        if let Err(e) = result {
            warn!(error = %e, "cluster: engine call failed");
            if matches!(request, Request::Claim { .. } | Request::ClaimName { .. }) {
                self.claims_unsure = true;
            }
            self.abandon_connection();
            if matches!(
                request,
                Request::Release { .. } | Request::ReleaseName { .. }
            ) && !self.pending.keep(&request, hand_over)
            {
                warn!("cluster: too many releases wait; this one is given up");
            }
            if !self.fail(request) {
                return Some(Ended::Stopped);
            }
        }
        None
    }

    fn claim(
        &mut self,
        incarnation: &Incarnation,
        lo: ClientId,
        hi: ClientId,
    ) -> redis::RedisResult<i64> {
        let script = self.claim.clone();
        let con = self.connection()?;
        script
            .key(key("ids"))
            .key(key("owner"))
            .key(&incarnation.held_key)
            .key(&incarnation.lease_key)
            .arg(lo)
            .arg(hi)
            .arg(incarnation.node)
            .arg(key("chg"))
            .invoke(con)
    }

    fn release(&mut self, incarnation: &Incarnation, id: ClientId) -> redis::RedisResult<()> {
        let script = self.release.clone();
        let con = self.connection()?;
        script
            .key(key("ids"))
            .key(key("owner"))
            .key(&incarnation.held_key)
            .key(key("who"))
            .arg(id)
            .arg(incarnation.node)
            .arg(key("chg"))
            .invoke::<i64>(con)
            .map(drop)
    }

    fn claim_name(&mut self, incarnation: &Incarnation, name: &str) -> redis::RedisResult<i64> {
        let script = self.claim_name.clone();
        let con = self.connection()?;
        script
            .key(key("names"))
            .key(&incarnation.names_key)
            .key(&incarnation.lease_key)
            .arg(name)
            .arg(incarnation.node)
            .invoke(con)
    }

    fn release_name(&mut self, incarnation: &Incarnation, name: &str) -> Result<(), CallFailed> {
        let script = self.release_name.clone();
        let con = self
            .connection()
            .map_err(|error| CallFailed { error, sent: false })?;
        script
            .key(key("names"))
            .key(&incarnation.names_key)
            .arg(name)
            .arg(incarnation.node)
            .invoke::<i64>(con)
            .map(drop)
            .map_err(|error| CallFailed { error, sent: true })
    }

    fn show(
        &mut self,
        incarnation: &Incarnation,
        id: ClientId,
        roles: u8,
        name: &str,
    ) -> redis::RedisResult<()> {
        let script = self.show.clone();
        let con = self.connection()?;
        script
            .key(key("owner"))
            .key(key("who"))
            .arg(id)
            .arg(incarnation.node)
            .arg(roles)
            .arg(name)
            .arg(key("chg"))
            .invoke::<i64>(con)
            .map(drop)
    }

    /// Runs the join script: None when its answer does not parse.
    fn join_room(
        &mut self,
        incarnation: &Incarnation,
        join: &RoomJoin,
    ) -> redis::RedisResult<RoomReply> {
        let script = self.join_room.clone();
        let lo = *ROOM_IDS.start();
        let hi = lo + join.max_rooms.clamp(1, ROOM_ID_SPAN) - 1;
        let con = self.connection()?;
        let reply: Vec<redis::Value> = script
            .key(key("rooms"))
            .key(key("roomids"))
            .key(&incarnation.lease_key)
            .arg(&join.key)
            .arg(&join.spelling)
            .arg(u8::from(join.queue))
            .arg(&join.member)
            .arg(lo)
            .arg(hi)
            .arg(join.room_members)
            .arg(join.rooms_per_name)
            .arg(u8::from(join.may_create))
            .arg(PREFIX)
            .arg(key("chg"))
            .arg(join.prefetch.max(1))
            .invoke(con)?;
        Ok(parse_room_reply(&reply, true))
    }

    fn leave_room(&mut self, room: &str, member: &str) -> redis::RedisResult<RoomReply> {
        let script = self.leave_room.clone();
        let con = self.connection()?;
        let reply: Vec<redis::Value> = script
            .key(key("rooms"))
            .key(key("roomids"))
            .arg(room)
            .arg(member)
            .arg(PREFIX)
            .arg(key("chg"))
            .invoke(con)?;
        Ok(parse_room_reply(&reply, false))
    }
    /// A clean exit: the lease goes, and a reap frees whatever this
    /// incarnation still holds.
    fn leave(&mut self, incarnation: &Incarnation) {
        let left = self.connection().and_then(|con| {
            redis::cmd("DEL")
                .arg(&incarnation.lease_key)
                .query::<()>(con)
        });
        if let Err(e) = left.and_then(|()| self.reap()) {
            warn!(error = %e, "cluster: could not leave cleanly; the lease will expire");
        } else {
            info!(node = incarnation.node, "cluster: left");
        }
    }
}

/// What a room script answered.
enum RoomReply {
    Outcome(RoomOutcome),
    /// The caller's lease is gone.
    Fenced,
    /// Not an answer the scripts give (logged; the request fails).
    Malformed,
}

impl RoomReply {
    fn answer(self, claim: u64) -> Event {
        let outcome = match self {
            RoomReply::Outcome(outcome) => Some(outcome),
            RoomReply::Fenced => None,
            RoomReply::Malformed => {
                warn!("cluster: a room script answered what it never answers; refused");
                None
            }
        };
        Event::RoomAnswered { claim, outcome }
    }
}

/// `{id, kind, members, spelling}` or `{code}` as [`JOIN_ROOM`] and
/// [`LEAVE_ROOM`] return them.
fn parse_room_reply(reply: &[redis::Value], joining: bool) -> RoomReply {
    let int = |v: &redis::Value| redis::from_redis_value_ref::<i64>(v).ok();
    let outcome = match reply {
        [code] => match int(code) {
            Some(-1) => RoomOutcome::NoRoomId,
            Some(-2) => return RoomReply::Fenced,
            Some(-3) => RoomOutcome::OtherKind,
            Some(-4) => RoomOutcome::RoomFull,
            Some(-5) => RoomOutcome::TooManyRooms,
            Some(-6) => RoomOutcome::NotAllowed,
            Some(-7) => RoomOutcome::NotMember,
            _ => return RoomReply::Malformed,
        },
        [id, kind, members, spelling] => {
            let id = int(id).and_then(|id| ClientId::try_from(id).ok());
            let spelling = redis::from_redis_value_ref::<String>(spelling).ok();
            let (Some(id), Some(kind), Some(members), Some(spelling)) =
                (id, int(kind), int(members), spelling)
            else {
                return RoomReply::Malformed;
            };
            if !ROOM_IDS.contains(&id) || !follows_name_rule(&spelling) {
                return RoomReply::Malformed;
            }
            let (queue, members) = (kind == 1, members.clamp(0, u32::MAX.into()) as u32);
            if joining {
                RoomOutcome::Joined {
                    id,
                    queue,
                    spelling,
                    members,
                }
            } else {
                RoomOutcome::Left {
                    id,
                    queue,
                    spelling,
                    members,
                }
            }
        }
        _ => return RoomReply::Malformed,
    };
    RoomReply::Outcome(outcome)
}

/// Every room and its members, for a node's replica at join.
fn read_rooms(con: &mut redis::Connection) -> redis::RedisResult<Vec<RoomState>> {
    let rooms: Vec<(String, String)> = redis::cmd("HGETALL").arg(key("rooms")).query(con)?;
    let mut states = Vec::with_capacity(rooms.len());
    for (_, held) in rooms {
        let Some(Event::RoomJoined {
            id,
            queue,
            spelling,
            ..
        }) = parse_room_joined(&format!("{held} -"), false)
        else {
            warn!("cluster: a malformed room in Redis skipped");
            continue;
        };
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(key(&format!("members:{id}")))
            .query(con)?;
        let members: Vec<String> = members
            .into_iter()
            .filter(|m| follows_name_rule(m))
            .collect();
        let prefetch = if queue {
            let kept: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(key(&format!("prefetch:{id}")))
                .query(con)?;
            read_prefetch(kept, &members)
        } else {
            Vec::new()
        };
        states.push(RoomState {
            id,
            queue,
            spelling,
            members,
            prefetch,
        });
    }
    Ok(states)
}

/// A queue's `prefetch:ID` hash as read: the entries of its `members`
/// whose prefetch is 1–255 (anything else is skipped with a warning, and
/// the member counts 1).
fn read_prefetch(kept: Vec<(String, String)>, members: &[String]) -> Vec<(String, u8)> {
    kept.into_iter()
        .filter_map(|(member, prefetch)| {
            let prefetch = prefetch.parse::<u8>().ok().filter(|&p| p > 0);
            match prefetch {
                Some(p) if members.contains(&member) => Some((member, p)),
                Some(_) => None,
                None => {
                    warn!("cluster: a malformed prefetch in Redis skipped");
                    None
                }
            }
        })
        .collect()
}

/// `ID KIND SPELLING MEMBER` (after `j `): a member joined a room. With
/// `member` false the member is not checked (the rooms hash has none).
fn parse_room_joined(text: &str, member: bool) -> Option<Event> {
    let mut fields = text.split(' ');
    let id: ClientId = fields.next()?.parse().ok()?;
    let queue = match fields.next()? {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    let spelling = fields.next()?;
    let who = fields.next()?;
    // Lines from before the prefetch was carried end at the member.
    let prefetch = match fields.next() {
        None => None,
        Some(prefetch) => Some(prefetch.parse::<u8>().ok().filter(|&p| p > 0)?),
    };
    if fields.next().is_some()
        || !ROOM_IDS.contains(&id)
        || !follows_name_rule(spelling)
        || (member && !follows_name_rule(who))
    {
        return None;
    }
    Some(Event::RoomJoined {
        id,
        queue,
        spelling: spelling.to_string(),
        member: who.to_string(),
        prefetch,
    })
}

/// `ID MEMBER` (after `l `): a member left a room.
fn parse_room_left(text: &str) -> Option<Event> {
    let (id, member) = text.split_once(' ')?;
    let id: ClientId = id.parse().ok()?;
    if !ROOM_IDS.contains(&id) || !follows_name_rule(member) {
        return None;
    }
    Some(Event::RoomLeft {
        id,
        member: member.to_string(),
    })
}

/// Sends one command on a blocking connection and reads its answer, which
/// must be `+OK`; Redis's words otherwise.
fn call_ok(stream: &mut std::net::TcpStream, args: &[&[u8]]) -> std::io::Result<()> {
    let mut command = Vec::new();
    super::subscription::command(&mut command, args);
    stream.write_all(&command)?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n") && answer.len() < 512 {
        if stream.read(&mut byte)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        answer.push(byte[0]);
    }
    if answer != b"+OK\r\n" {
        let words = String::from_utf8_lossy(&answer).trim_end().to_string();
        let what = String::from_utf8_lossy(args[0]);
        return Err(std::io::Error::other(format!("{what} answered {words}")));
    }
    Ok(())
}

/// Appends `PUBLISH evchat:node:<to> <batch>` as Redis reads a command
/// (an array of bulk strings, RESP).
pub(super) fn pack_publish(packed: &mut Vec<u8>, to: NodeId, batch: &[u8]) {
    let channel = key(&format!("node:{to}"));
    let head = format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n",
        channel.len(),
        batch.len()
    );
    packed.reserve(head.len() + batch.len() + 2);
    packed.extend_from_slice(head.as_bytes());
    packed.extend_from_slice(batch);
    packed.extend_from_slice(b"\r\n");
}

/// Sends `count` packed PUBLISH commands at once and reads their answers:
/// how many subscribers each reached. Any answer that is not a count (an
/// error from Redis) fails the whole call, and the connection is dropped.
fn send_and_count(
    con: &mut redis::Connection,
    packed: &[u8],
    count: usize,
) -> redis::RedisResult<Vec<i64>> {
    con.send_packed_command(packed)?;
    let mut counts = Vec::with_capacity(count);
    while counts.len() < count {
        match con.recv_response()? {
            // RESP3 may put pushes between replies: not an answer.
            redis::Value::Push { .. } => {}
            redis::Value::Int(n) => counts.push(n),
            other => {
                let error = redis::RedisError::from(std::io::Error::other(format!(
                    "PUBLISH answered {other:?}"
                )));
                return Err(error);
            }
        }
    }
    Ok(counts)
}

/// The table as incarnation `node` joins with it: [`Event::Joined`] with
/// every id another node holds, then an [`Event::Shown`] for each of them
/// that has said what it shows.
fn read_table(con: &mut redis::Connection, node: NodeId) -> redis::RedisResult<Vec<Event>> {
    let owners: Vec<(ClientId, NodeId)> = redis::cmd("HGETALL").arg(key("owner")).query(con)?;
    let shows: Vec<(ClientId, String)> = redis::cmd("HGETALL").arg(key("who")).query(con)?;
    let holders: std::collections::HashMap<ClientId, NodeId> =
        owners.iter().copied().filter(|&(_, n)| n != node).collect();
    let held = owners.into_iter().filter(|&(_, n)| n != node).collect();
    let mut events = vec![Event::Joined { node, held }];
    // An id not in the table was freed between the two reads: skipped.
    events.extend(shows.into_iter().filter_map(|(id, shown)| {
        let &holder = holders.get(&id)?;
        parse_shown(id, holder, &shown)
    }));
    events.push(Event::Rooms {
        rooms: read_rooms(con)?,
    });
    Ok(events)
}

/// A message on `channel`: a change (on `changes`) or a batch, as an
/// event for the loop; None for a change that does not parse (warned).
fn heard(channel: &[u8], payload: &[u8], changes: &[u8]) -> Option<Event> {
    if channel != changes {
        return Some(Event::Batch {
            bytes: payload.to_vec(),
        });
    }
    let event = parse_change(payload);
    if event.is_none() {
        warn!(bytes = payload.len(), "cluster: malformed change dropped");
    }
    event
}

/// `+ID NODE`, `-ID NODE`, `=ID NODE ROLES NAME`, `j ID KIND SPELLING
/// MEMBER [PREFETCH]`, `l ID MEMBER` or `down NODE`, as the
/// scripts publish them (public for the fuzz target).
pub fn parse_change(payload: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(payload).ok()?;
    if let Some(node) = text.strip_prefix("down ") {
        return Some(Event::Down {
            node: node.parse().ok()?,
        });
    }
    if let Some(rest) = text.strip_prefix("j ") {
        return parse_room_joined(rest, true);
    }
    if let Some(rest) = text.strip_prefix("l ") {
        return parse_room_left(rest);
    }
    if let Some(rest) = text.strip_prefix('=') {
        let (id, rest) = rest.split_once(' ')?;
        let (node, shown) = rest.split_once(' ')?;
        return parse_shown(id.parse().ok()?, node.parse().ok()?, shown);
    }
    let (sign, rest) = text.split_at_checked(1)?;
    let (id, node) = rest.split_once(' ')?;
    let id: ClientId = id.parse().ok()?;
    let node: NodeId = node.parse().ok()?;
    if !(EMITTER_IDS.contains(&id) || EXHIBITOR_IDS.contains(&id)) {
        return None;
    }
    match sign {
        "+" => Some(Event::Held { id, node }),
        "-" => Some(Event::Freed { id, node }),
        _ => None,
    }
}

/// `ROLES NAME` (NAME may be empty) as the show script keeps it: what
/// `node`'s id `id` shows. A name that breaks the name rule is refused.
fn parse_shown(id: ClientId, node: NodeId, shown: &str) -> Option<Event> {
    let (roles, name) = shown.split_once(' ')?;
    let roles: u8 = roles.parse().ok()?;
    if !(name.is_empty() || follows_name_rule(name))
        || !(EMITTER_IDS.contains(&id) || EXHIBITOR_IDS.contains(&id))
    {
        return None;
    }
    Some(Event::Shown {
        id,
        node,
        roles,
        name: name.to_string(),
    })
}

/// PROTOCOL.md's name rule, `[A-Za-z][A-Za-z0-9_.-]{0,23}`, checked here
/// (the cluster imports only the codec): a name from another node is
/// handed on only if a HELLO could have claimed it.
pub(super) fn follows_name_rule(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() <= 24
        && bytes.first().is_some_and(u8::is_ascii_alphabetic)
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_that_are_no_id_or_name_are_left_out() {
        let members = |list: &[&[u8]]| list.iter().map(|m| m.to_vec()).collect::<Vec<_>>();
        let ids: Vec<ClientId> =
            ids_in(members(&[b"4097", b"x", b"\xff", b"70000", b"-1", b"12"])).collect();
        assert_eq!(ids, vec![4097, 12]);
        let names: Vec<String> = names_in(members(&[b"carol", b"\xff\xfe", b"dave"])).collect();
        assert_eq!(names, vec!["carol", "dave"]);
    }

    #[test]
    fn publishes_are_packed_as_redis_reads_commands_one_after_another() {
        let mut packed = Vec::new();
        pack_publish(&mut packed, 7, b"E\x01\r\n");
        pack_publish(&mut packed, 12, b"");
        assert_eq!(
            packed,
            b"*3\r\n$7\r\nPUBLISH\r\n$13\r\nevchat:node:7\r\n$4\r\nE\x01\r\n\r\n\
              *3\r\n$7\r\nPUBLISH\r\n$14\r\nevchat:node:12\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn changes_parse_and_anything_else_is_refused() {
        assert_eq!(parse_change(b"+5 3"), Some(Event::Held { id: 5, node: 3 }));
        assert_eq!(
            parse_change(b"-4096 3"),
            Some(Event::Freed { id: 4096, node: 3 })
        );
        assert_eq!(parse_change(b"down 7"), Some(Event::Down { node: 7 }));
        assert_eq!(
            parse_change(b"=5 3 7 alice"),
            Some(Event::Shown {
                id: 5,
                node: 3,
                roles: 7,
                name: "alice".into()
            })
        );
        assert_eq!(
            parse_change(b"=4097 3 1 "),
            Some(Event::Shown {
                id: 4097,
                node: 3,
                roles: 1,
                name: String::new()
            })
        );
        for bad in [
            &b""[..],
            b"+",
            b"+5",
            b"*5 3",
            b"+0 3",
            b"+8192 3",
            b"+5 x",
            b"down",
            b"\xff",
            b"=5 3 7",
            b"=5 3 x alice",
            b"=5 3 256 alice",
            b"=0 3 7 alice",
            b"=5 3 7 al ice",
            b"=5 3 7 9lives",
            b"=5 3 7 abcdefghijklmnopqrstuvwxy",
            b"=5 x 7 alice",
        ] {
            assert_eq!(parse_change(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn releases_wait_bounded_and_one_for_an_id_or_name_claimed_again_is_dropped() {
        let mut pending = PendingReleases::default();
        assert!(pending.keep(&Request::Release { id: 4096 }, false));
        assert!(pending.keep(&Request::Release { id: 4097 }, false));
        let bob = Request::ReleaseName { name: "bob".into() };
        assert!(pending.keep(&bob, true));
        // Given 4096 again by a claim: its release ran after all, and a
        // retry would free the id of the client now holding it.
        pending.claimed_id(4096);
        pending.claimed_name("bob");
        assert_eq!(
            (pending.ids.as_slice(), pending.names.len()),
            (&[4097][..], 0)
        );
        // Bounded: past the bound a release is given up, not kept.
        while pending.len() < PENDING_RELEASES_MAX {
            assert!(pending.keep(&bob, false));
        }
        assert!(!pending.keep(&Request::Release { id: 5000 }, false));
        assert_eq!(pending.len(), PENDING_RELEASES_MAX);
    }

    #[test]
    fn a_name_release_that_never_reached_redis_is_handed_over_once() {
        let mut pending = PendingReleases::default();
        let release = |name: &str| Request::ReleaseName { name: name.into() };
        assert!(pending.keep(&Request::Release { id: 4096 }, false));
        assert!(pending.keep(&release("carol"), true));
        // Written before its call failed: Redis may yet run it, so the
        // name is not this node's to give.
        assert!(pending.keep(&release("dave"), false));
        assert!(!pending.hand_over("dave"));
        assert!(!pending.hand_over("erin"));
        assert!(pending.hand_over("carol"));
        // Dropped: it neither runs later nor passes the name twice.
        assert!(!pending.hand_over("carol"));
        assert_eq!(
            (pending.ids.as_slice(), pending.names.as_slice()),
            (&[4096][..], &[("dave".to_string(), false)][..])
        );
    }

    #[test]
    fn prefetches_read_from_redis_keep_members_only_and_refuse_bad_values() {
        let members = ["w1".to_string(), "w4".to_string(), "w9".to_string()];
        let kept = [
            ("w4", "4"),
            ("w1", "255"),
            // Not a member (any more): skipped.
            ("gone", "3"),
            // Not 1–255: skipped, the member counts 1.
            ("w9", "0"),
            ("w9", "256"),
            ("w9", "-1"),
            ("w9", "two"),
            ("w9", ""),
        ]
        .map(|(m, p)| (m.to_string(), p.to_string()));
        assert_eq!(
            read_prefetch(kept.to_vec(), &members),
            vec![("w4".to_string(), 4), ("w1".to_string(), 255)]
        );
        assert!(read_prefetch(Vec::new(), &members).is_empty());
    }

    #[test]
    fn room_changes_parse_and_anything_else_is_refused() {
        assert_eq!(
            parse_change(b"j 16384 0 Ops alice"),
            Some(Event::RoomJoined {
                id: 16384,
                queue: false,
                spelling: "Ops".into(),
                member: "alice".into(),
                prefetch: None,
            })
        );
        assert_eq!(
            parse_change(b"j 18431 1 jobs bob"),
            Some(Event::RoomJoined {
                id: 18431,
                queue: true,
                spelling: "jobs".into(),
                member: "bob".into(),
                prefetch: None,
            })
        );
        assert_eq!(
            parse_change(b"j 18431 1 jobs bob 4"),
            Some(Event::RoomJoined {
                id: 18431,
                queue: true,
                spelling: "jobs".into(),
                member: "bob".into(),
                prefetch: Some(4),
            })
        );
        assert_eq!(
            parse_change(b"l 16384 alice"),
            Some(Event::RoomLeft {
                id: 16384,
                member: "alice".into()
            })
        );
        for bad in [
            &b"j"[..],
            b"j ",
            b"j 16384",
            b"j 16384 0",
            b"j 16384 0 ops",
            b"j 16384 2 ops alice",
            b"j 16383 0 ops alice",
            b"j 32768 0 ops alice",
            b"j 5 0 ops alice",
            b"j x 0 ops alice",
            b"j 16384 0 9ops alice",
            b"j 16384 0 ops al!ce",
            b"j 16384 0 ops alice extra",
            b"j 16384 1 jobs alice 0",
            b"j 16384 1 jobs alice 256",
            b"j 16384 1 jobs alice -1",
            b"j 16384 1 jobs alice 4 4",
            b"j 16384 1 jobs alice 4 ",
            b"j 16384 1 jobs alice ",
            b"j 16384 0 abcdefghijklmnopqrstuvwxy alice",
            b"l",
            b"l 16384",
            b"l 16384 ",
            b"l 16383 alice",
            b"l 16384 al ice",
            b"l x alice",
        ] {
            assert_eq!(parse_change(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn room_script_answers_parse_and_anything_else_is_malformed() {
        use redis::Value::{BulkString, Int};
        let joined = [Int(16385), Int(1), Int(3), BulkString(b"Jobs".to_vec())];
        assert!(matches!(
            parse_room_reply(&joined, true),
            RoomReply::Outcome(RoomOutcome::Joined { id: 16385, queue: true, members: 3, ref spelling }) if spelling == "Jobs"
        ));
        let left = [Int(16384), Int(0), Int(0), BulkString(b"ops".to_vec())];
        assert!(matches!(
            parse_room_reply(&left, false),
            RoomReply::Outcome(RoomOutcome::Left {
                id: 16384,
                members: 0,
                ..
            })
        ));
        for (code, outcome) in [
            (-1, RoomOutcome::NoRoomId),
            (-3, RoomOutcome::OtherKind),
            (-4, RoomOutcome::RoomFull),
            (-5, RoomOutcome::TooManyRooms),
            (-6, RoomOutcome::NotAllowed),
            (-7, RoomOutcome::NotMember),
        ] {
            assert!(
                matches!(parse_room_reply(&[Int(code)], true), RoomReply::Outcome(o) if o == outcome)
            );
        }
        assert!(matches!(
            parse_room_reply(&[Int(-2)], true),
            RoomReply::Fenced
        ));
        for bad in [
            vec![],
            vec![Int(-8)],
            vec![Int(5), Int(0), Int(1), BulkString(b"ops".to_vec())],
            vec![Int(16384), Int(0), Int(1), BulkString(b"o ps".to_vec())],
            vec![Int(16384), Int(0), Int(1)],
            vec![BulkString(b"x".to_vec())],
        ] {
            assert!(
                matches!(parse_room_reply(&bad, true), RoomReply::Malformed),
                "{bad:?}"
            );
        }
    }
}
