"""The CPU cores this process may use."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the system has one, else every core), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
