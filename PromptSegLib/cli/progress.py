"""The command line's progress display: a tqdm bar on a terminal, one line per tenth in a log or a pipe."""
from __future__ import annotations

import sys
from typing import Callable


def progress_bar(enabled: bool) -> tuple[Callable[[float, str], None], Callable[[], None]]:
    """A tqdm bar driven by ``(fraction, message)`` callbacks, or a no-op."""
    if not enabled:
        return (lambda fraction, message: None), (lambda: None)
    if not sys.stderr.isatty():  # a log or a pipe: one line per tenth, no carriage returns
        shown = [-1]

        def line(fraction: float, message: str) -> None:
            tenth = int(fraction * 10)
            if tenth > shown[0]:
                shown[0] = tenth
                print(f"{fraction:4.0%} {message}", file=sys.stderr, flush=True)

        return line, (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = int(round(fraction * 100))
        bar.set_postfix_str(message, refresh=True)

    return update, bar.close
