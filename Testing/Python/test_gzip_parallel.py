"""The parallel gzip writer: one valid gzip member whatever the threads, the parts in order."""
from __future__ import annotations

import gzip
import io
import zlib

import numpy as np
import pytest

from PromptSegLib.export.gzip_parallel import write_gzip


@pytest.mark.parametrize("workers", [1, 3])
def test_parts_come_back_in_order_from_any_reader(workers):
    rng = np.random.default_rng(0)
    # labels like a segmentation's (runs of equal bytes) and noise, of uneven sizes, so parts finish out of order
    parts = [np.repeat(rng.integers(0, 4, n // 50 + 1, dtype=np.uint8), 50)[:n] for n in (300_000, 17, 0, 90_001)]
    parts += [rng.integers(0, 256, 200_000, dtype=np.uint8), np.zeros((3, 5, 7), np.uint8)]
    out = io.BytesIO()
    length = write_gzip(out, [lambda p=p: p for p in parts], level=1, workers=workers)
    data = b"".join(p.tobytes() for p in parts)
    assert length == len(data)
    assert gzip.decompress(out.getvalue()) == data
    assert zlib.decompress(out.getvalue(), 16 + zlib.MAX_WBITS) == data  # one member: zlib reads all of it
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert decompressor.decompress(out.getvalue()) == data and decompressor.eof and not decompressor.unused_data


def test_a_failing_part_stops_the_write():
    def broken() -> np.ndarray:
        raise MemoryError("no room for the part")

    made = []

    def part() -> np.ndarray:
        made.append(1)
        return np.zeros(10, np.uint8)

    with pytest.raises(MemoryError, match="no room"):
        write_gzip(io.BytesIO(), [part, broken] + [part] * 50, level=1, workers=1)
    assert len(made) < 10  # the parts after it were not all made
