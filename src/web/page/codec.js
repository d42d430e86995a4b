// evchat protocol codec for the browser: frames <-> bytes, and the escaping
// that makes control and bidi characters in received text visible. No DOM and
// no sockets here; app.js does the UI. The wire format is PROTOCOL.md's:
//
//  0       2       4       6       8
//  +-------+-------+-------+-------+
//  | type  |origin | dest  |  seq  |   header: four big-endian u16
//  +-------+-------+-------+-------+
//  MSG   body: | C (u16) | C bytes of text |
//  CLIST body: | N (u16) | N x id (u16)    |
//  OK, ERRO, OI, FLW, CREQ: no body
//
// and the identity extension's (PROTOCOL.md, "Extension: identity"), each
// a length L (u16) and L bytes of body after the header:
//
//  HELLO    (8):  | L | version (u8) | NL (u8) | name | SL (u16) | secret |
//  HELLOACK (9):  | L | code (u8) | version (u8) | roles (u8) | NL (u8) | name |
//  WHO     (10):  | L | id (u16) | roles (u8) | NL (u8) | name |
//  KICK    (11):  | L = 0 |
//
// and the rooms' (PROTOCOL.md, "Extension: rooms and queues"), the same way:
//
//  JOIN     (12):  | L | flags (u8) | NL (u8) | room name |
//  LEAVE    (13):  | L | NL (u8) | room name |
//  ROOMS    (14):  | L = 0 |
//  ROOMACK  (15):  | L | code (u8) | flags (u8) | room id (u16) | members (u16) | NL (u8) | name |
//  ROOMLIST (16):  | L | N (u16) | N x ( room id (u16) | flags (u8) | members (u16) | NL (u8) | name ) |
//
// and the waiting messages' (PROTOCOL.md, "Waiting messages"):
//
//  TELL    (17):  | L | NL (u8) | name | text (L - 1 - NL bytes) |
//  WAITING (18):  | L = 8 | time_ms (u64) |
//
// Over WebSocket each binary message carries exactly one frame, so decode()
// takes one whole message and rejects anything that is not exactly one frame.
'use strict';

