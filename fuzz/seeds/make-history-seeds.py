#!/usr/bin/env python3
"""Writes the committed seed inputs of the `history` fuzz target into
fuzz/seeds/history/. Each input is a flags byte (bit 0: the segment is the
log's last), a 2-byte big-endian read-ahead selector, then a segment file as
HISTORY.md lays it out (see fuzz_targets/history.rs). The seeds without a
prefix are version 1 segments (EVCHLOG1, the format before names were kept),
the `v2-` ones version 2 (EVCHLOG2, with the sender's roles and name), the
`v3-` ones version 3 (EVCHLOG3, with room records: dest 65535), the
`v4-` ones version 4 (EVCHLOG4, the records in checksummed batches). Rerun
after changing the list; the names are the seeds' roles, so reruns are
stable."""
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "history")
MAGIC = b"EVCHLOG1"
MAGIC2 = b"EVCHLOG2"
MAGIC3 = b"EVCHLOG3"
MAGIC4 = b"EVCHLOG4"


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def record(time_ms, origin, dest, text):
    body = struct.pack(">QHH", time_ms, origin, dest) + text
    length = struct.pack(">I", len(body))
    return struct.pack(">I", crc32c(length + body)) + length + body


def record2(time_ms, origin, dest, roles, name, text):
    body = struct.pack(">QHHBB", time_ms, origin, dest, roles, len(name)) + name + text
    length = struct.pack(">I", len(body))
    return struct.pack(">I", crc32c(length + body)) + length + body


def with_name_field(name_len, name, text):
    """A version 2 record whose name field is as given, its checksum right."""
    body = struct.pack(">QHHBB", 5, 1, 0, 7, name_len) + name + text
    length = struct.pack(">I", len(body))
    return struct.pack(">I", crc32c(length + body)) + length + body


def room(kind, roles, name, fields):
    """A version 3 room record (HISTORY.md, "Rooms and waiting messages")."""
    return record2(1764596705000, kind, 0xFFFF, roles, name, fields)


ROOMS3 = MAGIC3 + b"".join(
    [
        room(1, 3, b"alice", b"\x40\x00ops"),
        record2(1764596706000, 1, 0x4000, 7, b"alice", b"to the room"),
        room(3, 0, b"bob", b"\x40\x00"),
        room(4, 0, b"bob", b"\x40\x00"),
        room(5, 7, b"alice", struct.pack(">QHHHB", 1, 1, 9, 0, 3) + b"bob" + b"see you"),
        room(5, 0, b"", struct.pack(">QHHHB", 2, 2, 3, 0x4001, 0) + b"job"),
        room(6, 0, b"", struct.pack(">Q", 1)),
        room(2, 0, b"alice", b"\x40\x00"),
        room(7, 0, b"", b"\x00"),
        room(1, 1, b"bob", b"\x40\x00ops"),
        room(8, 7, b"alice", b"\x40\x00\x00\x01" + b"kept"),
        room(9, 0, b"bob", b"\x40\x00" + struct.pack(">I", 1)),
        room(7, 0, b"", b"\x01"),
    ]
)


def batch(time_ms, records):
    """A version 4 batch: records given as (origin, dest, roles, name, text)."""
    body = struct.pack(">Q", time_ms) + b"".join(
        struct.pack(">IHHBB", 6 + len(name) + len(text), origin, dest, roles, len(name)) + name + text
        for origin, dest, roles, name, text in records
    )
    length = struct.pack(">I", len(body))
    return struct.pack(">I", crc32c(length + body)) + length + body


def raw_batch(time_ms, inside):
    """A version 4 batch holding `inside` as its records' bytes, its checksum right."""
    body = struct.pack(">Q", time_ms) + inside
    length = struct.pack(">I", len(body))
    return struct.pack(">I", crc32c(length + body)) + length + body


BATCHES4 = MAGIC4 + b"".join(
    [
        batch(
            1764596702123,
            [
                (1, 0, 0, b"", b"hello everyone"),
                (2, 4096, 7, b"alice", b"Oi, tudo bem?"),
                (1, 0xFFFF, 3, b"alice", b"\x40\x00ops"),
                (5, 0xFFFF, 7, b"alice", struct.pack(">QHHHB", 1, 1, 9, 0, 3) + b"bob" + b"see you"),
            ],
        ),
        batch(1764596703000, [(6, 0xFFFF, 0, b"", struct.pack(">Q", 1)), (3, 0x4000, 0, b"", b"x" * 40)]),
        batch(1764596704500, [(1, 0, 0, b"", b"\xff\x00 not utf-8")]),
    ]
)


def seed(last, read_ahead, segment):
    return bytes([1 if last else 0]) + struct.pack(">H", read_ahead) + segment


