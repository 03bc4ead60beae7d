"""Freed memory reused within a run instead of fresh pages from the kernel (glibc), and given back after."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from PromptSegLib import heap

pytestmark = pytest.mark.skipif(heap._LIBC is None, reason="glibc only")

MEASURE = r'''
import json, os, resource
import torch
from PromptSegLib import heap
from PromptSegLib.models.network import DuPLUSNet, NetworkConfig

def page_faults(work):
    """Minor page faults (fresh pages touched) while ``work`` runs."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    work()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def resident_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

torch.manual_seed(0)
torch.set_num_threads(2)
network = DuPLUSNet(NetworkConfig()).eval()
window, context = torch.randn(1, 1, 96, 96, 96), torch.zeros(384)

def one_window():
    with torch.inference_mode():
        network.backbone(window, "CT", context)

one_window()
by_default = page_faults(one_window)
resident = resident_bytes()
with heap.reused_memory():
    with heap.from_heap():
        one_window()
    with heap.from_heap(), heap.from_heap():  # nested: the setting holds until the outermost leaves
        reused = min(page_faults(one_window) for _ in range(2))
    held = resident_bytes()
print(json.dumps({"by_default": by_default, "resident": resident, "reused": reused, "held": held,
                  "after": resident_bytes(), "after_faults": page_faults(one_window)}))
'''


def test_windows_of_the_network_reuse_freed_pages_and_give_them_back_after():
    """The default network's backbone on 96^3 windows (activations of 56-113 MB, above glibc's mmap threshold):
    by default every window faults in fresh pages; inside ``reused_memory`` and ``from_heap`` the later windows
    take the freed ones again. Leaving gives the memory back. Measured in a fresh Python: what earlier tests left
    in this process's heap (free blocks between live ones, glibc's own mmap threshold) would serve some of a
    window's blocks without faults and blur the counts (once 180063 faults after leaving against 404776 before)."""
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run([sys.executable, "-c", MEASURE], cwd=root, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert run.returncode == 0, run.stderr
    m = json.loads(run.stdout.strip().splitlines()[-1])
    assert m["by_default"] > 100_000  # over 400 MB of fresh pages a window
    assert m["reused"] < m["by_default"] / 5
    assert m["held"] > m["resident"] + (200 << 20)  # the freed blocks stay in the process while inside
    assert m["after"] < m["held"] - (200 << 20)  # and go back on leaving
    assert m["after_faults"] > m["by_default"] / 2  # the defaults are back
