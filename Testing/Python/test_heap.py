"""Freed memory reused within a run instead of fresh pages from the kernel (glibc), and given back after."""
from __future__ import annotations

import os
import resource

import pytest
import torch

from PromptSegLib import heap
from PromptSegLib.models.network import DuPLUSNet, NetworkConfig

pytestmark = pytest.mark.skipif(heap._LIBC is None, reason="glibc only")


def page_faults(work) -> int:
    """Minor page faults (fresh pages touched) while ``work`` runs."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    work()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_windows_of_the_network_reuse_freed_pages_and_give_them_back_after():
    """The default network's backbone on 96^3 windows (activations of 56-113 MB, above glibc's mmap threshold):
    by default every window faults in fresh pages; inside ``reused_memory`` and ``from_heap`` the later windows
    take the freed ones again. Leaving gives the memory back."""
    torch.manual_seed(0)
    network = DuPLUSNet(NetworkConfig()).eval()
    window, context = torch.randn(1, 1, 96, 96, 96), torch.zeros(384)

    def one_window() -> None:
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
    assert by_default > 100_000  # over 400 MB of fresh pages a window
    assert reused < by_default / 5
    assert held > resident + (200 << 20)  # the freed blocks stay in the process while inside
    assert resident_bytes() < held - (200 << 20)  # and go back on leaving
    assert page_faults(one_window) > by_default / 2  # the defaults are back
