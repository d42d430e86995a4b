#!/usr/bin/env python3
"""Writes the committed seed inputs of the `history` fuzz target into
fuzz/seeds/history/. Each input is a flags byte (bit 0: the segment is the
log's last), a 2-byte big-endian read-ahead selector, then a segment file as
HISTORY.md lays it out (see fuzz_targets/history.rs). Rerun after changing
the list; the names are the seeds' roles, so reruns are stable."""
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "history")
MAGIC = b"EVCHLOG1"


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


def seed(last, read_ahead, segment):
    return bytes([1 if last else 0]) + struct.pack(">H", read_ahead) + segment


THREE = MAGIC + b"".join(
    [
        record(1764596702123, 1, 0, b"hello everyone"),
        record(1764596703000, 2, 4096, b"Oi, tudo bem?"),
        record(1764596704500, 1, 0, b"\xff\x00 not utf-8"),
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
    "bad-magic": seed(True, 16, b"EVCHLOG2" + THREE[8:]),
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
