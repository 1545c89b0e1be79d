#!/usr/bin/env python3
"""publish: a memstat page publisher in Python (docs/memstat-page.md).

    OOMD_MEMSTAT_PAGE_FD=3 python3 publish.py BYTES [COUNT] 3<>page

Publishes BYTES COUNT times (default 1) on the page whose read-write fd is named by
OOMD_MEMSTAT_PAGE_FD, following the writer's protocol, and prints the page's sample
counter after the last write.

Caveats, because Python has no atomic operations on shared memory:
- It must be the page's only writer: it cannot compare-and-swap the sequence, so it
  cannot exclude a second writer (the C and Go writers can).
- An aligned 8-byte struct.pack_into is one 8-byte copy, which CPython performs as a
  single store on x86-64 in practice, and x86-64 keeps stores in program order, so the
  reader sees the sequence go odd before the data and the data before it goes even.
  Neither is guaranteed by the language; on arm64 the stores could be reordered. Use the
  C example (or ctypes/cffi atomics) where that matters.
"""
import mmap
import os
import struct
import sys

PAGE_SIZE = 4096
OFF_MAGIC, OFF_VERSION, OFF_SEQ, OFF_BYTES, OFF_COUNTER, OFF_FLAGS = 0, 4, 8, 16, 24, 32
MAGIC = 0x50534D4F  # "OMSP" little-endian
VERSION = 1


def u64(page, off):
    return struct.unpack_from("<Q", page, off)[0]


def put64(page, off, v):
    struct.pack_into("<Q", page, off, v)


def publish(page, value):
    seq = u64(page, OFF_SEQ)
    if seq & 1:
        raise RuntimeError("page busy: a write cycle is in progress (or was abandoned)")
    put64(page, OFF_SEQ, seq + 1)  # 1. odd: a write is in progress
    put64(page, OFF_BYTES, value)  # 2. the value
    put64(page, OFF_COUNTER, u64(page, OFF_COUNTER) + 1)  # 3. the counter
    put64(page, OFF_SEQ, seq + 2)  # 4. even: done


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(f"usage: {sys.argv[0]} BYTES [COUNT]")
    value = int(sys.argv[1], 0)
    count = int(sys.argv[2], 0) if len(sys.argv) == 3 else 1
    env = os.environ.get("OOMD_MEMSTAT_PAGE_FD")
    if not env:
        sys.exit("OOMD_MEMSTAT_PAGE_FD is not set: start me from execd")
    page = mmap.mmap(int(env), PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    magic, version = struct.unpack_from("<II", page, OFF_MAGIC)
    if (magic, version) != (MAGIC, VERSION):
        sys.exit(f"not a memstat page: magic {magic:#x} version {version}")
    for _ in range(count):
        publish(page, value)
    print(u64(page, OFF_COUNTER))


if __name__ == "__main__":
    main()
