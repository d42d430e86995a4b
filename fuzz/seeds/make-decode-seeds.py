#!/usr/bin/env python3
"""Writes the committed seed inputs of the `decode` fuzz target into
fuzz/seeds/decode/. Each input is a 2-byte big-endian split selector followed
by a byte stream (see fuzz_targets/decode.rs). Rerun after changing the list;
the names are the seeds' roles, so reruns are stable. Files named by a SHA-1
(the ones pick-seeds.py chose from a run's corpus) are left alone."""
import os
import re
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "decode")


def hdr(kind, origin, dest, seq):
    return struct.pack(">4H", kind, origin, dest, seq)


def msg(origin, dest, seq, text):
    return hdr(5, origin, dest, seq) + struct.pack(">H", len(text)) + text


def clist(origin, dest, seq, ids):
    return hdr(7, origin, dest, seq) + struct.pack(">H", len(ids)) + b"".join(
        struct.pack(">H", i) for i in ids
    )


OI_EXHIBITOR = hdr(3, 0, 0xFFFF, 0)
OK_4096 = hdr(1, 0xFFFF, 4096, 0)
OI_PAIRED = hdr(3, 4096, 0xFFFF, 0)
MSG_HI = msg(1, 0, 1, b"hi")
CLIST_2 = clist(0xFFFF, 4096, 0, [1, 4096])

def ext(kind, origin, dest, seq, body):
    return hdr(kind, origin, dest, seq) + struct.pack(">H", len(body)) + body


def hello(name, secret, version=1):
    return ext(8, 0, 0xFFFF, 0, bytes([version, len(name)]) + name + struct.pack(">H", len(secret)) + secret)


HELLO_ALICE = hello(b"alice", b"pw")
HELLOACK_ALICE = ext(9, 0xFFFF, 0, 0, b"\x00\x01\x03\x05alice")
WHO_ALICE = ext(10, 0xFFFF, 4096, 3, b"\x00\x01\x03\x05alice")
KICK_2 = ext(11, 1, 2, 5, b"")
JOIN_OPS = ext(12, 1, 0xFFFF, 4, b"\x00\x03ops")
LEAVE_OPS = ext(13, 1, 0xFFFF, 7, b"\x03ops")
ROOMS_6 = ext(14, 1, 0xFFFF, 6, b"")
ROOMACK_OPS = ext(15, 0xFFFF, 1, 4, b"\x00\x00\x40\x00\x00\x01\x03ops")
ROOMLIST_2 = ext(16, 0xFFFF, 1, 6, b"\x00\x02\x40\x00\x00\x00\x01\x03ops\x40\x01\x01\x00\x02\x04jobs")

