#!/usr/bin/env python3
"""A reader for edgeplex rings, written from docs/RING.md alone.

Standard library only: `ctypes` maps the file PROT_READ and calls futex(2). It prints one JSON
line per message, like `edgeplex ring cat --meta --hash`, then an end line with the totals.

    python3 ring_reader.py /dev/shm/edgeplex/cam0.ring --from oldest --count 10

Python cannot issue memory fences. On x86_64 (TSO: loads are not reordered with other loads)
the protocol's acquire fences need no instruction, so this reader is correct there; on aarch64
use the Rust or a C reader.
"""

import argparse
import ctypes
import json
import os
import platform
import stat
import struct
import sys
import time

MAGIC = b"EDGEPLXR"
HEADER_SIZE = 4096
DESC_SIZE = 64
MAX_SLOT_COUNT = 1 << 20
MAX_SLOT_SIZE = 1 << 30
MAX_FILE_SIZE = 1 << 36
OFF_STATE, OFF_EPOCH, OFF_HEAD, OFF_FUTEX = 256, 264, 320, 384
RETIRED = 1
PROT_READ, MAP_SHARED, FUTEX_WAIT = 1, 1, 0
SYS_FUTEX = {"x86_64": 202, "aarch64": 98}[platform.machine()]

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.syscall.restype = ctypes.c_long


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class RingError(Exception):
    pass


def round_up(v, to):
    return (v + to - 1) // to * to


def validate(page, file_len):
    """Section 7: check everything before trusting anything."""
    if file_len < HEADER_SIZE or len(page) < HEADER_SIZE:
        raise RingError(f"file is {file_len} bytes, smaller than the header")
    if page[0:8] != MAGIC:
        raise RingError("bad magic: not an edgeplex ring")
    version, header_size, slot_count, kind = struct.unpack_from("<IIII", page, 8)
    if version != 1:
        raise RingError(f"unsupported version {version}")
    if header_size != HEADER_SIZE:
        raise RingError(f"header size {header_size}")
    if not 2 <= slot_count <= MAX_SLOT_COUNT:
        raise RingError(f"slot count {slot_count}")
    if kind not in (0, 1, 2):
        raise RingError(f"kind {kind}")
    slot_size, desc_off, data_off, size = struct.unpack_from("<QQQQ", page, 24)
    if slot_size == 0 or slot_size % 64 or slot_size > MAX_SLOT_SIZE:
        raise RingError(f"slot size {slot_size}")
    want_data = HEADER_SIZE + round_up(slot_count * DESC_SIZE, 4096)
    want_size = round_up(want_data + slot_count * slot_size, 4096)
    if want_size > MAX_FILE_SIZE:
        raise RingError("layout too large")
    if (desc_off, data_off, size) != (HEADER_SIZE, want_data, want_size):
        raise RingError("stored layout disagrees with slot count and size")
    if file_len < size:
        raise RingError(f"file is {file_len} bytes but its header describes {size}: truncated")
    (base_seq,) = struct.unpack_from("<Q", page, 144)
    (head,) = struct.unpack_from("<Q", page, 320)
    if (head - base_seq) % 2**64 > 2**63 - 1:
        raise RingError(f"head {head} comes before base_seq {base_seq}: corrupt")
    name = page[80:144].split(b"\0", 1)[0].decode("utf-8")
    width, height, fourcc, stride = struct.unpack_from("<IIII", page, 64)
    return dict(name=name, kind=kind, slot_count=slot_count, slot_size=slot_size,
                data_offset=data_off, file_size=size, base_seq=base_seq,
                width=width, height=height, fourcc=fourcc, stride=stride)


