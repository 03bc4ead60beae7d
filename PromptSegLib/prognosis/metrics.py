"""Survival metrics (own code): Harrell's C-index and Antolini's time-dependent C-index."""
from __future__ import annotations

import numpy as np

from PromptSegLib.errors import PromptSegError
from PromptSegLib.prognosis.records import check_endpoints


class UndefinedMetricError(PromptSegError):
    """A metric is undefined for the data given (e.g. the C-index when every patient is censored)."""


def _comparable(times: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) where i had the event first: T_i < T_j, or T_i == T_j with j censored (as lifelines)."""
    t_i, t_j = times[:, None], times[None, :]
    e_i, e_j = events[:, None].astype(bool), events[None, :].astype(bool)
    mask = e_i & ((t_i < t_j) | ((t_i == t_j) & ~e_j))
    return np.nonzero(mask)


def _validate(times, events, *arrays):
    times = np.asarray(times, dtype=float).ravel()
    events = np.asarray(events).ravel().astype(int)
    for a in arrays:
        if len(a) != len(times):
            raise ValueError(f"{len(times)} times but {len(a)} predictions")
    check_endpoints(times, events)
    if events.sum() == 0:
        raise UndefinedMetricError("C-index undefined: every patient is censored (no event, so no comparable pair)")
    return times, events


def harrell_c_index(times, events, risks) -> float:
    """Harrell's C: among comparable pairs, the fraction where the earlier event has the higher risk (ties 1/2).

    Raises:
        UndefinedMetricError: all patients censored, or no comparable pair.
    """
    risks = np.asarray(risks, dtype=float).ravel()
    times, events = _validate(times, events, risks)
    i, j = _comparable(times, events)
    if i.size == 0:
        raise UndefinedMetricError("C-index undefined: no comparable pair (every event tied with later events)")
    concordant = (risks[i] > risks[j]).sum() + 0.5 * (risks[i] == risks[j]).sum()
    return float(concordant / i.size)


def antolini_c_index(times, events, curve_times, survival) -> float:
    """Antolini's time-dependent C: comparable pairs where S_i(T_i) < S_j(T_i) (ties 1/2).

    Args:
        curve_times: ``(K,)`` increasing times at which ``survival`` ``(N, K)`` is given (step function:
            S(t) = survival at the last curve time <= t, 1 before the first).
    """
    survival = np.asarray(survival, dtype=float)
    times, events = _validate(times, events, survival)
    i, j = _comparable(times, events)
    if i.size == 0:
        raise UndefinedMetricError("C-index undefined: no comparable pair")
    step = np.searchsorted(np.asarray(curve_times, dtype=float), times, side="right") - 1
    padded = np.concatenate([np.ones((len(times), 1)), survival], axis=1)
    at = step[i] + 1
    s_i, s_j = padded[i, at], padded[j, at]
    return float(((s_i < s_j).sum() + 0.5 * (s_i == s_j).sum()) / i.size)
