"""Rate-limit counters shared by every worker of `serve`, in a memory-mapped file (shared memory).

`serve --workers N` used to give each worker a counter of its own: a client spread over N sockets got N times
its limit. Here the supervisor creates one file per run (TERRITOIRE_SHARED_LIMITS_FILE) and every worker maps it:
an open-addressing table of fixed slots, each (identity hash, window index, this window's count, the last
window's count), locked with `flock` around one hit. The algorithm is the sliding-window counter of
`security.SlidingWindowCounter`, the same figures whichever worker counts.

Why shared memory rather than PostgreSQL: a check is a lock, a few bytes read and written and an unlock: 3.4 µs
(4.9 µs with two processes contending) against 0.7 µs in process, where the least a database-backed limiter does,
one prepared UPSERT on a local connection, cost 53 µs, before any pool checkout (bench/rate_limit.py, 2026-12-05,
on the shared 2-core machine under other load: noisy, the ratios held across runs). The counters only need to be
shared by the workers of one machine: several machines behind a load balancer each enforce the limit (as they would
with any local limiter), which the README says.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import time
from pathlib import Path

SLOT = struct.Struct("<QqII")  # identity hash, window index, current count, previous count
SLOTS = 1 << 16  # 65,536 identities active per two minutes (1.5 MiB); beyond, the least used slot is taken over
PROBES = 32
_HEADER = b"territoire-limits-1\0"
_HEADER_SIZE = 64


def create_file(path: str | Path) -> None:
    """Create (or empty) the shared table: the supervisor does this once per run, before starting workers."""
    size = _HEADER_SIZE + SLOT.size * SLOTS
    with open(path, "wb") as handle:
        handle.write(_HEADER.ljust(_HEADER_SIZE, b"\0"))
        handle.truncate(size)
    os.chmod(path, 0o600)


class SharedWindowCounter:
    """`SlidingWindowCounter`'s interface (`hit`), with the counts in a file every worker maps."""

    def __init__(self, path: str | Path, window_seconds: float = 60.0) -> None:
        self.window = window_seconds
        self.fd = os.open(path, os.O_RDWR)
        size = os.fstat(self.fd).st_size
        if size != _HEADER_SIZE + SLOT.size * SLOTS:
            os.close(self.fd)
            raise ValueError(f"{path} is not a rate-limit table of this version")
        self.map = mmap.mmap(self.fd, size)
        if self.map[: len(_HEADER)] != _HEADER:
            raise ValueError(f"{path} is not a rate-limit table")

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)

    def hit(self, identity: str, limit: int, now: float | None = None) -> int:
        """0 when the request is allowed (and counted), else the seconds to wait before retrying."""
        now = time.time() if now is None else now
        index = int(now // self.window)
        elapsed = now / self.window - index
        key = int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=8).digest(), "little") or 1
        start = key % SLOTS
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            offset, current, previous = self._slot(key, start, index)
            weighted = previous * (1.0 - elapsed) + current
            if math.floor(weighted) + 1 > limit:
                SLOT.pack_into(self.map, offset, key, index, current, previous)
                return max(1, math.ceil(round((1.0 - elapsed) * self.window, 6)))
            SLOT.pack_into(self.map, offset, key, index, current + 1, previous)
            return 0
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def _slot(self, key: int, start: int, index: int) -> tuple[int, int, int]:
        """The slot of `key` (its counts rolled to window `index`), or a free or stale one, or the least used."""
        unpack = SLOT.unpack_from
        fallback: tuple[int, int] | None = None  # (offset, weight) of the least used live slot seen
        for probe in range(PROBES):
            offset = _HEADER_SIZE + SLOT.size * ((start + probe) % SLOTS)
            owner, window, current, previous = unpack(self.map, offset)
            if owner == key:
                if window == index:
                    return offset, current, previous
                return offset, 0, current if window == index - 1 else 0
            if owner == 0 or window < index - 1:  # free, or nothing in it counts any more
                return offset, 0, 0
            weight = current + previous
            if fallback is None or weight < fallback[1]:
                fallback = (offset, weight)
        assert fallback is not None
        return fallback[0], 0, 0