class Ring:
    def __init__(self, path):
        self.path = path
        fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RingError("not a regular file")
            self.ident = (st.st_dev, st.st_ino)
            self.g = validate(os.pread(fd, HEADER_SIZE, 0), st.st_size)
            # RING.md section 7, step 13: a writer allocates every block, so a sparse file is
            # refused (mapping it would allocate memory charged to this reader).
            if st.st_blocks * 512 < self.g["file_size"]:
                raise RingError("ring file is not fully allocated (sparse): refused")
            addr = libc.mmap(None, self.g["file_size"], PROT_READ, MAP_SHARED, fd, 0)
            if addr is None or addr == ctypes.c_void_p(-1).value:
                raise RingError(f"mmap failed: {os.strerror(ctypes.get_errno())}")
            self.addr = addr
        finally:
            os.close(fd)  # the mapping keeps the file alive

    def u64(self, off):
        return ctypes.c_uint64.from_address(self.addr + off).value

    def u32(self, off):
        return ctypes.c_uint32.from_address(self.addr + off).value

    def oldest(self, head):
        return head - min(head - self.g["base_seq"], self.g["slot_count"] - 1)

    def wait(self, futex, timeout):
        ts = Timespec(int(timeout), int((timeout % 1) * 1e9))
        libc.syscall(SYS_FUTEX, ctypes.c_void_p(self.addr + OFF_FUTEX), FUTEX_WAIT,
                     ctypes.c_uint32(futex), ctypes.byref(ts), None, 0)


class Reader:
    def __init__(self, path, start):
        self.ring = Ring(path)
        head = self.ring.u64(OFF_HEAD)
        base = self.ring.g["base_seq"]
        if start == "oldest":
            self.cursor = self.ring.oldest(head)
        elif start == "newest":
            self.cursor = head - 1 if head != base else head
        else:
            self.cursor = head
        self.lost = 0
        self.delivered = 0

    def next(self, timeout):
        """Return (meta, payload bytes) or None on timeout. Section 4.2."""
        deadline = time.monotonic() + timeout
        lost_before = 0
        while True:
            r = self.ring
            futex = r.u32(OFF_FUTEX)
            state = r.u32(OFF_STATE)
            head = r.u64(OFF_HEAD)
            oldest = r.oldest(head)
            if self.cursor < oldest:
                lost_before += oldest - self.cursor
                self.lost += oldest - self.cursor
                self.cursor = oldest
            if self.cursor == head:
                if state & RETIRED:
                    new = Ring(r.path)
                    if new.ident != r.ident:
                        self.ring = new
                        continue
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                r.wait(futex, left)
                continue
            n = self.cursor
            self.cursor += 1
            slot = n % r.g["slot_count"]
            d = HEADER_SIZE + slot * DESC_SIZE
            s1 = r.u64(d)
            if s1 != 2 * n + 2:
                lost_before += 1
                self.lost += 1
                continue
            length, capture_ns, device_seq, publish_ns, epoch = (
                r.u64(d + 8), r.u64(d + 16), r.u64(d + 24), r.u64(d + 32), r.u64(d + 40))
            flags = r.u32(d + 48)
            payload = None
            if length <= r.g["slot_size"]:
                payload = ctypes.string_at(r.addr + r.g["data_offset"] + slot * r.g["slot_size"],
                                           length)
            if payload is None or r.u64(d) != s1:  # torn while we copied
                lost_before += 1
                self.lost += 1
                continue
            self.delivered += 1
            return dict(seq=n, epoch=epoch, len=length, capture_ns=capture_ns,
                        device_seq=device_seq, publish_ns=publish_ns, flags=flags,
                        lost_before=lost_before), payload


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--count", type=int, default=None)
    ap.add_argument("--from", dest="start", choices=["oldest", "newest", "next"],
                    default="newest")
    ap.add_argument("--idle-timeout", type=float, default=5.0)
    args = ap.parse_args()
    try:
        reader = Reader(args.path, args.start)
    except (OSError, RingError) as e:
        print(f"ring_reader: {args.path}: {e}", file=sys.stderr)
        return 66
    seen = 0
    while args.count is None or seen < args.count:
        got = reader.next(args.idle_timeout)
        if got is None:
            break
        meta, payload = got
        meta["fnv1a64"] = f"{fnv1a64(payload):016x}"
        print(json.dumps(meta), flush=True)
        seen += 1
    print(json.dumps(dict(event="end", delivered=reader.delivered, lost=reader.lost,
                          cursor=reader.cursor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
