"""Figures the hostile-client tests measure, collected by ``bench/hostile_bench.py``.

A test calls :func:`record` with what it measured; when ``IAN_ATTACK_REPORT`` names a file, one
JSON line is appended to it (otherwise nothing happens: the test's assertions are the check).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PeakSampler", "record"]

ENV = "IAN_ATTACK_REPORT"


def record(attack: str, **figures: Any) -> None:
    """Append ``{"attack": attack, **figures}`` to the report file, if one is configured."""
    target = os.environ.get(ENV)
    if not target:
        return
    with Path(target).open("a", encoding="utf-8") as out:
        out.write(json.dumps({"attack": attack, **figures}) + "\n")


class PeakSampler:
    """Samples ``read()`` (e.g. a node's RSS in KiB) every 50 ms in a thread while in use."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read
        self.before = read()
        self.peak = self.before
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.05):
            self.peak = max(self.peak, self._read())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self._read())
