"""A cohort's progress on stderr: cases done, failed and remaining with an ETA (a tqdm bar on a terminal, one
line per case in a log), the Dask dashboard's address and the model that serves the request."""
from __future__ import annotations

import sys
import time
from typing import Any


class CohortProgress:
    """Reports a cohort of ``total`` cases of which ``pending`` are to run (the others finished earlier)."""

    def __init__(self, total: int, pending: int, enabled: bool = True):
        self.total, self.pending, self.enabled = total, pending, enabled
        self.done = self.failed = 0
        self.start = time.monotonic()
        self.bar = None
        if enabled and pending < total:
            self._print(f"{total - pending} of {total} cases finished earlier: skipped")
        if enabled and not pending:
            self._print("nothing to run")

    def started(self, dashboard: str | None, client: Any) -> None:
        """The cluster is up: print where to watch it."""
        if not self.enabled:
            return
        workers = len(client.scheduler_info().get("workers", {}))
        self._print(f"Dask dashboard: {dashboard or 'not served (pip install bokeh)'}; "
                    f"scheduler {client.scheduler.address}, {workers} worker(s) now")
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.pending, unit="case", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")
            self._postfix()

    def model(self, name: str) -> None:
        if self.enabled:
            self._print(f"model: {name}")

    def case_done(self, record: dict) -> None:
        """One case finished (``ok``) or failed."""
        if record["status"] == "ok":
            self.done += 1
        else:
            self.failed += 1
        if not self.enabled:
            return
        if self.bar is not None:
            if record["status"] != "ok":
                self.bar.write(f"{record['case_id']}: failed: {record.get('error', '')}", file=sys.stderr)
            self._postfix()
            self.bar.update(1)
            return
        finished = self.done + self.failed
        left = self.pending - finished
        eta = (time.monotonic() - self.start) / finished * left
        outcome = "ok" if record["status"] == "ok" else f"failed: {record.get('error', '')}"
        self._print(f"{record['case_id']}: {outcome} | done {self.done}, failed {self.failed}, remaining {left}, "
                    f"ETA {eta:.0f} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.enabled and self.pending:
            self._print(f"done {self.done}, failed {self.failed}, remaining {self.pending - self.done - self.failed}"
                        f" of {self.pending} run ({time.monotonic() - self.start:.0f} s)")

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"done {self.done}, failed {self.failed}, "
                                 f"remaining {self.pending - self.done - self.failed}")

    @staticmethod
    def _print(message: str) -> None:
        print(message, file=sys.stderr, flush=True)
