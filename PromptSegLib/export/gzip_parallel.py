"""One gzip stream compressed by several threads, the way ``pigz`` does it.

Each part of the data is deflated on its own (no back-references into the previous part) and ends on a byte
boundary (``Z_SYNC_FLUSH``, no final block), so the parts' raw deflate data laid end to end form one valid
deflate stream; one empty final block, the CRC-32 of all the data (the parts' CRCs combined) and its length close
the gzip member. Any gzip reader reads it as one member, the same bytes as a single-threaded ``zlib`` stream
gives (the compressed bytes differ slightly: a few bytes more per part).

The deflating is ISA-L's (``isal``), which writes standard deflate data several times faster than zlib at its
fastest level (measured for :data:`~.segfile.SEG_NRRD_COMPRESSION`). ISA-L and NumPy release the GIL while they
work, so the threads run in parallel. Used for ``.seg.nrrd`` voxels, where building each part (placing segments in
their layers, the layer fastest) and deflating it took all of a write's time on one core.
"""
from __future__ import annotations

import struct
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Callable, Iterable

import numpy as np
from isal import isal_zlib

from PromptSegLib.cpus import usable_cores

Part = Callable[[], np.ndarray]
"""Makes one part of the data: a C-contiguous array whose bytes are the part."""

_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""gzip member header: deflate, no flags, no time stamp, no extra flags, unknown operating system."""


def _deflated(part: Part, level: int) -> tuple[bytes, int, int]:
    """(raw deflate data ending on a byte boundary, CRC-32, length) of one part."""
    data = memoryview(part()).cast("B")  # no bytes copy
    compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(isal_zlib.Z_SYNC_FLUSH), isal_zlib.crc32(data), len(data)


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
            crc, length = isal_zlib.crc32_combine(crc, part_crc, part_length), length + part_length

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
    out.write(isal_zlib.compressobj(level, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS).flush())  # empty final block
    out.write(struct.pack("<II", crc, length & 0xFFFFFFFF))
    return length