SEEDS = {
    # PROTOCOL.md's examples, one frame each, split in the middle
    "oi-exhibitor": (4, OI_EXHIBITOR),
    "ok-to-oi": (4, OK_4096),
    "oi-paired": (3, OI_PAIRED),
    "msg-hi": (9, MSG_HI),
    "clist-two": (11, CLIST_2),
    # every bare kind in one stream
    "bare-kinds": (
        20,
        b"".join(hdr(k, 1, 0xFFFF, k) for k in (1, 2, 3, 4, 6)),
    ),
    # a session's worth of frames, split inside the MSG's length field
    "session": (
        len(OI_PAIRED) + 9,
        OI_PAIRED + MSG_HI + hdr(6, 1, 0, 2) + hdr(1, 4096, 1, 0) + hdr(4, 1, 0xFFFF, 3),
    ),
    "empty-msg": (8, msg(1, 4096, 7, b"")),
    "empty-clist": (10, clist(0xFFFF, 0, 0, [])),
    "msg-utf8-and-controls": (15, msg(1, 0, 2, "ol\u00e1".encode() + b"\n\x1b[2J\xff")),
    "msg-300-bytes": (150, msg(2, 0, 3, bytes(range(256)) + b"x" * 44)),
    "clist-many": (40, clist(0xFFFF, 0, 9, list(range(1, 30)) + [4096, 8191])),
    # incomplete input: header cut short, length field missing, body short
    "partial-header": (3, OI_EXHIBITOR[:5]),
    "partial-length": (8, MSG_HI[:9]),
    "partial-body": (5, MSG_HI[:11]),
    "msg-claims-65535": (10, hdr(5, 1, 0, 4) + b"\xff\xff" + b"abc"),
    "clist-claims-65535": (10, hdr(7, 0xFFFF, 0, 4) + b"\xff\xff" + b"\x00\x01"),
    # unknown types: 0, 8, 0xffff, after a good frame, and split in the header
    "unknown-0": (2, hdr(0, 1, 2, 3)),
    "unknown-8-after-ok": (12, OK_4096 + hdr(8, 1, 2, 0xBEEF) + b"trailing"),
    "unknown-ffff": (0, hdr(0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF)),
    "frames-then-garbage": (30, MSG_HI + CLIST_2 + b"\x00\x09garbage"),
    # the identity extension (read by ExtFrame::parse), PROTOCOL.md's examples
    "ext-hello": (13, HELLO_ALICE),
    "ext-helloack-who-kick": (21, HELLOACK_ALICE + WHO_ALICE + KICK_2),
    "ext-hello-limits": (9, hello(b"n" * 64, b"s" * 256)),
    "ext-hello-over-long-l": (10, hdr(8, 0, 0xFFFF, 0) + b"\x01\x45"),
    "ext-kick-with-body": (10, ext(11, 1, 2, 5, b"x")),
    "ext-hello-nl-past-l": (12, hdr(8, 0, 0xFFFF, 0) + b"\x00\x0b\x01\x06alice\x00\x02pw"),
    "ext-hello-then-oi": (22, HELLO_ALICE + OI_EXHIBITOR),
    # the rooms' frames (PROTOCOL.md, "Extension: rooms and queues")
    "ext-join-leave-rooms": (17, JOIN_OPS + LEAVE_OPS + ROOMS_6),
    "ext-roomack-roomlist": (25, ROOMACK_OPS + ROOMLIST_2),
    "ext-join-queue-flag": (9, ext(12, 1, 0xFFFF, 4, b"\x01\x04jobs")),
    "ext-join-unknown-flag": (9, ext(12, 1, 0xFFFF, 4, b"\x02\x03ops")),
    "ext-join-over-long-l": (10, hdr(12, 1, 0xFFFF, 4) + b"\x00\x43"),
    "ext-roomlist-n-past-body": (12, ext(16, 0xFFFF, 1, 6, b"\xff\xff\x40\x00")),
    # the waiting messages' frames (PROTOCOL.md, "Waiting messages")
    "ext-tell-waiting": (14, ext(17, 1, 0xFFFF, 7, b"\x03bobhi") + ext(18, 0xFFFF, 4096, 3, b"\x00\x00\x01\x9a\xda\x28\xdb\xab")),
    "ext-tell-nl-past-body": (11, ext(17, 1, 0xFFFF, 7, b"\x05bo")),
    "ext-tell-empty-text": (10, ext(17, 1, 0xFFFF, 8, b"\x03bob")),
    "ext-waiting-over-long-l": (10, hdr(18, 0xFFFF, 4096, 3) + b"\x00\x09"),
    "empty": (0, b""),
    "one-byte": (0, b"\x05"),
}


def main():
    os.makedirs(HERE, exist_ok=True)
    for name in os.listdir(HERE):
        if not re.fullmatch(r"[0-9a-f]{40}", name):
            os.remove(os.path.join(HERE, name))
    for name, (split, stream) in SEEDS.items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(struct.pack(">H", split) + stream)
    print(f"{len(SEEDS)} seeds in {HERE}")


if __name__ == "__main__":
    main()