const EvchatCodec = (function () {
  const TYPE = Object.freeze({
    OK: 1, ERRO: 2, OI: 3, FLW: 4, MSG: 5, CREQ: 6, CLIST: 7,
    HELLO: 8, HELLOACK: 9, WHO: 10, KICK: 11,
    JOIN: 12, LEAVE: 13, ROOMS: 14, ROOMACK: 15, ROOMLIST: 16, TELL: 17, WAITING: 18,
  });
  const TYPE_NAME = Object.freeze(['', 'OK', 'ERRO', 'OI', 'FLW', 'MSG', 'CREQ', 'CLIST',
    'HELLO', 'HELLOACK', 'WHO', 'KICK', 'JOIN', 'LEAVE', 'ROOMS', 'ROOMACK', 'ROOMLIST', 'TELL', 'WAITING']);
  const LAST_TYPE = TYPE.WAITING;
  const HEADER_LEN = 8;
  const MAX_TEXT_LEN = 0xffff;
  const MAX_FRAME_LEN = HEADER_LEN + 2 + 2 * 0xffff;
  const BROADCAST = 0;
  const SERVER_ID = 0xffff;
  // The identity extension's version and limits (PROTOCOL.md, "Frames").
  const VERSION = 1;
  const MAX_HELLO_NAME_LEN = 64;
  const MAX_SECRET_LEN = 256;
  const MAX_SENT_NAME_LEN = 24;
  const MAX_ROOM_NAME_LEN = 64;
  const MAX_BODY = Object.freeze({
    8: 4 + 64 + 256, 9: 4 + 24, 10: 4 + 24, 11: 0,
    12: 2 + MAX_ROOM_NAME_LEN, 13: 1 + MAX_ROOM_NAME_LEN, 14: 0, 15: 7 + 24, 16: 0xffff,
    17: 0xffff, 18: 8,
  });
  // JOIN's and ROOMACK's flag for a queue room; room ids' range.
  const FLAG_QUEUE = 1;
  const ROOM_FIRST = 0x4000;
  const ROOM_LAST = 0x7fff;
  // The roles byte's bits.
  const ROLE = Object.freeze({ VIEW: 1, EMIT: 2, BROADCAST: 4, ADMIN: 8 });
  // HELLOACK's codes.
  const CODE = Object.freeze({
    ACCEPTED: 0, ACCOUNTS_REQUIRED: 1, REFUSED: 2, NAME_TAKEN: 3, BAD_NAME: 4,
    TOO_MANY_FAILURES: 5, BUSY: 6, NO_ACCOUNTS: 7, MALFORMED: 8, VERSION: 9,
  });
  // A name, as the server judges it (PROTOCOL.md, "Names").
  const NAME_RULE = /^[A-Za-z][A-Za-z0-9_.-]{0,23}$/;

  function isExtension(type) {
    return type >= TYPE.HELLO && type <= LAST_TYPE;
  }

  function isRoomId(id) {
    return id >= ROOM_FIRST && id <= ROOM_LAST;
  }

  function isEmitterId(id) {
    return id >= 1 && id <= 4095;
  }

  function isExhibitorId(id) {
    return id >= 4096 && id <= 8191;
  }

  function checkU16(name, value) {
    if (!Number.isInteger(value) || value < 0 || value > 0xffff) {
      throw new RangeError(name + ' must be an integer from 0 to 65535, not ' + value);
    }
  }

  function checkU8(name, value) {
    if (!Number.isInteger(value) || value < 0 || value > 0xff) {
      throw new RangeError(name + ' must be an integer from 0 to 255, not ' + value);
    }
  }

  function checkBytes(name, value, max) {
    if (!(value instanceof Uint8Array)) {
      throw new TypeError(name + ' must be a Uint8Array');
    }
    if (value.length > max) {
      throw new RangeError(name + ' is ' + value.length + ' bytes; at most ' + max + ' fit');
    }
  }

  // The body of an extension frame (after L), checked against its limits.
  function extBody(frame) {
    const type = frame.type;
    if (type === TYPE.HELLO) {
      checkU8('version', frame.version);
      checkBytes('name', frame.name, MAX_HELLO_NAME_LEN);
      checkBytes('secret', frame.secret, MAX_SECRET_LEN);
      const body = new Uint8Array(4 + frame.name.length + frame.secret.length);
      body[0] = frame.version;
      body[1] = frame.name.length;
      body.set(frame.name, 2);
      const at = 2 + frame.name.length;
      body[at] = frame.secret.length >> 8;
      body[at + 1] = frame.secret.length & 0xff;
      body.set(frame.secret, at + 2);
      return body;
    }
    if (type === TYPE.HELLOACK) {
      ['code', 'version', 'roles'].forEach(function (field) { checkU8(field, frame[field]); });
      checkBytes('name', frame.name, MAX_SENT_NAME_LEN);
      const body = new Uint8Array(4 + frame.name.length);
      body.set([frame.code, frame.version, frame.roles, frame.name.length]);
      body.set(frame.name, 4);
      return body;
    }
    if (type === TYPE.WHO) {
      checkU16('id', frame.id);
      checkU8('roles', frame.roles);
      checkBytes('name', frame.name, MAX_SENT_NAME_LEN);
      const body = new Uint8Array(4 + frame.name.length);
      body.set([frame.id >> 8, frame.id & 0xff, frame.roles, frame.name.length]);
      body.set(frame.name, 4);
      return body;
    }
    if (type === TYPE.JOIN || type === TYPE.LEAVE) {
      checkBytes('name', frame.name, MAX_ROOM_NAME_LEN);
      const head = type === TYPE.JOIN ? [frame.flags, frame.name.length] : [frame.name.length];
      if (type === TYPE.JOIN) {
        checkU8('flags', frame.flags);
      }
      const body = new Uint8Array(head.length + frame.name.length);
      body.set(head);
      body.set(frame.name, head.length);
      return body;
    }
    if (type === TYPE.ROOMACK) {
      ['code', 'flags'].forEach(function (field) { checkU8(field, frame[field]); });
      checkU16('room', frame.room);
      checkU16('members', frame.members);
      checkBytes('name', frame.name, MAX_SENT_NAME_LEN);
      const body = new Uint8Array(7 + frame.name.length);
      body.set([frame.code, frame.flags, frame.room >> 8, frame.room & 0xff,
        frame.members >> 8, frame.members & 0xff, frame.name.length]);
      body.set(frame.name, 7);
      return body;
    }
    if (type === TYPE.ROOMLIST) {
      let len = 2;
      frame.rooms.forEach(function (r) {
        checkU16('room', r.room);
        checkU8('flags', r.flags);
        checkU16('members', r.members);
        checkBytes('name', r.name, MAX_SENT_NAME_LEN);
        len += 6 + r.name.length;
      });
      if (len > 0xffff) {
        throw new RangeError('ROOMLIST is ' + len + ' bytes; at most 65535 fit');
      }
      const body = new Uint8Array(len);
      body.set([frame.rooms.length >> 8, frame.rooms.length & 0xff]);
      let at = 2;
      frame.rooms.forEach(function (r) {
        body.set([r.room >> 8, r.room & 0xff, r.flags, r.members >> 8, r.members & 0xff,
          r.name.length], at);
        body.set(r.name, at + 6);
        at += 6 + r.name.length;
      });
      return body;
    }
    if (type === TYPE.TELL) {
      checkBytes('name', frame.name, MAX_ROOM_NAME_LEN);
      checkBytes('text', frame.text, 0xffff - 1 - frame.name.length);
      const body = new Uint8Array(1 + frame.name.length + frame.text.length);
      body[0] = frame.name.length;
      body.set(frame.name, 1);
      body.set(frame.text, 1 + frame.name.length);
      return body;
    }
    if (type === TYPE.WAITING) {
      if (!Number.isSafeInteger(frame.timeMs) || frame.timeMs < 0) {
        throw new RangeError('timeMs must be a whole number of milliseconds, not ' + frame.timeMs);
      }
      const body = new Uint8Array(8);
      new DataView(body.buffer).setBigUint64(0, BigInt(frame.timeMs));
      return body;
    }
    return new Uint8Array(0); // KICK, ROOMS
  }

  // frame: { type, origin, dest, seq, text?: Uint8Array, ids?: number[] }
  // or an extension frame with the fields decode() gives it.
  // Returns a Uint8Array holding exactly the frame's bytes.
  function encode(frame) {
    const type = frame.type;
    if (!Number.isInteger(type) || type < TYPE.OK || type > LAST_TYPE) {
      throw new RangeError('unknown frame type ' + type);
    }
    checkU16('origin', frame.origin);
    checkU16('dest', frame.dest);
    checkU16('seq', frame.seq);
    if (isExtension(type)) {
      const body = extBody(frame);
      const bytes = new Uint8Array(HEADER_LEN + 2 + body.length);
      const view = new DataView(bytes.buffer);
      view.setUint16(0, type);
      view.setUint16(2, frame.origin);
      view.setUint16(4, frame.dest);
      view.setUint16(6, frame.seq);
      view.setUint16(8, body.length);
      bytes.set(body, 10);
      return bytes;
    }
    let bodyLen = 0;
    if (type === TYPE.MSG) {
      if (!(frame.text instanceof Uint8Array)) {
        throw new TypeError('MSG text must be a Uint8Array');
      }
      if (frame.text.length > MAX_TEXT_LEN) {
        throw new RangeError('text is ' + frame.text.length + ' bytes; a message carries at most 65535');
      }
      bodyLen = 2 + frame.text.length;
    } else if (type === TYPE.CLIST) {
      if (!Array.isArray(frame.ids) || frame.ids.length > 0xffff) {
        throw new RangeError('CLIST ids must be an array of at most 65535 ids');
      }
      frame.ids.forEach(function (id) { checkU16('id', id); });
      bodyLen = 2 + 2 * frame.ids.length;
    }
    const bytes = new Uint8Array(HEADER_LEN + bodyLen);
    const view = new DataView(bytes.buffer);
    view.setUint16(0, type);
    view.setUint16(2, frame.origin);
    view.setUint16(4, frame.dest);
    view.setUint16(6, frame.seq);
    if (type === TYPE.MSG) {
      view.setUint16(8, frame.text.length);
      bytes.set(frame.text, 10);
    } else if (type === TYPE.CLIST) {
      view.setUint16(8, frame.ids.length);
      frame.ids.forEach(function (id, i) { view.setUint16(10 + 2 * i, id); });
    }
    return bytes;
  }

  // A frame with no body (OK, ERRO, OI, FLW, CREQ).
  function bare(type, origin, dest, seq) {
    return encode({ type: type, origin: origin, dest: dest, seq: seq });
  }

  function msg(origin, dest, seq, text) {
    return encode({ type: TYPE.MSG, origin: origin, dest: dest, seq: seq, text: text });
  }

  // JOIN(origin, 65535, seq): joins (creating) the room `name`, a queue
  // when `queue`.
  function join(origin, seq, name, queue) {
    return encode({
      type: TYPE.JOIN, origin: origin, dest: SERVER_ID, seq: seq,
      flags: queue ? FLAG_QUEUE : 0, name: name,
    });
  }

  // TELL(origin, 65535, seq): `text` for the name `name`, online or not.
  function tell(origin, seq, name, text) {
    return encode({ type: TYPE.TELL, origin: origin, dest: SERVER_ID, seq: seq, name: name, text: text });
  }

  function leave(origin, seq, name) {
    return encode({ type: TYPE.LEAVE, origin: origin, dest: SERVER_ID, seq: seq, name: name });
  }

  // HELLO(0, 65535, seq 0), version 1: opts in, signs in or claims a name.
  function hello(name, secret) {
    return encode({
      type: TYPE.HELLO, origin: 0, dest: SERVER_ID, seq: 0,
      version: VERSION, name: name, secret: secret,
    });
  }

  // An extension frame's body (the bytes after L) -> its fields, or throws
  // when the fields do not add up to L or one is over its limit.
  function decodeExtBody(frame, body) {
    const type = frame.type;
    const bad = function (why) {
      return new Error('malformed ' + TYPE_NAME[type] + ': ' + why);
    };
    if (type === TYPE.HELLO) {
      if (body.length < 4) {
        throw bad('L is ' + body.length + ', at least 4');
      }
      const nl = body[1];
      if (nl > MAX_HELLO_NAME_LEN || body.length < 4 + nl) {
        throw bad('name length ' + nl);
      }
      const sl = (body[2 + nl] << 8) | body[3 + nl];
      if (sl > MAX_SECRET_LEN || body.length !== 4 + nl + sl) {
        throw bad('fields do not add up to L');
      }
      frame.version = body[0];
      frame.name = body.slice(2, 2 + nl);
      frame.secret = body.slice(4 + nl);
    } else if (type === TYPE.HELLOACK || type === TYPE.WHO) {
      if (body.length < 4 || body.length !== 4 + body[3]) {
        throw bad('fields do not add up to L');
      }
      if (type === TYPE.HELLOACK) {
        frame.code = body[0];
        frame.version = body[1];
      } else {
        frame.id = (body[0] << 8) | body[1];
      }
      frame.roles = body[2];
      frame.name = body.slice(4);
    } else if (type === TYPE.JOIN) {
      if (body.length < 2 || body.length !== 2 + body[1] || body[1] > MAX_ROOM_NAME_LEN) {
        throw bad('fields do not add up to L');
      }
      frame.flags = body[0];
      frame.name = body.slice(2);
    } else if (type === TYPE.LEAVE) {
      if (body.length < 1 || body.length !== 1 + body[0]) {
        throw bad('fields do not add up to L');
      }
      frame.name = body.slice(1);
    } else if (type === TYPE.ROOMACK) {
      if (body.length < 7 || body.length !== 7 + body[6]) {
        throw bad('fields do not add up to L');
      }
      frame.code = body[0];
      frame.flags = body[1];
      frame.room = (body[2] << 8) | body[3];
      frame.members = (body[4] << 8) | body[5];
      frame.name = body.slice(7);
    } else if (type === TYPE.ROOMLIST) {
      if (body.length < 2) {
        throw bad('L is ' + body.length + ', at least 2');
      }
      const n = (body[0] << 8) | body[1];
      const rooms = [];
      let at = 2;
      for (let i = 0; i < n; i++) {
        if (at + 6 > body.length || at + 6 + body[at + 5] > body.length
          || body[at + 5] > MAX_SENT_NAME_LEN) {
          throw bad('room ' + i + ' runs past L');
        }
        const nl = body[at + 5];
        rooms.push({
          room: (body[at] << 8) | body[at + 1],
          flags: body[at + 2],
          members: (body[at + 3] << 8) | body[at + 4],
          name: body.slice(at + 6, at + 6 + nl),
        });
        at += 6 + nl;
      }
      if (at !== body.length) {
        throw bad('fields do not add up to L');
      }
      frame.rooms = rooms;
    } else if (type === TYPE.TELL) {
      if (body.length < 1 || body[0] > MAX_ROOM_NAME_LEN || body.length < 1 + body[0]) {
        throw bad('fields do not add up to L');
      }
      frame.name = body.slice(1, 1 + body[0]);
      frame.text = body.slice(1 + body[0]);
    } else if (type === TYPE.WAITING) {
      if (body.length !== 8) {
        throw bad('L is ' + body.length + ', not 8');
      }
      // Milliseconds since 1970 stay below 2^53 for some 285,000 years.
      frame.timeMs = Number(new DataView(body.buffer, body.byteOffset, 8).getBigUint64(0));
    }
    return frame;
  }

  // One whole WebSocket message (ArrayBuffer or Uint8Array) -> one frame.
  // Throws an Error whose message says what is wrong: shorter than its
  // header or its length field says, longer (trailing bytes), an extension
  // body over its limit or whose fields do not add up, or a type that is
  // not one of the eleven.
  function decode(data) {
    let bytes;
    if (data instanceof ArrayBuffer) {
      bytes = new Uint8Array(data);
    } else if (data instanceof Uint8Array) {
      bytes = data;
    } else {
      throw new TypeError('a frame arrives as binary data, not ' + typeof data);
    }
    if (bytes.length < HEADER_LEN) {
      throw new Error('short frame: ' + bytes.length + ' bytes, the header alone is 8');
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const type = view.getUint16(0);
    if (type < TYPE.OK || type > LAST_TYPE) {
      throw new Error('unknown frame type ' + type);
    }
    const frame = {
      type: type,
      origin: view.getUint16(2),
      dest: view.getUint16(4),
      seq: view.getUint16(6),
    };
    let length = HEADER_LEN;
    if (isExtension(type)) {
      if (bytes.length < HEADER_LEN + 2) {
        throw new Error('short ' + TYPE_NAME[type] + ': no length field');
      }
      const l = view.getUint16(8);
      if (l > MAX_BODY[type]) {
        throw new Error('malformed ' + TYPE_NAME[type] + ': L is ' + l + ', at most ' + MAX_BODY[type]);
      }
      length = HEADER_LEN + 2 + l;
      if (bytes.length < length) {
        throw new Error('short ' + TYPE_NAME[type] + ': ' + bytes.length + ' of ' + length + ' bytes');
      }
      if (bytes.length === length) {
        decodeExtBody(frame, bytes.subarray(10, length));
      }
    } else if (type === TYPE.MSG || type === TYPE.CLIST) {
      if (bytes.length < HEADER_LEN + 2) {
        throw new Error('short ' + TYPE_NAME[type] + ': no length field');
      }
      const count = view.getUint16(8);
      length = HEADER_LEN + 2 + (type === TYPE.MSG ? count : 2 * count);
      if (bytes.length < length) {
        throw new Error('short ' + TYPE_NAME[type] + ': ' + bytes.length + ' of ' + length + ' bytes');
      }
      if (type === TYPE.MSG) {
        frame.text = bytes.slice(10, length);
      } else {
        frame.ids = [];
        for (let i = 0; i < count; i++) {
          frame.ids.push(view.getUint16(10 + 2 * i));
        }
      }
    }
    if (bytes.length > length) {
      throw new Error('trailing bytes: ' + (bytes.length - length) + ' after a ' + length + '-byte ' + TYPE_NAME[type]);
    }
    return frame;
  }

  // The length of the valid UTF-8 sequence starting at bytes[i], or 0 if
  // none starts there (strict: no overlong forms, no surrogates, nothing
  // above U+10FFFF). Taking a byte as invalid whenever no valid sequence
  // starts at it escapes exactly the bytes Rust's utf8_chunks() calls invalid.
  function utf8SequenceAt(bytes, i) {
    const b0 = bytes[i];
    if (b0 < 0x80) {
      return 1;
    }
    let need;
    let min = 0x80;
    let max = 0xbf;
    if (b0 >= 0xc2 && b0 <= 0xdf) {
      need = 1;
    } else if (b0 >= 0xe0 && b0 <= 0xef) {
      need = 2;
      if (b0 === 0xe0) {
        min = 0xa0;
      } else if (b0 === 0xed) {
        max = 0x9f;
      }
    } else if (b0 >= 0xf0 && b0 <= 0xf4) {
      need = 3;
      if (b0 === 0xf0) {
        min = 0x90;
      } else if (b0 === 0xf4) {
        max = 0x8f;
      }
    } else {
      return 0;
    }
    if (i + need >= bytes.length) {
      return 0;
    }
    const b1 = bytes[i + 1];
    if (b1 < min || b1 > max) {
      return 0;
    }
    for (let k = 2; k <= need; k++) {
      const b = bytes[i + k];
      if (b < 0x80 || b > 0xbf) {
        return 0;
      }
    }
    return need + 1;
  }

  function codePointOf(bytes, i, len) {
    const b0 = bytes[i];
    if (len === 1) {
      return b0;
    }
    let cp = b0 & (0xff >> (len + 1));
    for (let k = 1; k < len; k++) {
      cp = (cp << 6) | (bytes[i + k] & 0x3f);
    }
    return cp;
  }

  function hex2(n) {
    return (n < 0x10 ? '0' : '') + n.toString(16);
  }

  // Characters that reorder the text around them (LRM, RLM, embeddings,
  // overrides, isolates): shown as \u{...} so a sender cannot make a line
  // read differently from the bytes it carries.
  function isBidiControl(cp) {
    return cp === 0x200e || cp === 0x200f ||
      (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
  }

  // Received text bytes -> the string to show, exactly as the exhibitor
  // escapes it: backslash doubled; \n \r \t; other control characters
  // (Unicode Cc: U+0000-U+001F, U+007F-U+009F) as \xNN; bidi controls as
  // \u{hex}; each byte that is not part of valid UTF-8 as \xNN.
  function escapeText(bytes) {
    let shown = '';
    let i = 0;
    while (i < bytes.length) {
      const len = utf8SequenceAt(bytes, i);
      if (len === 0) {
        shown += '\\x' + hex2(bytes[i]);
        i += 1;
        continue;
      }
      const cp = codePointOf(bytes, i, len);
      i += len;
      if (cp === 0x5c) {
        shown += '\\\\';
      } else if (cp === 0x0a) {
        shown += '\\n';
      } else if (cp === 0x0d) {
        shown += '\\r';
      } else if (cp === 0x09) {
        shown += '\\t';
      } else if (cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) {
        shown += '\\x' + hex2(cp);
      } else if (isBidiControl(cp)) {
        shown += '\\u{' + cp.toString(16) + '}';
      } else {
        shown += String.fromCodePoint(cp);
      }
    }
    return shown;
  }

  return Object.freeze({
    TYPE: TYPE,
    TYPE_NAME: TYPE_NAME,
    HEADER_LEN: HEADER_LEN,
    MAX_TEXT_LEN: MAX_TEXT_LEN,
    MAX_FRAME_LEN: MAX_FRAME_LEN,
    BROADCAST: BROADCAST,
    SERVER_ID: SERVER_ID,
    VERSION: VERSION,
    MAX_HELLO_NAME_LEN: MAX_HELLO_NAME_LEN,
    MAX_SECRET_LEN: MAX_SECRET_LEN,
    MAX_ROOM_NAME_LEN: MAX_ROOM_NAME_LEN,
    FLAG_QUEUE: FLAG_QUEUE,
    ROLE: ROLE,
    CODE: CODE,
    NAME_RULE: NAME_RULE,
    isEmitterId: isEmitterId,
    isExhibitorId: isExhibitorId,
    isRoomId: isRoomId,
    encode: encode,
    bare: bare,
    msg: msg,
    hello: hello,
    join: join,
    leave: leave,
    tell: tell,
    decode: decode,
    escapeText: escapeText,
  });
})();
