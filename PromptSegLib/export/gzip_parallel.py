"""One gzip stream compressed by several threads, the way ``pigz`` does it.

Each part of the data is deflated on its own (no back-references into the previous part) and ends on a byte
boundary (``Z_SYNC_FLUSH``, no final block), so the parts' raw deflate data laid end to end form one valid
deflate stream; one empty final block, the CRC-32 of all the data (the parts' CRCs combined) and its length close
the gzip member. Any gzip reader reads it as one member, the same bytes as a single-threaded ``zlib`` stream
gives (the compressed bytes differ slightly: a few bytes more per part).

zlib and NumPy release the GIL while they work, so the threads run in parallel. Used for ``.seg.nrrd`` voxels,
where building each part (placing segments in layers, interleaving layers) and deflating it took all of a
write's time on one core.
"""
from __future__ import annotations

import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import BinaryIO, Callable, Iterable

import numpy as np

from PromptSegLib.cpus import usable_cores

Part = Callable[[], np.ndarray]
"""Makes one part of the data: a C-contiguous array whose bytes are the part."""

_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""gzip member header: deflate, no flags, no time stamp, no extra flags, unknown operating system."""
_POLYNOMIAL = 0xEDB88320
"""CRC-32's polynomial, bit-reversed (as zlib)."""


def _times(matrix: list[int], vector: int) -> int:
    """``matrix`` (32 columns as ints) times ``vector`` over GF(2)."""
    total, column = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[column]
        vector >>= 1
        column += 1
    return total


def _product(a: list[int], b: list[int]) -> list[int]:
    """The GF(2) matrix of applying ``b``, then ``a``."""
    return [_times(a, column) for column in b]


@lru_cache(maxsize=8)
def _zero_bytes(length: int) -> list[int]:
    """The GF(2) matrix that carries a CRC-32 through ``length`` zero bytes (``length`` >= 1): a product of
    the one-zero-byte operator's repeated squares. Cached: a stream's parts are mostly of one length."""
    power = [_POLYNOMIAL] + [1 << n for n in range(31)]  # one zero bit
    for _ in range(3):
        power = _product(power, power)  # two, four, then eight zero bits
    result = None
    while True:
        if length & 1:
            result = power if result is None else _product(power, result)
        length >>= 1
        if not length:
            return result
        power = _product(power, power)


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc32(A)``, ``crc32(B)`` and ``len(B)`` in bytes, as zlib's
    ``crc32_combine`` (which Python's ``zlib`` does not expose): ``crc1`` carried through ``length2`` zero bytes,
    plus ``crc2``."""
    return crc1 if length2 <= 0 else _times(_zero_bytes(length2), crc1) ^ crc2


def _deflated(part: Part, level: int) -> tuple[bytes, int, int]:
    """(raw deflate data ending on a byte boundary, CRC-32, length) of one part."""
    data = memoryview(part()).cast("B")  # no bytes copy
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH), zlib.crc32(data), len(data)


def default_workers() -> int:
    """Threads for compressing: the CPUs this process may use, at most 4."""
    return min(4, usable_cores())


def write_gzip(out: BinaryIO, parts: Iterable[Part], level: int, workers: int | None = None) -> int:
    """Write one gzip member holding the parts' bytes in order; ``workers`` threads (default
    :func:`default_workers`) make and deflate parts at once, so at most that many parts are in memory
    uncompressed. Returns the number of bytes before compression."""
    threads = workers or default_workers()
    crc, length = 0, 0
    pending: deque[Future] = deque()

    def drain(keep: int) -> None:
        nonlocal crc, length
        while len(pending) > keep:
            data, part_crc, part_length = pending.popleft().result()
            out.write(data)
            crc, length = crc32_combine(crc, part_crc, part_length), length + part_length

    out.write(_GZIP_HEADER)
    with ThreadPoolExecutor(threads) as pool:
        try:
            for part in parts:  # taken one at a time: a few parts ahead of the writing, not all
                pending.append(pool.submit(_deflated, part, level))
                drain(2 * threads)
            drain(0)
        except BaseException:
            for future in pending:  # parts not started yet are not made
                future.cancel()
            raise
    out.write(zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS).flush())  # the empty final block
    out.write(struct.pack("<II", crc, length & 0xFFFFFFFF))
    return length
