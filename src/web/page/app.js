// evchat in a browser: the UI part of the page. It registers two WebSocket
// connections with the server, an exhibitor (which receives, shows and
// acknowledges) and an emitter paired with it (which sends), and drives the
// page from them: identity and connection state, the message log, the send
// box with per-message delivery status, the live client list, and
// reconnection with backoff. Bytes <-> frames is codec.js's job. Everything
// a peer sent reaches the page through textContent, never as markup.
'use strict';

(function () {
  const C = EvchatCodec;
  const T = C.TYPE;

  const BACKOFF_FIRST_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  // Both registrations must be answered within this, or the attempt fails.
  const REGISTRATION_TIMEOUT_MS = 10000;
  // The log keeps this many entries; older ones leave the page, so a long
  // session or a flood of 64 KiB messages cannot grow memory without end.
  const LOG_LIMIT = 500;
  // How close to the bottom (px) still counts as "reading the newest".
  const STICK_PX = 40;

  const ui = {
    emitterId: document.getElementById('emitter-id'),
    exhibitorId: document.getElementById('exhibitor-id'),
    state: document.getElementById('state'),
    reconnect: document.getElementById('reconnect'),
    log: document.getElementById('log'),
    jump: document.getElementById('jump'),
    clients: document.getElementById('clients'),
    clientCount: document.getElementById('client-count'),
    refresh: document.getElementById('refresh'),
    composer: document.getElementById('composer'),
    dest: document.getElementById('dest'),
    text: document.getElementById('text'),
    send: document.getElementById('send'),
  };

  const encoder = new TextEncoder();
  const wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';

  let session = null; // the live Session, or null between attempts
  let failures = 0; // consecutive failed attempts: the backoff exponent
  let retryTimer = null;
  let everConnected = false;
  let listedIds = []; // ids of the last client list, ascending
  // Broadcasts this page received, oldest first, as sender and text: a
  // server with history sends a reconnected page its recent broadcasts
  // again, and those already shown are not shown twice.
  const SEEN_MAX = 500;
  const seenBroadcasts = [];

  // ---- the log --------------------------------------------------------

  function nearBottom() {
    return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < STICK_PX;
  }

  function scrollToNewest() {
    ui.log.scrollTop = ui.log.scrollHeight;
    ui.jump.hidden = true;
  }

  function appendEntry(li) {
    const stick = nearBottom();
    ui.log.appendChild(li);
    while (ui.log.childElementCount > LOG_LIMIT) {
      ui.log.firstElementChild.remove();
    }
    if (stick) {
      scrollToNewest();
    } else {
      ui.jump.hidden = false;
    }
  }

  function span(className, text) {
    const s = document.createElement('span');
    s.className = className;
    s.textContent = text;
    return s;
  }

  function timeStamp() {
    const now = new Date();
    const t = document.createElement('time');
    t.dateTime = now.toISOString();
    t.textContent = now.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
    return t;
  }

  // The line above an entry's text. Spaces between the parts keep them
  // apart for screen readers and copy-paste; the flex layout ignores them.
  function metaLine(parts) {
    const meta = document.createElement('span');
    meta.className = 'meta';
    parts.forEach(function (part, i) {
      if (i > 0) {
        meta.appendChild(document.createTextNode(' '));
      }
      meta.appendChild(part);
    });
    return meta;
  }

  function note(text) {
    const li = document.createElement('li');
    li.className = 'entry note';
    li.appendChild(timeStamp());
    li.appendChild(document.createTextNode(' '));
    li.appendChild(span('text', text));
    appendEntry(li);
  }

  function idName(id) {
    if (C.isEmitterId(id)) {
      return 'emitter ' + id;
    }
    if (C.isExhibitorId(id)) {
      return 'exhibitor ' + id;
    }
    return 'client ' + id;
  }

  function destName(dest) {
    return dest === C.BROADCAST ? 'to all' : 'to ' + idName(dest);
  }

  function broadcastKey(frame) {
    return frame.origin + ' ' + C.escapeText(frame.text);
  }

  // How many broadcasts at the start of `replayed` the page has shown
  // already: the largest p such that the replayed ones up to p end the way
  // what was seen ends. What reached the server while the page was away
  // comes after p and is shown; only a run that repeats the last ones seen,
  // sender and text alike, could be taken for part of the replay.
  function alreadySeen(replayed) {
    for (let p = replayed.length; p > 0; p--) {
      const n = Math.min(p, seenBroadcasts.length);
      let same = n > 0;
      for (let i = 1; same && i <= n; i++) {
        same = replayed[p - i] === seenBroadcasts[seenBroadcasts.length - i];
      }
      if (same) {
        return p;
      }
    }
    return 0;
  }

  function showIncoming(frame, mine) {
    const li = document.createElement('li');
    li.className = 'entry in';
    li.appendChild(metaLine([
      span('from', mine ? 'you (' + idName(frame.origin) + ')' : idName(frame.origin)),
      span('scope', frame.dest === C.BROADCAST ? 'to all' : 'to you'),
      timeStamp(),
    ]));
    li.appendChild(span('text', C.escapeText(frame.text)));
    appendEntry(li);
  }

  // Returns the entry and its status element, which the reply updates.
  function showOutgoing(dest, bytes) {
    const li = document.createElement('li');
    li.className = 'entry out';
    const status = span('status', 'pending');
    status.dataset.status = 'pending';
    li.appendChild(metaLine([span('from', 'you'), span('scope', destName(dest)), timeStamp(), status]));
    li.appendChild(span('text', C.escapeText(bytes)));
    appendEntry(li);
    return { entry: li, status: status };
  }

  function setStatus(status, value) {
    status.dataset.status = value;
    status.textContent = value;
  }

  // ---- connection state ------------------------------------------------

  function showState(state, text) {
    ui.state.dataset.state = state;
    ui.state.textContent = text;
    const connected = state === 'connected';
    ui.send.disabled = !connected;
    ui.dest.disabled = !connected;
    ui.refresh.disabled = !connected;
    ui.reconnect.hidden = state !== 'waiting';
  }

  function showIds(emitterId, exhibitorId) {
    ui.emitterId.textContent = emitterId === null ? '–' : String(emitterId);
    ui.exhibitorId.textContent = exhibitorId === null ? '–' : String(exhibitorId);
  }

  // ---- the client list and the destination picker ---------------------

  function isMine(id) {
    return session !== null && (id === session.emitterId || id === session.exhibitorId);
  }

  function showClients(ids) {
    listedIds = ids.slice();
    const items = ids.map(function (id) {
      const li = document.createElement('li');
      li.dataset.id = String(id);
      li.appendChild(span('name', idName(id)));
      if (isMine(id)) {
        li.className = 'mine';
        li.appendChild(document.createTextNode(' '));
        li.appendChild(span('you', '(you)'));
      }
      return li;
    });
    ui.clients.replaceChildren.apply(ui.clients, items);
    ui.clientCount.textContent = '(' + ids.length + ')';
    updatePicker();
  }

  // Keeps the chosen destination even when it leaves the list: silently
  // falling back to "everyone" would turn a private message into a broadcast.
  // After a reconnection ids belong to new clients, so a chosen id is
  // replaced by an empty choice that must be made again before sending.
  function updatePicker() {
    const chosen = ui.dest.value;
    const options = [];
    if (chosen === '') {
      options.push(new Option('choose again (ids changed)', ''));
    }
    options.push(new Option('everyone', '0'));
    listedIds.forEach(function (id) {
      options.push(new Option(idName(id) + (isMine(id) ? ' (you)' : ''), String(id)));
    });
    if (chosen !== '' && chosen !== '0' && listedIds.indexOf(Number(chosen)) < 0) {
      options.push(new Option(idName(Number(chosen)) + ' (left)', chosen));
    }
    ui.dest.replaceChildren.apply(ui.dest, options);
    ui.dest.value = chosen;
  }

  function forgetDestination() {
    if (ui.dest.value !== '0') {
      ui.dest.replaceChildren(new Option('choose again (ids changed)', ''));
      ui.dest.value = '';
    }
  }

  // ---- one attempt: two registered connections ------------------------

  function Session() {
    this.exhibitorId = null;
    this.emitterId = null;
    this.exhibitor = null; // WebSocket
    this.emitter = null; // WebSocket
    this.emitterSeq = 0; // the emitter's next frame number (OI is 0)
    this.exhibitorSeq = 0;
    this.requests = new Map(); // emitter seq -> { kind, status? }
    this.listRequested = false; // a CREQ awaits its reply
    this.listAgain = false; // another CREQ is due once it comes
    this.serverClosed = false;
    this.timer = null;
    // After a reconnection, what the exhibitor receives is held until the
    // answer to our first CREQ marks the end of the server's replay.
    this.held = everConnected ? [] : null;
  }

  Session.prototype.connected = function () {
    return this.emitterId !== null;
  };

  Session.prototype.nextEmitterSeq = function () {
    const seq = this.emitterSeq;
    this.emitterSeq = (this.emitterSeq + 1) & 0xffff;
    return seq;
  };

  function send(ws, bytes) {
    if (ws !== null && ws.readyState === WebSocket.OPEN) {
      ws.send(bytes);
    }
  }

  // The server's close code says why it closed (PROTOCOL.md, "WebSocket
  // transport"): 1002 a protocol error, 1008 a refusal or a timeout...
  // 1000, 1005 (none given) and 1006 (no close frame: the network) add nothing.
  function closeDetail(event) {
    if (event.code === 1000 || event.code === 1005 || event.code === 1006) {
      return '';
    }
    const reason = event.reason ? ': ' + C.escapeText(encoder.encode(event.reason)) : '';
    return ' (close code ' + event.code + reason + ')';
  }

  function openSocket(s, onFrame) {
    const ws = new WebSocket(wsUrl);
    ws.binaryType = 'arraybuffer';
    ws.onmessage = function (event) {
      if (session !== s) {
        return;
      }
      if (typeof event.data === 'string') {
        lose(s, 'the server sent a text message');
        return;
      }
      let frame;
      try {
        frame = C.decode(event.data);
      } catch (e) {
        lose(s, 'bad frame from the server: ' + e.message);
        return;
      }
      onFrame(s, frame);
    };
    ws.onclose = function (event) {
      if (session === s) {
        lose(s, (s.connected() ? 'connection lost' : 'cannot reach the server') + closeDetail(event));
      }
    };
    return ws;
  }

  function start() {
    if (session !== null) {
      return;
    }
    clearTimeout(retryTimer);
    retryTimer = null;
    const s = new Session();
    session = s;
    showIds(null, null);
    showState('connecting', 'connecting…');
    s.timer = setTimeout(function () {
      if (session === s && !s.connected()) {
        lose(s, 'the server did not answer the registration');
      }
    }, REGISTRATION_TIMEOUT_MS);
    s.exhibitor = openSocket(s, onExhibitorFrame);
    s.exhibitor.onopen = function () {
      // OI with origin 0: "I am an exhibitor". It is frame 0.
      send(s.exhibitor, C.bare(T.OI, 0, C.SERVER_ID, s.exhibitorSeq));
      s.exhibitorSeq = 1;
    };
  }

  function openEmitter(s) {
    s.emitter = openSocket(s, onEmitterFrame);
    s.emitter.onopen = function () {
      // OI with our exhibitor's id as origin pairs the emitter with it.
      send(s.emitter, C.bare(T.OI, s.exhibitorId, C.SERVER_ID, s.nextEmitterSeq()));
    };
  }

  function registered(s) {
    clearTimeout(s.timer);
    failures = 0;
    showIds(s.emitterId, s.exhibitorId);
    showState('connected', 'connected');
    note((everConnected ? 'reconnected: you are now emitter ' : 'connected: you are emitter ') +
      s.emitterId + ' / exhibitor ' + s.exhibitorId);
    everConnected = true;
    requestClients();
  }

  // The answer to an OI: OK with seq 0 and our new id as destination.
  function registration(s, frame, what) {
    if (frame.type === T.OK && frame.seq === 0) {
      return frame.dest;
    }
    lose(s, frame.type === T.ERRO
      ? 'the server refused the ' + what
      : 'unexpected ' + C.TYPE_NAME[frame.type] + ' before registration');
    return null;
  }

  function onExhibitorFrame(s, frame) {
    if (s.exhibitorId === null) {
      s.exhibitorId = registration(s, frame, 'exhibitor');
      if (s.exhibitorId !== null) {
        openEmitter(s);
      }
      return;
    }
    const ack = function () {
      send(s.exhibitor, C.bare(T.OK, s.exhibitorId, frame.origin, frame.seq));
    };
    switch (frame.type) {
      case T.MSG: {
        const own = frame.origin === s.emitterId ? s.requests.get(frame.seq) : undefined;
        const received = {
          frame: frame,
          // Our own message reached our own exhibitor: it is already in the
          // log as sent; it is marked shown here rather than repeated.
          ownEntry: own !== undefined && own.kind === 'msg' ? own.entry : null,
        };
        if (s.held !== null) {
          s.held.push(received);
        } else {
          showReceived(s, received);
        }
        ack();
        if (frame.origin !== s.emitterId && listedIds.indexOf(frame.origin) < 0) {
          requestClients();
        }
        break;
      }
      case T.CLIST:
        // Sent after everything the server queued for us before our
        // emitter existed, the replay included.
        releaseHeld(s);
        showClients(frame.ids);
        ack();
        break;
      case T.FLW:
        ack();
        serverClosed(s);
        break;
      default:
        // OK/ERRO are not expected here (this connection never sends FLW).
        console.warn('evchat: exhibitor ignores ' + C.TYPE_NAME[frame.type] + ' seq ' + frame.seq);
    }
  }

  function showReceived(s, received) {
    const frame = received.frame;
    if (frame.dest === C.BROADCAST) {
      seenBroadcasts.push(broadcastKey(frame));
      if (seenBroadcasts.length > SEEN_MAX) {
        seenBroadcasts.shift();
      }
    }
    if (received.ownEntry !== null) {
      received.ownEntry.classList.add('shown-here');
    } else {
      showIncoming(frame, frame.origin === s.emitterId);
    }
  }

  // Shows what a reconnected exhibitor received so far, less the start of
  // the replay the page has shown before. Unicasts are never replayed.
  function releaseHeld(s) {
    if (s.held === null) {
      return;
    }
    const held = s.held;
    s.held = null;
    const broadcasts = held.filter(function (r) { return r.frame.dest === C.BROADCAST; });
    let skip = alreadySeen(broadcasts.map(function (r) { return broadcastKey(r.frame); }));
    held.forEach(function (received) {
      if (received.frame.dest === C.BROADCAST && skip > 0) {
        skip--;
      } else {
        showReceived(s, received);
      }
    });
  }

  function onEmitterFrame(s, frame) {
    if (s.emitterId === null) {
      s.emitterId = registration(s, frame, 'emitter');
      if (s.emitterId !== null) {
        registered(s);
      }
      return;
    }
    switch (frame.type) {
      case T.OK:
      case T.ERRO: {
        const request = s.requests.get(frame.seq);
        if (request === undefined) {
          console.warn('evchat: reply to no request: ' + C.TYPE_NAME[frame.type] + ' seq ' + frame.seq);
          return;
        }
        s.requests.delete(frame.seq);
        if (request.kind === 'msg') {
          setStatus(request.status, frame.type === T.OK ? 'delivered' : 'not delivered');
        } else if (request.kind === 'creq') {
          // The CLIST came first; if the server refused the CREQ, nothing
          // marks the replay's end any more clearly than this.
          releaseHeld(s);
          s.listRequested = false;
          if (s.listAgain) {
            s.listAgain = false;
            requestClients();
          }
        }
        break;
      }
      case T.FLW:
        send(s.emitter, C.bare(T.OK, s.emitterId, frame.origin, frame.seq));
        serverClosed(s);
        break;
      default:
        console.warn('evchat: emitter ignores ' + C.TYPE_NAME[frame.type] + ' seq ' + frame.seq);
    }
  }

  function serverClosed(s) {
    if (!s.serverClosed) {
      s.serverClosed = true;
      note('server closed the chat');
      showState('closing', 'server closed the chat');
    }
  }

  // Ends an attempt: both sockets closed, unanswered messages marked, the
  // next attempt scheduled with exponential backoff and jitter.
  function lose(s, reason) {
    if (session !== s) {
      return;
    }
    session = null;
    clearTimeout(s.timer);
    // Acknowledged, so the server will not send them again.
    releaseHeld(s);
    [s.exhibitor, s.emitter].forEach(function (ws) {
      if (ws !== null) {
        ws.onclose = null;
        ws.close();
      }
    });
    // No OK or ERRO will come: whether these were shown is unknown.
    s.requests.forEach(function (request) {
      if (request.kind === 'msg') {
        setStatus(request.status, 'unconfirmed');
      }
    });
    if (s.connected() && !s.serverClosed) {
      note(reason);
    }
    const why = s.serverClosed ? 'server closed the chat' : reason;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, failures));
    // ±20% so that many pages cut off by one restart do not return at once.
    const delay = Math.min(BACKOFF_MAX_MS, Math.round(base * (0.8 + 0.4 * Math.random())));
    failures = Math.min(failures + 1, 16);
    showIds(null, null);
    forgetDestination();
    showClients([]);
    ui.clientCount.textContent = '';
    showState('waiting', why + '; reconnecting in ' + Math.ceil(delay / 1000) + ' s');
    retryTimer = setTimeout(start, delay);
  }

  // ---- requests from the user ------------------------------------------

  // CREQ addressed to our own exhibitor: the CLIST comes back to this page
  // only. One at a time; asks made meanwhile are folded into one more.
  function requestClients() {
    const s = session;
    if (s === null || !s.connected()) {
      return;
    }
    if (s.listRequested) {
      s.listAgain = true;
      return;
    }
    s.listRequested = true;
    const seq = s.nextEmitterSeq();
    s.requests.set(seq, { kind: 'creq' });
    send(s.emitter, C.bare(T.CREQ, s.emitterId, s.exhibitorId, seq));
  }

  function sendMessage() {
    const s = session;
    const text = ui.text.value;
    if (s === null || !s.connected() || text === '') {
      return;
    }
    const bytes = encoder.encode(text);
    if (bytes.length > C.MAX_TEXT_LEN) {
      note('not sent: the message is ' + bytes.length + ' bytes; at most 65535 fit');
      return;
    }
    if (ui.dest.value === '') {
      note('not sent: choose who gets it (the ids changed when the chat reconnected)');
      ui.dest.focus();
      return;
    }
    const dest = Number(ui.dest.value);
    const seq = s.nextEmitterSeq();
    const shown = showOutgoing(dest, bytes);
    s.requests.set(seq, { kind: 'msg', entry: shown.entry, status: shown.status });
    send(s.emitter, C.msg(s.emitterId, dest, seq, bytes));
    ui.text.value = '';
    ui.text.focus();
    scrollToNewest();
  }

  ui.composer.addEventListener('submit', function (event) {
    event.preventDefault();
    sendMessage();
  });
  ui.refresh.addEventListener('click', requestClients);
  ui.reconnect.addEventListener('click', start);
  ui.jump.addEventListener('click', scrollToNewest);
  ui.log.addEventListener('scroll', function () {
    if (nearBottom()) {
      ui.jump.hidden = true;
    }
  });
  window.addEventListener('online', function () {
    if (session === null) {
      start();
    }
  });
  // Leaving the page: FLW from the emitter, as the emitter does on exit; the
  // server then dismisses our exhibitor too.
  window.addEventListener('pagehide', function () {
    const s = session;
    if (s !== null && s.connected()) {
      send(s.emitter, C.bare(T.FLW, s.emitterId, C.SERVER_ID, s.nextEmitterSeq()));
    }
  });

  start();
})();