THREE = MAGIC + b"".join(
    [
        record(1764596702123, 1, 0, b"hello everyone"),
        record(1764596703000, 2, 4096, b"Oi, tudo bem?"),
        record(1764596704500, 1, 0, b"\xff\x00 not utf-8"),
    ]
)
THREE2 = MAGIC2 + b"".join(
    [
        record2(1764596702123, 1, 0, 7, b"alice", b"hello everyone"),
        record2(1764596703000, 2, 4096, 7, b"", b"from a plain client"),
        record2(1764596704500, 1, 0, 15, b"Bob_the-2.0", b"\xff\x00 not utf-8"),
    ]
)
SECOND = len(MAGIC) + 8 + 12 + len(b"hello everyone")
FLIPPED = bytearray(THREE)
FLIPPED[SECOND + 22] ^= 0x20
HUGE_LENGTH = bytearray(THREE)
HUGE_LENGTH[SECOND + 4 : SECOND + 8] = b"\x00\x01\x00\x00"

SEEDS = {
    "three-records": seed(True, 5, THREE),
    "three-records-sealed": seed(False, 4095, THREE),
    "torn-last-record": seed(True, 7, THREE[:-5]),
    "torn-header": seed(True, 1, MAGIC[:5]),
    "header-only": seed(True, 8, MAGIC),
    "empty": seed(True, 0, b""),
    "zero-tail": seed(True, 64, THREE + bytes(40)),
    "flipped-bit-middle": seed(True, 16, bytes(FLIPPED)),
    "length-past-end-middle": seed(True, 16, bytes(HUGE_LENGTH)),
    "bad-magic": seed(True, 16, b"EVCHLOGX" + THREE[8:]),
    "unknown-version": seed(False, 16, b"EVCHLOG4" + THREE[8:]),
    "v3-room-records": seed(True, 9, ROOMS3),
    "v3-room-records-sealed": seed(False, 4095, ROOMS3),
    "v3-torn-in-waiting": seed(True, 7, ROOMS3[:-60]),
    "v3-unknown-kind": seed(True, 16, MAGIC3 + room(9, 0, b"a", b"\x40\x00")),
    "v3-joined-no-room-name": seed(True, 16, MAGIC3 + room(1, 0, b"a", b"\x40\x00")),
    "v3-waiting-name-and-room": seed(
        False, 16, MAGIC3 + room(5, 0, b"", struct.pack(">QHHHB", 1, 1, 1, 0x4000, 1) + b"b")
    ),
    "v3-settled-short": seed(True, 16, MAGIC3 + room(6, 0, b"", b"\x00" * 7)),
    "v3-checkpoint-bad-phase": seed(True, 16, MAGIC3 + room(7, 0, b"", b"\x02")),
    "v3-seen-no-member": seed(False, 16, MAGIC3 + room(9, 0, b"", b"\x40\x00\x00\x00\x00\x01")),
    "v3-longest-waiting": seed(
        True,
        64,
        MAGIC3 + room(5, 0, b"N" * 24, struct.pack(">QHHHB", 3, 1, 1, 0, 24) + b"n" * 24 + b"x" * 65535),
    ),
    "v2-three-records": seed(True, 5, THREE2),
    "v2-three-records-sealed": seed(False, 4095, THREE2),
    "v2-torn-in-name": seed(True, 7, THREE2[: len(MAGIC2) + 8 + 14 + 3]),
    "v2-longest-name": seed(
        True, 64, MAGIC2 + record2(9, 3, 0, 15, b"N" * 24, b"") + record2(9, 3, 0, 15, b"n", b"x")
    ),
    "v2-name-past-body": seed(True, 16, MAGIC2 + with_name_field(9, b"abc", b"")),
    "v2-name-over-24": seed(True, 16, MAGIC2 + with_name_field(25, b"A" * 25, b"hi")),
    "v2-name-not-printable": seed(False, 16, MAGIC2 + with_name_field(3, b"a\x1bb", b"hi")),
    "v1-record-in-v2-segment": seed(True, 16, MAGIC2 + THREE[8:]),
    "v4-batches": seed(True, 9, BATCHES4),
    "v4-batches-sealed": seed(False, 4095, BATCHES4),
    "v4-torn-in-last-batch": seed(True, 7, BATCHES4[:-5]),
    "v4-flipped-bit-first-batch": seed(True, 64, BATCHES4[:40] + bytes([BATCHES4[40] ^ 4]) + BATCHES4[41:]),
    "v4-record-past-batch": seed(True, 16, MAGIC4 + raw_batch(1, struct.pack(">IHHBB", 9, 1, 0, 0, 0) + b"ab")),
    "v4-record-short": seed(False, 16, MAGIC4 + raw_batch(1, struct.pack(">IHHBB", 6, 1, 0, 0, 0) + b"ab")),
    "v4-name-over-24": seed(True, 16, MAGIC4 + raw_batch(1, struct.pack(">IHHBB", 6, 1, 0, 0, 25))),
    "v4-unknown-room-kind": seed(True, 16, MAGIC4 + batch(1, [(9, 0xFFFF, 0, b"a", b"\x40\x00")])),
    "v3-record-in-v4-segment": seed(True, 16, MAGIC4 + ROOMS3[8:]),
    "record-inside-torn-record": seed(
        True, 32, MAGIC + record(1, 1, 0, record(2, 2, 0, b"inner") + b"xy")[:-1]
    ),
}


def main():
    os.makedirs(HERE, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
