// evchat in a browser: the UI part of the page. It registers two WebSocket
// connections with the server, an exhibitor (which receives, shows and
// acknowledges) and an emitter paired with it (which sends), and drives the
// page from them: identity and connection state, the message log, the send
// box with per-message delivery status, the live client list, and
// reconnection with backoff. Both connections open with HELLO (the identity
// extension): its answer tells the page whether the server has accounts, so
// it shows a sign-in form, or an optional name to claim; WHO frames name
// the ids it shows. "/tell NAME text" in the send box leaves a message for
// a name, online or not (TELL), and so does sending in the conversation of
// someone not connected; one that waited for ours comes marked (WAITING). Rooms (ROOMS, JOIN, LEAVE) are listed beside the log,
// and the log is split into conversations, one per room or person (and
// one for everyone); "All messages" shows them together. Bytes <-> frames
// is codec.js's job. Everything a peer
// sent reaches the page through textContent, never as markup. Credentials
// live in this closure's memory only: never in a URL or in storage.
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

  // What the page says for each HELLOACK refusal (PROTOCOL.md, "The hello
  // and its answer"). An expired secret gets code 2 too: one sentence.
  const SAY = Object.freeze({
    wrong: 'Wrong user name or password.',
    tooMany: 'Too many failed sign-ins from your address. Try again later.',
    busy: 'The server is busy checking other sign-ins. Try again in a moment.',
    badUser: 'A user name starts with a letter, then up to 23 letters, digits, ".", "_" or "-".',
    noSecret: 'Enter your password or token.',
    longSecret: 'A password or token is at most 256 bytes.',
    lostSignIn: 'The connection to the server was lost. Try again.',
    badName: 'A name starts with a letter, then up to 23 letters, digits, ".", "_" or "-".',
    lostClaim: 'The name was not claimed: the connection was lost. Try again.',
    roomsNeedAName: 'Rooms belong to names: choose a name (or sign in) to join one.',
    badRoom: 'A room name starts with a letter, then up to 23 letters, digits, ".", "_" or "-".',
    refusedSignIn: function (code) {
      return 'The server refused the sign-in (HELLOACK code ' + code + ').';
    },
  });

  // What the page says for each ROOMACK code (PROTOCOL.md, "Extension:
  // rooms and queues"), for the room `room` as typed.
  function roomAnswer(code, room, queue) {
    switch (code) {
      case 1: return '"#' + room + '" is not a room name: a letter, then up to 23 letters, digits, ".", "_" or "-".';
      case 2: return 'Cannot join #' + room + ': you are in as many rooms as the server allows. Leave one first.';
      case 3: return 'Cannot join #' + room + ': it has as many members as the server allows.';
      case 4: return 'You are not in #' + room + ' (or it does not exist).';
      case 5: return SAY.roomsNeedAName;
      case 6: return 'You may not join #' + room + ': joining needs the view role, creating a room broadcast too.';
      case 7: return 'Cannot create #' + room + ': the server has as many rooms as it allows.';
      case 8: return queue
        ? '#' + room + ' is an ordinary room, not a queue: join it without "queue".'
        : '#' + room + ' is a queue room: join it with "queue".';
      default: return 'The server answered for #' + room + ' with ROOMACK code ' + code + '.';
    }
  }

  // What the page says of a TELL's answer to `name` as typed: the entry's
  // status and its text (PROTOCOL.md, "Waiting messages").
  function toldAnswer(frame, name) {
    if (frame.type === T.OK) {
      return ['delivered', 'delivered'];
    }
    if (frame.type === T.ERRO) {
      // The name is offline and the server stores nothing (no --history),
      // or its session left before showing it (PROTOCOL.md, "Waiting
      // messages"): said as evchat chat says it.
      return ['not delivered', 'not delivered: ' + name + ' is not online (a server keeps messages for later only with --history)'];
    }
    switch (frame.code) {
      case 9: return ['stored', 'stored for ' + name];
      case 10: return ['not delivered', 'not delivered: no one named ' + name + ' is known to the server'];
      case 11: return ['not delivered', 'not stored: ' + name + ' has as many messages waiting as the server allows'];
      default: return ['not delivered', 'not delivered (ROOMACK code ' + frame.code + ')'];
    }
  }

  const TELL_USAGE = 'not sent: /tell NAME message leaves a message for NAME, online or not';
  const PAGE_HELP = 'Write a message and choose who gets it in the list beside it. ' +
    '/tell NAME message leaves a message for NAME, online or not. ' +
    'A message that starts with / is written with two: //like this.';

  function unknownCommand(word) {
    return 'not sent: the page knows /tell and /help, not ' + word +
      '; a message that starts with / is written with two (//like this)';
  }

  function nameTaken(name) {
    return 'The name "' + name + '" is taken. Choose another.';
  }

  const ui = {
    ownName: document.getElementById('own-name'),
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
    nameForm: document.getElementById('name-form'),
    name: document.getElementById('name'),
    nameProblem: document.getElementById('name-problem'),
    signOut: document.getElementById('sign-out'),
    signIn: document.getElementById('sign-in'),
    signInForm: document.getElementById('sign-in-form'),
    user: document.getElementById('user'),
    secret: document.getElementById('secret'),
    signInProblem: document.getElementById('sign-in-problem'),
    signInButton: document.getElementById('sign-in-button'),
    conversations: document.getElementById('conversations'),
    rooms: document.getElementById('rooms'),
    roomCount: document.getElementById('room-count'),
    roomsRefresh: document.getElementById('rooms-refresh'),
    roomForm: document.getElementById('room-form'),
    roomName: document.getElementById('room-name'),
    roomQueue: document.getElementById('room-queue'),
    roomJoin: document.getElementById('room-join'),
    roomProblem: document.getElementById('room-problem'),
  };

  const encoder = new TextEncoder();
  const wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';

  let session = null; // the live Session, or null between attempts
  // A Session claiming a new name (no accounts) while `session` chats on:
  // it replaces `session` once its HELLO is accepted.
  let claim = null;
  // Whether the server has accounts: null until a HELLOACK says.
  let accounts = null;
  // With accounts: { user, secret (bytes), accepted } once the form is sent;
  // kept for reconnections, dropped on a refusal or on signing out.
  let credentials = null;
  // Without accounts: the name this page claims ('' for none).
  let wantedName = '';
  let failures = 0; // consecutive failed attempts: the backoff exponent
  let retryTimer = null;
  let everConnected = false;
  let listedIds = []; // ids of the last client list, ascending
  // Broadcasts this page received, oldest first, as sender and text: a
  // server with history sends a reconnected page its recent broadcasts
  // again, and those already shown are not shown twice.
  const SEEN_MAX = 500;
  const seenBroadcasts = [];
  // The server's rooms by id, as the last ROOMLIST (and ROOMACKs since)
  // gave them: { name (escaped), queue, members }. At most --max-rooms.
  let rooms = new Map();
  // The rooms this page's name is in, by lower-case name: from its JOINs
  // and LEAVEs, and from room messages it receives (only members do).
  const joined = new Set();
  // Rooms whose messages came before their names (a member back from away
  // is sent what it missed first): joined once a ROOMLIST names them.
  const receivedIn = new Set();
  // Conversations by key ('everyone', 'room:ID', 'person:name', 'id:N'),
  // in the order they began: { unread }. The log's entries carry their
  // conversation's key; 'all' shows every entry.
  const conversations = new Map([['everyone', { unread: 0 }]]);
  let current = 'all';

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
    li.hidden = !inView(li);
    if (li.hidden) {
      countUnread(li.dataset.conv);
    }
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

  // The time of `when` (now when not given).
  function timeStamp(when) {
    const now = when || new Date();
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

  // The name a WHO gave `id` in session `s`, or '' when it has none.
  function nameOf(s, id) {
    return s !== null && s.names.has(id) ? s.names.get(id) : '';
  }

  // A person's name when the server told one, else what the id is.
  function who(s, id) {
    return nameOf(s, id) || idName(id);
  }

  // Name and id, for the list and the picker.
  function nameAndId(s, id) {
    const name = nameOf(s, id);
    return name ? name + ' (' + idName(id) + ')' : idName(id);
  }

  function destName(s, dest) {
    return dest === C.BROADCAST ? 'to all' : 'to ' + who(s, dest);
  }

  // A name from the wire, for the page: the server sends only names that
  // keep its rule, and escaping shows anything else as it is.
  function nameText(bytes) {
    return C.escapeText(bytes);
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

  // ---- conversations ------------------------------------------------

  function roomLabel(id) {
    const room = rooms.get(id);
    return room ? '#' + room.name : 'room ' + id;
  }

  // The conversation a message to `dest` belongs to, in session `s`.
  function conversationOf(s, dest) {
    if (dest === C.BROADCAST) {
      return 'everyone';
    }
    if (C.isRoomId(dest)) {
      return 'room:' + dest;
    }
    const name = nameOf(s, dest);
    return name ? 'person:' + name.toLowerCase() : 'id:' + dest;
  }

  function conversationLabel(key) {
    if (key === 'all') {
      return 'All messages';
    }
    if (key === 'everyone') {
      return 'Everyone';
    }
    const [kind, rest] = [key.slice(0, key.indexOf(':')), key.slice(key.indexOf(':') + 1)];
    if (kind === 'room') {
      return roomLabel(Number(rest));
    }
    if (kind === 'person') {
      // The name as the server spells it, from any id that has it.
      const s = session;
      if (s !== null) {
        for (const name of s.names.values()) {
          if (name.toLowerCase() === rest) {
            return name;
          }
        }
      }
      return rest;
    }
    return idName(Number(rest));
  }

  // The destination id a conversation writes to now, or null (a person
  // not connected, or 'all', which keeps the picker's choice).
  function destinationOf(key) {
    if (key === 'everyone') {
      return C.BROADCAST;
    }
    const colon = key.indexOf(':');
    const kind = key.slice(0, colon);
    const rest = key.slice(colon + 1);
    if (kind === 'room' || kind === 'id') {
      return Number(rest);
    }
    if (kind === 'person') {
      // Their exhibitor first (an emitter's id reaches its exhibitor too).
      const ids = listedIds.filter(function (id) {
        return nameOf(session, id).toLowerCase() === rest;
      });
      const exhibitor = ids.find(C.isExhibitorId);
      return exhibitor !== undefined ? exhibitor : ids.length > 0 ? ids[0] : null;
    }
    return null;
  }

  function inView(li) {
    return current === 'all' || li.dataset.conv === undefined || li.dataset.conv === current;
  }

  function countUnread(key) {
    const conversation = conversations.get(key);
    if (conversation !== undefined) {
      conversation.unread++;
      showConversations();
    }
  }

  function addConversation(key) {
    if (!conversations.has(key)) {
      conversations.set(key, { unread: 0 });
      showConversations();
    }
  }

  function showConversations() {
    const items = ['all'].concat(Array.from(conversations.keys())).map(function (key) {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.dataset.conv = key;
      button.setAttribute('aria-current', String(key === current));
      button.appendChild(span('label', conversationLabel(key)));
      const conversation = conversations.get(key);
      if (conversation !== undefined && conversation.unread > 0) {
        button.appendChild(span('unread', String(conversation.unread)));
      }
      button.addEventListener('click', function () {
        openConversation(key);
      });
      li.appendChild(button);
      return li;
    });
    ui.conversations.replaceChildren.apply(ui.conversations, items);
  }

  // Shows only `key`'s entries (every one for 'all'), and points the
  // picker at whoever the conversation writes to.
  function openConversation(key) {
    current = key;
    if (key !== 'all') {
      addConversation(key);
      conversations.get(key).unread = 0;
      const dest = destinationOf(key);
      if (dest !== null) {
        choose(dest);
      } else {
        // Not connected now: sending must not go to whoever "To" held.
        ui.dest.appendChild(new Option(conversationLabel(key) + ' is not connected', ''));
        ui.dest.value = '';
      }
    }
    ui.log.querySelectorAll('li').forEach(function (li) {
      li.hidden = !inView(li);
    });
    ui.log.dataset.conv = key;
    showConversations();
    scrollToNewest();
  }

  // Room ids named anew (a ROOMLIST or ROOMACK): the entries and the lists
  // that show them say so.
  function relabelRooms() {
    ui.log.querySelectorAll('li[data-room]').forEach(function (li) {
      li.querySelector('.scope').textContent = 'in ' + roomLabel(Number(li.dataset.room));
    });
    showConversations();
    showRooms();
    updatePicker();
  }

  // `waited`: when the server stored a message that waited for our name
  // (ms since 1970), or null.
  function showIncoming(s, frame, from, mine, waited) {
    const li = document.createElement('li');
    li.className = waited === null ? 'entry in' : 'entry in waited';
    const room = C.isRoomId(frame.dest);
    li.appendChild(metaLine([
      span('from', mine ? 'you (' + idName(frame.origin) + ')' : from),
      span('scope', waited !== null ? 'while you were away'
        : room ? 'in ' + roomLabel(frame.dest)
          : frame.dest === C.BROADCAST ? 'to all' : 'to you'),
      timeStamp(waited === null ? undefined : new Date(waited)),
    ]));
    li.appendChild(span('text', C.escapeText(frame.text)));
    if (room) {
      li.dataset.room = String(frame.dest);
    }
    // A message to us belongs with its sender; one to a room, with it.
    const key = room || frame.dest === C.BROADCAST
      ? conversationOf(s, frame.dest) : conversationOf(s, frame.origin);
    li.dataset.conv = key;
    addConversation(key);
    appendEntry(li);
  }

  // Returns the entry and its status element, which the reply updates.
  function showOutgoing(s, dest, bytes) {
    const scope = C.isRoomId(dest) ? 'in ' + roomLabel(dest) : destName(s, dest);
    const shown = showSent(scope, conversationOf(s, dest), bytes);
    if (C.isRoomId(dest)) {
      shown.entry.dataset.room = String(dest);
    }
    return shown;
  }

  // A message told to the name `name`: in that person's conversation.
  function showTold(name, bytes) {
    return showSent('to ' + name, 'person:' + name.toLowerCase(), bytes);
  }

  function showSent(scope, conv, bytes) {
    const li = document.createElement('li');
    li.className = 'entry out';
    const status = span('status', 'pending');
    status.dataset.status = 'pending';
    li.appendChild(metaLine([span('from', 'you'), span('scope', scope), timeStamp(), status]));
    li.appendChild(span('text', C.escapeText(bytes)));
    li.dataset.conv = conv;
    addConversation(conv);
    appendEntry(li);
    return { entry: li, status: status };
  }

  // `text`: what the status says, when more than `value`.
  function setStatus(status, value, text) {
    status.dataset.status = value;
    status.textContent = text || value;
  }

  // The answer `frame` (OK, ERRO or ROOMACK) to a TELL, on its entry.
  function toldAnswered(request, frame) {
    const [value, text] = toldAnswer(frame, request.name);
    setStatus(request.status, value, text);
  }

  // ---- connection state ------------------------------------------------

  function showState(state, text) {
    ui.state.dataset.state = state;
    ui.state.textContent = text;
    const connected = state === 'connected';
    const canSend = connected && session !== null && session.emitterId !== null;
    ui.send.disabled = !canSend;
    ui.dest.disabled = !canSend;
    ui.refresh.disabled = !canSend;
    ui.roomsRefresh.disabled = !canSend;
    ui.roomJoin.disabled = !canSend || session.ownName === '';
    ui.reconnect.hidden = state !== 'waiting';
    showRooms();
  }

  function showIds(emitterId, exhibitorId, name) {
    ui.ownName.textContent = name || '';
    ui.emitterId.textContent = emitterId === null ? '–' : String(emitterId);
    ui.exhibitorId.textContent = exhibitorId === null ? '–' : String(exhibitorId);
  }

  // ---- sign-in form and name field --------------------------------------

  function showProblem(element, text) {
    element.textContent = text;
    element.hidden = text === '';
    delete element.dataset.tone;
  }

  // Like a problem's place, for what is only a hint (shown muted): nothing
  // went wrong yet.
  function showHint(element, text) {
    showProblem(element, text);
    element.dataset.tone = 'hint';
  }

  // The chat, or (a server with accounts and nobody signed in) the form.
  function showView() {
    const signingIn = accounts === true && (credentials === null || !credentials.accepted);
    document.body.dataset.view = signingIn ? 'sign-in' : 'chat';
    ui.signIn.hidden = !signingIn;
    ui.nameForm.hidden = accounts !== false;
    ui.signOut.hidden = !(accounts === true && credentials !== null && credentials.accepted);
    ui.signInButton.disabled = signingIn && credentials !== null;
    ui.signInButton.textContent = signingIn && credentials !== null ? 'Signing in…' : 'Sign in';
  }

  // The form, waiting for the user: `problem` says why ('' for nothing).
  function askSignIn(problem) {
    credentials = null;
    showView();
    showProblem(ui.signInProblem, problem);
    showIds(null, null, '');
    showState('signed-out', 'sign in to chat');
    if (problem === SAY.wrong) {
      ui.secret.value = '';
    }
    (ui.user.value === '' ? ui.user : ui.secret).focus();
  }

  function signInSubmitted() {
    const user = ui.user.value;
    const secret = encoder.encode(ui.secret.value);
    if (!C.NAME_RULE.test(user)) {
      showProblem(ui.signInProblem, SAY.badUser);
      ui.user.focus();
      return;
    }
    if (secret.length === 0) {
      showProblem(ui.signInProblem, SAY.noSecret);
      ui.secret.focus();
      return;
    }
    if (secret.length > C.MAX_SECRET_LEN) {
      showProblem(ui.signInProblem, SAY.longSecret);
      ui.secret.focus();
      return;
    }
    showProblem(ui.signInProblem, '');
    credentials = { user: user, secret: secret, accepted: false };
    accounts = true;
    showView();
    failures = 0;
    start();
  }

  // Without accounts: claim the typed name ('' drops the name) for a new
  // session; the current one chats on until the claim is accepted.
  function nameSubmitted() {
    const name = ui.name.value.trim();
    if (name !== '' && !C.NAME_RULE.test(name)) {
      showProblem(ui.nameProblem, SAY.badName);
      ui.name.focus();
      return;
    }
    showProblem(ui.nameProblem, '');
    // One stopped at a taken or bad name asks again on its own connection.
    const waiting = claim !== null && claim.naming ? claim
      : session !== null && session.naming ? session : null;
    if (waiting !== null && waiting.exhibitor.readyState === WebSocket.OPEN) {
      waiting.naming = false;
      waiting.name = name;
      sendHello(waiting, 'exhibitor');
      return;
    }
    if (waiting !== null) {
      // The server closed it meanwhile (the handshake timeout): start anew.
      drop(waiting);
    }
    if (claim !== null) {
      // A claim still waiting for its answer gives way to this one: another
      // HELLO on its connection would be one too many if it is accepted.
      drop(claim);
    }
    if (session !== null && session.connected()) {
      if (name.toLowerCase() === session.ownName.toLowerCase()) {
        return; // already ours
      }
      claim = new Session(name);
      claim.claimed = true;
      openExhibitor(claim);
      return;
    }
    wantedName = name;
    if (session !== null) {
      drop(session); // an attempt under way claims the old name
    }
    failures = 0;
    start();
  }

  // ---- the client list and the destination picker ---------------------

  function isMine(id) {
    return session !== null && (id === session.emitterId || id === session.exhibitorId);
  }

  function showClients(ids) {
    listedIds = ids.slice();
    const s = session;
    const items = ids.map(function (id) {
      const li = document.createElement('li');
      li.dataset.id = String(id);
      const name = nameOf(s, id);
      if (name) {
        li.appendChild(span('name', name));
        li.appendChild(document.createTextNode(' · '));
        li.appendChild(span('id', idName(id)));
      } else {
        li.appendChild(span('name', idName(id)));
      }
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
      const said = ui.dest.selectedOptions.length > 0 ? ui.dest.selectedOptions[0].textContent : '';
      options.push(new Option(said || 'choose again (ids changed)', ''));
    }
    options.push(new Option('everyone', '0'));
    listedIds.forEach(function (id) {
      options.push(new Option(nameAndId(session, id) + (isMine(id) ? ' (you)' : ''), String(id)));
    });
    rooms.forEach(function (room, id) {
      options.push(new Option('#' + room.name + (room.queue ? ' (queue room)' : ' (room)'), String(id)));
    });
    if (chosen !== '' && chosen !== '0' && listedIds.indexOf(Number(chosen)) < 0
      && !rooms.has(Number(chosen))) {
      options.push(new Option(idName(Number(chosen)) + ' (left)', chosen));
    }
    ui.dest.replaceChildren.apply(ui.dest, options);
    ui.dest.value = chosen;
    if (chosen === '' && current.startsWith('person:')) {
      // The person this conversation is with is back: by name, so no
      // one else is taken for them.
      const dest = destinationOf(current);
      if (dest !== null) {
        choose(dest);
      }
    }
  }

  // Points the picker at `dest`, adding it when the list lacks it.
  function choose(dest) {
    const value = String(dest);
    if (!Array.from(ui.dest.options).some(function (o) { return o.value === value; })) {
      ui.dest.appendChild(new Option(C.isRoomId(dest) ? roomLabel(dest) : idName(dest), value));
    }
    ui.dest.value = value;
  }

  // ---- rooms -------------------------------------------------------------

  function showRooms() {
    const s = session;
    const canJoin = s !== null && s.connected() && s.emitterId !== null && s.ownName !== '';
    const items = Array.from(rooms.entries()).map(function (entry) {
      const id = entry[0];
      const room = entry[1];
      const li = document.createElement('li');
      li.dataset.room = String(id);
      li.appendChild(span('name', '#' + room.name));
      li.appendChild(document.createTextNode(' '));
      li.appendChild(span('kind', (room.queue ? 'queue, ' : '')
        + room.members + (room.members === 1 ? ' member' : ' members')));
      const member = joined.has(room.name.toLowerCase());
      const open = document.createElement('button');
      open.type = 'button';
      open.className = 'open';
      open.textContent = 'Open';
      open.addEventListener('click', function () { openConversation('room:' + id); });
      const toggle = document.createElement('button');
      toggle.type = 'button';
      toggle.className = member ? 'leave' : 'join';
      toggle.textContent = member ? 'Leave' : 'Join';
      toggle.disabled = !canJoin;
      toggle.addEventListener('click', function () {
        if (member) {
          leaveRoom(room.name);
        } else {
          joinRoom(room.name, room.queue);
        }
      });
      li.appendChild(open);
      li.appendChild(toggle);
      return li;
    });
    ui.rooms.replaceChildren.apply(ui.rooms, items);
    ui.roomCount.textContent = rooms.size > 0 ? '(' + rooms.size + ')' : '';
    if (s !== null && s.connected() && s.ownName === '' && s.emitterId !== null) {
      // Said before anyone tried to join: a hint, not a refusal.
      if (ui.roomProblem.textContent !== SAY.roomsNeedAName) {
        showHint(ui.roomProblem, SAY.roomsNeedAName);
      }
    } else if (ui.roomProblem.textContent === SAY.roomsNeedAName) {
      showProblem(ui.roomProblem, '');
    }
  }

  // A request of the rooms extension from our emitter: `request` is what
  // its answer is matched with.
  function roomRequest(request, bytesOf) {
    const s = session;
    if (s === null || !s.connected() || s.emitterId === null) {
      return false;
    }
    const seq = s.nextEmitterSeq();
    s.requests.set(seq, request);
    send(s.emitter, bytesOf(s.emitterId, seq));
    return true;
  }

  function requestRooms() {
    roomRequest({ kind: 'rooms' }, function (origin, seq) {
      return C.encode({ type: T.ROOMS, origin: origin, dest: C.SERVER_ID, seq: seq });
    });
  }

  function joinRoom(name, queue) {
    if (session === null || session.ownName === '') {
      showProblem(ui.roomProblem, SAY.roomsNeedAName);
      return;
    }
    roomRequest({ kind: 'join', room: name, queue: queue }, function (origin, seq) {
      return C.join(origin, seq, encoder.encode(name), queue);
    });
  }

  function leaveRoom(name) {
    roomRequest({ kind: 'leave', room: name }, function (origin, seq) {
      return C.leave(origin, seq, encoder.encode(name));
    });
  }

  function roomFormSubmitted() {
    const name = ui.roomName.value.trim().replace(/^#/, '');
    if (!C.NAME_RULE.test(name)) {
      showProblem(ui.roomProblem, SAY.badRoom);
      ui.roomName.focus();
      return;
    }
    showProblem(ui.roomProblem, '');
    joinRoom(name, ui.roomQueue.checked);
  }

  // The answer to a JOIN or LEAVE.
  function roomAnswered(request, frame) {
    if (frame.type === T.ERRO) {
      showProblem(ui.roomProblem, 'The server refused the request (ERRO).');
      return;
    }
    if (frame.code !== 0) {
      showProblem(ui.roomProblem, roomAnswer(frame.code, request.room, request.queue));
      return;
    }
    showProblem(ui.roomProblem, '');
    const name = nameText(frame.name);
    const queue = (frame.flags & C.FLAG_QUEUE) !== 0;
    rooms.set(frame.room, { name: name, queue: queue, members: frame.members });
    if (request.kind === 'join') {
      joined.add(name.toLowerCase());
      note('joined ' + (queue ? 'queue ' : '') + '#' + name);
      ui.roomName.value = '';
      relabelRooms();
      openConversation('room:' + frame.room);
    } else {
      joined.delete(name.toLowerCase());
      note('left #' + name);
      // Its count, or whether it is gone, comes with the list.
      requestRooms();
    }
  }

  // Notes that the name is in room `id`, once the room's name is known.
  function memberOf(id) {
    if (rooms.has(id)) {
      joined.add(rooms.get(id).name.toLowerCase());
    } else {
      receivedIn.add(id);
    }
  }

  function roomsListed(frame) {
    rooms = new Map();
    frame.rooms.forEach(function (r) {
      rooms.set(r.room, {
        name: nameText(r.name),
        queue: (r.flags & C.FLAG_QUEUE) !== 0,
        members: r.members,
      });
    });
    receivedIn.forEach(function (id) {
      if (rooms.has(id)) {
        joined.add(rooms.get(id).name.toLowerCase());
      }
    });
    receivedIn.clear();
    relabelRooms();
  }

  function forgetDestination() {
    if (ui.dest.value !== '0') {
      ui.dest.replaceChildren(new Option('choose again (ids changed)', ''));
      ui.dest.value = '';
    }
  }

  // ---- one attempt: two registered connections ------------------------

  // `name`: what the exhibitor's HELLO claims on a server without accounts
  // ('' for no name).
  function Session(name) {
    this.name = name;
    this.ownName = ''; // the name the server accepted ('' for none)
    this.roles = 0; // the session's roles bits, from HELLOACK
    this.exhibitorId = null;
    this.emitterId = null;
    this.exhibitor = null; // WebSocket
    this.emitter = null; // WebSocket
    this.exhibitorHello = false; // its HELLO accepted: OI next
    this.emitterHello = false;
    this.registered = false; // both halves (or, view only, the exhibitor) have ids
    this.claimed = false; // started by the name field, replacing a session
    // Stopped at a taken or bad name: the server keeps the connection for
    // another HELLO, which waits for the user.
    this.naming = false;
    this.emitterSeq = 0; // the emitter's next frame number (OI is 0)
    this.exhibitorSeq = 0;
    this.requests = new Map(); // emitter seq -> { kind, status? }
    this.listRequested = false; // a CREQ awaits its reply
    this.listAgain = false; // another CREQ is due once it comes
    this.serverClosed = false;
    this.timer = null;
    // What WHO frames told this session's exhibitor: id -> name. Ids are
    // the server's, so the map lives and dies with the session.
    this.names = new Map();
    // Set by WAITING: the next MSG waited for this page's name, stored at
    // this time (ms since 1970).
    this.waitedNext = null;
    // After a reconnection, what the exhibitor receives is held until the
    // answer to our first CREQ marks the end of the server's replay.
    this.held = everConnected ? [] : null;
  }

  Session.prototype.connected = function () {
    return this.registered;
  };

  Session.prototype.nextEmitterSeq = function () {
    const seq = this.emitterSeq;
    this.emitterSeq = (this.emitterSeq + 1) & 0xffff;
    return seq;
  };

  // Whether frames and closes of `s` still matter.
  function live(s) {
    return s === session || s === claim;
  }

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
      if (!live(s)) {
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
      // One waiting for a name is closed by the server's handshake timeout
      // if the user takes long; nameSubmitted() then starts anew.
      if (live(s) && !s.naming) {
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
    if (accounts === true && credentials === null) {
      showView(); // the form waits for the user
      return;
    }
    const s = new Session(wantedName);
    session = s;
    showIds(null, null, '');
    showState('connecting', credentials !== null && !credentials.accepted ? 'signing in…' : 'connecting…');
    openExhibitor(s);
  }

  function openExhibitor(s) {
    s.timer = setTimeout(function () {
      if (live(s) && !s.connected() && !s.naming) {
        lose(s, 'the server did not answer the registration');
      }
    }, REGISTRATION_TIMEOUT_MS);
    s.exhibitor = openSocket(s, onExhibitorFrame);
    s.exhibitor.onopen = function () {
      sendHello(s, 'exhibitor');
    };
  }

  function openEmitter(s) {
    s.emitter = openSocket(s, onEmitterFrame);
    s.emitter.onopen = function () {
      sendHello(s, 'emitter');
    };
  }

  // HELLO, the first frame on each connection (PROTOCOL.md, "The hello and
  // its answer"). With accounts both halves sign in to the account; without,
  // the exhibitor claims the session's name and the emitter, which takes its
  // exhibitor's, claims none. A page that does not know yet sends neither:
  // code 0 then means no accounts, code 1 that they are required.
  function sendHello(s, half) {
    let name = '';
    let secret = new Uint8Array(0);
    if (accounts === true && credentials !== null) {
      name = credentials.user;
      secret = credentials.secret;
    } else if (half === 'exhibitor') {
      name = s.name;
    }
    send(half === 'exhibitor' ? s.exhibitor : s.emitter, C.hello(encoder.encode(name), secret));
  }

  // The answer to a HELLO on one half of `s`.
  function helloAnswered(s, half, frame) {
    if (frame.type !== T.HELLOACK) {
      // A server without the extension answers HELLO as an unknown type.
      lose(s, frame.type === T.ERRO
        ? 'the server does not know HELLO (the identity extension)'
        : 'unexpected ' + C.TYPE_NAME[frame.type] + ' before HELLOACK');
      return;
    }
    const signingIn = accounts === true && credentials !== null;
    switch (frame.code) {
      case C.CODE.ACCEPTED:
        accounts = signingIn;
        if (half === 'exhibitor') {
          s.exhibitorHello = true;
          s.ownName = nameText(frame.name);
          s.roles = frame.roles;
          if (signingIn && !credentials.accepted) {
            credentials.accepted = true;
            ui.secret.value = '';
            showProblem(ui.signInProblem, '');
          }
          if (!signingIn) {
            wantedName = s.name;
            showProblem(ui.nameProblem, '');
          }
          if (s === claim) {
            promote(s);
          }
          // OI with origin 0: "I am an exhibitor". It is frame 0.
          send(s.exhibitor, C.bare(T.OI, 0, C.SERVER_ID, s.exhibitorSeq));
          s.exhibitorSeq = 1;
        } else {
          s.emitterHello = true;
          // OI with our exhibitor's id as origin pairs the emitter with it.
          send(s.emitter, C.bare(T.OI, s.exhibitorId, C.SERVER_ID, s.nextEmitterSeq()));
        }
        showView();
        return;
      case C.CODE.NO_ACCOUNTS:
        // Credentials for a server that has no accounts (it restarted
        // without them): the connection is kept; ask as a page without.
        accounts = false;
        credentials = null;
        showView();
        sendHello(s, half);
        return;
      case C.CODE.NAME_TAKEN:
      case C.CODE.BAD_NAME:
        if (signingIn) {
          halt();
          askSignIn(SAY.badUser);
          return;
        }
        s.naming = true;
        clearTimeout(s.timer);
        showProblem(ui.nameProblem, frame.code === C.CODE.NAME_TAKEN ? nameTaken(s.name) : SAY.badName);
        ui.name.value = s.name;
        ui.name.focus();
        if (s === session) {
          showState('naming', 'choose another name');
        }
        return;
      case C.CODE.ACCOUNTS_REQUIRED:
        accounts = true;
        halt();
        askSignIn('');
        return;
      case C.CODE.REFUSED:
        accounts = true;
        halt();
        askSignIn(SAY.wrong);
        return;
      case C.CODE.TOO_MANY_FAILURES:
        accounts = true;
        halt();
        askSignIn(SAY.tooMany);
        return;
      case C.CODE.BUSY:
        halt();
        askSignIn(SAY.busy);
        return;
      default:
        // 8 (malformed) or 9 (version): this page and the server disagree.
        if (signingIn && !credentials.accepted) {
          halt();
          askSignIn(SAY.refusedSignIn(frame.code));
          return;
        }
        lose(s, 'the server refused the HELLO (HELLOACK code ' + frame.code + ')');
    }
  }

  // A claimed name was accepted: its session takes over, the old one leaves.
  function promote(s) {
    const old = session;
    claim = null;
    session = s;
    if (old !== null) {
      // FLW from the emitter, as on leaving the page: the server dismisses
      // the old exhibitor too.
      if (old.emitterId !== null) {
        send(old.emitter, C.bare(T.FLW, old.emitterId, C.SERVER_ID, old.nextEmitterSeq()));
      }
      end(old);
    }
    showIds(null, null, '');
    forgetDestination();
    showClients([]);
    ui.clientCount.textContent = '';
    showState('connecting', 'connecting…');
  }

  function registered(s) {
    clearTimeout(s.timer);
    s.registered = true;
    failures = 0;
    showIds(s.emitterId, s.exhibitorId, s.ownName);
    const viewOnly = s.emitterId === null;
    if (viewOnly) {
      // No emitter, so no CREQ to mark where a replay ends: what is held
      // is shown now, and a replay after a reconnection may repeat lines.
      releaseHeld(s);
    }
    showState('connected', viewOnly ? 'connected, view only' : 'connected');
    if (accounts === false) {
      ui.name.value = s.ownName;
    }
    const ids = viewOnly
      ? 'exhibitor ' + s.exhibitorId + ' (view only: this account cannot send)'
      : 'emitter ' + s.emitterId + ' / exhibitor ' + s.exhibitorId;
    const said = s.claimed ? 'name claimed: you are '
      : everConnected ? 'reconnected: you are now ' : 'connected: you are ';
    note(said + (s.ownName ? s.ownName + ', ' : '') + ids);
    everConnected = true;
    requestClients();
    requestRooms();
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
    if (!s.exhibitorHello) {
      helloAnswered(s, 'exhibitor', frame);
      return;
    }
    if (s.exhibitorId === null) {
      s.exhibitorId = registration(s, frame, 'exhibitor');
      if (s.exhibitorId !== null) {
        // An account without emit registers no emitter: the server would
        // refuse its OI.
        if (s.roles & C.ROLE.EMIT) {
          openEmitter(s);
        } else {
          registered(s);
        }
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
          // The sender as named now: a later WHO may give the id to another.
          from: who(s, frame.origin),
          // Our own message reached our own exhibitor: it is already in the
          // log as sent; it is marked shown here rather than repeated.
          ownEntry: own !== undefined && (own.kind === 'msg' || own.kind === 'tell')
            ? own.entry : null,
          // Ours only if we sent it: a replayed message from an earlier
          // holder of our emitter id is someone else's.
          mine: own !== undefined,
          waited: s.waitedNext,
        };
        s.waitedNext = null;
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
      case T.WAITING:
        // The next MSG waited for our name (PROTOCOL.md, "Waiting
        // messages"); acknowledged like a CLIST.
        s.waitedNext = frame.timeMs;
        ack();
        break;
      case T.CLIST:
        // Sent after everything the server queued for us before our
        // emitter existed, the replay included.
        s.waitedNext = null;
        releaseHeld(s);
        showClients(frame.ids);
        ack();
        break;
      case T.WHO: {
        // The name behind an id, before the MSG or CLIST that carries it;
        // acknowledged like a CLIST (PROTOCOL.md, "Sequence numbers").
        const name = nameText(frame.name);
        if (name !== '') {
          s.names.set(frame.id, name);
        } else {
          s.names.delete(frame.id);
        }
        ack();
        if (s === session && listedIds.indexOf(frame.id) >= 0) {
          showClients(listedIds);
        }
        break;
      }
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
    if (C.isRoomId(frame.dest)) {
      // Only members receive a room's messages.
      memberOf(frame.dest);
    }
    if (frame.dest === C.BROADCAST) {
      seenBroadcasts.push(broadcastKey(frame));
      if (seenBroadcasts.length > SEEN_MAX) {
        seenBroadcasts.shift();
      }
    }
    if (received.ownEntry !== null) {
      received.ownEntry.classList.add('shown-here');
    } else {
      showIncoming(s, frame, received.from, received.mine, received.waited);
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
    if (!s.emitterHello) {
      helloAnswered(s, 'emitter', frame);
      return;
    }
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
        if (request.kind === 'join' || request.kind === 'leave') {
          roomAnswered(request, frame);
        } else if (request.kind === 'rooms') {
          // ERRO: a server without rooms; the list stays empty.
        } else if (request.kind === 'msg') {
          setStatus(request.status, frame.type === T.OK ? 'delivered' : 'not delivered');
        } else if (request.kind === 'tell') {
          toldAnswered(request, frame);
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
      case T.ROOMACK:
      case T.ROOMLIST: {
        // Answers in the reply order, in place of OK or ERRO.
        const request = s.requests.get(frame.seq);
        const wanted = frame.type === T.ROOMLIST ? ['rooms'] : ['join', 'leave', 'tell'];
        if (request === undefined || wanted.indexOf(request.kind) < 0) {
          console.warn('evchat: ' + C.TYPE_NAME[frame.type] + ' answers no such request, seq ' + frame.seq);
          return;
        }
        s.requests.delete(frame.seq);
        if (frame.type === T.ROOMLIST) {
          roomsListed(frame);
        } else if (request.kind === 'tell') {
          toldAnswered(request, frame);
        } else {
          roomAnswered(request, frame);
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

  // Closes both sockets of `s` and settles what it leaves open.
  function end(s) {
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
      if (request.kind === 'msg' || request.kind === 'tell') {
        setStatus(request.status, 'unconfirmed');
      }
    });
  }

  // Forgets `s` (a claim or a session waiting for a name) at once.
  function drop(s) {
    end(s);
    if (s === claim) {
      claim = null;
    }
    if (s === session) {
      session = null;
    }
  }

  // Ends every attempt and schedules none: the user acts next.
  function halt() {
    clearTimeout(retryTimer);
    retryTimer = null;
    [claim, session].forEach(function (s) {
      if (s !== null) {
        drop(s);
      }
    });
    forgetDestination();
    showClients([]);
    ui.clientCount.textContent = '';
  }

  // Ends an attempt: both sockets closed, unanswered messages marked, the
  // next attempt scheduled with exponential backoff and jitter.
  function lose(s, reason) {
    if (s === claim) {
      drop(s);
      showProblem(ui.nameProblem, SAY.lostClaim);
      return;
    }
    if (session !== s) {
      return;
    }
    if (accounts === true && credentials !== null && !credentials.accepted) {
      // The form's sign-in got no answer: say so there.
      halt();
      askSignIn(SAY.lostSignIn);
      return;
    }
    session = null;
    end(s);
    if (s.connected() && !s.serverClosed) {
      note(reason);
    }
    const why = s.serverClosed ? 'server closed the chat' : reason;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, failures));
    // ±20% so that many pages cut off by one restart do not return at once.
    const delay = Math.min(BACKOFF_MAX_MS, Math.round(base * (0.8 + 0.4 * Math.random())));
    failures = Math.min(failures + 1, 16);
    showIds(null, null, '');
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
    if (s === null || !s.connected() || s.emitterId === null) {
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
    if (s === null || !s.connected() || s.emitterId === null || text === '') {
      return;
    }
    if (text === '/tell' || text.startsWith('/tell ')) {
      tellMessage(s, text);
      return;
    }
    if (text.startsWith('/') && !text.startsWith('//')) {
      const word = text.trim().split(/\s/)[0];
      if (word.toLowerCase() === '/help') {
        note(PAGE_HELP);
        ui.text.value = '';
        return;
      }
      // "/to bob" and the like are evchat chat's: said, not sent as text.
      note(unknownCommand(word));
      return;
    }
    // "//" stands for a leading "/", whoever gets the line.
    const typed = text.startsWith('//') ? text.slice(1) : text;
    const bytes = encoder.encode(typed);
    if (bytes.length > C.MAX_TEXT_LEN) {
      note('not sent: the message is ' + bytes.length + ' bytes; at most 65535 fit');
      return;
    }
    if (ui.dest.value === '') {
      const said = ui.dest.selectedOptions.length > 0 ? ui.dest.selectedOptions[0].textContent : '';
      const away = said.endsWith(' is not connected') ? said.slice(0, -' is not connected'.length) : '';
      if (away !== '') {
        // The conversation of someone away: the message waits for them
        // (or the server says why it cannot), as "/tell" would do.
        tellName(s, away, typed);
        return;
      }
      note('not sent: choose who gets it (the ids changed when the chat reconnected)');
      ui.dest.focus();
      return;
    }
    const dest = Number(ui.dest.value);
    const seq = s.nextEmitterSeq();
    const shown = showOutgoing(s, dest, bytes);
    s.requests.set(seq, { kind: 'msg', entry: shown.entry, status: shown.status });
    send(s.emitter, C.msg(s.emitterId, dest, seq, bytes));
    ui.text.value = '';
    ui.text.focus();
    scrollToNewest();
  }

  // "/tell NAME message": TELL, whether NAME is online or not. The name
  // is checked against the rule first, so a typo costs no request.
  function tellMessage(s, line) {
    const parts = /^\/tell\s+(\S+)\s+(\S[\s\S]*)$/.exec(line);
    if (parts === null) {
      note(TELL_USAGE);
      return;
    }
    tellName(s, parts[1].replace(/^@/, ''), parts[2]);
  }

  // TELL `text` to `name`; its entry goes in the name's conversation.
  function tellName(s, name, text) {
    if (!C.NAME_RULE.test(name)) {
      note('not sent: "' + name + '" is not a name: a letter, then up to 23 letters, digits, ".", "_" or "-"');
      return;
    }
    const nameBytes = encoder.encode(name);
    const bytes = encoder.encode(text);
    if (bytes.length > C.MAX_TEXT_LEN - 1 - nameBytes.length) {
      note('not sent: the message is ' + bytes.length + ' bytes; at most ' +
        (C.MAX_TEXT_LEN - 1 - nameBytes.length) + ' fit with the name');
      return;
    }
    const seq = s.nextEmitterSeq();
    const shown = showTold(name, bytes);
    s.requests.set(seq, { kind: 'tell', name: name, entry: shown.entry, status: shown.status });
    send(s.emitter, C.tell(s.emitterId, seq, nameBytes, bytes));
    ui.text.value = '';
    ui.text.focus();
    scrollToNewest();
  }

  ui.composer.addEventListener('submit', function (event) {
    event.preventDefault();
    sendMessage();
  });
  ui.refresh.addEventListener('click', requestClients);
  ui.roomsRefresh.addEventListener('click', requestRooms);
  ui.roomName.addEventListener('input', function () {
    // A new name to join: the last answer no longer applies.
    if (ui.roomProblem.textContent !== SAY.roomsNeedAName) {
      showProblem(ui.roomProblem, '');
    }
  });
  ui.roomForm.addEventListener('submit', function (event) {
    event.preventDefault();
    roomFormSubmitted();
  });
  ui.dest.addEventListener('change', function () {
    // Within a conversation, choosing someone else moves to theirs.
    if (current !== 'all' && ui.dest.value !== '') {
      openConversation(conversationOf(session, Number(ui.dest.value)));
    }
  });
  ui.signInForm.addEventListener('submit', function (event) {
    event.preventDefault();
    if (credentials === null) {
      signInSubmitted();
    }
  });
  ui.nameForm.addEventListener('submit', function (event) {
    event.preventDefault();
    nameSubmitted();
  });
  // The refusal lies over the log (style.css): editing the name puts it away.
  ui.name.addEventListener('input', function () {
    showProblem(ui.nameProblem, '');
  });
  ui.signOut.addEventListener('click', function () {
    const s = session;
    if (s !== null && s.emitterId !== null) {
      send(s.emitter, C.bare(T.FLW, s.emitterId, C.SERVER_ID, s.nextEmitterSeq()));
    }
    halt();
    note('signed out');
    askSignIn('');
  });
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
      if (s.emitterId !== null) {
        send(s.emitter, C.bare(T.FLW, s.emitterId, C.SERVER_ID, s.nextEmitterSeq()));
      } else {
        send(s.exhibitor, C.bare(T.FLW, s.exhibitorId, C.SERVER_ID, s.exhibitorSeq));
      }
    }
  });

  showConversations();
  start();
})();
