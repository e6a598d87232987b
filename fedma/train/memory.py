"""The host memory a rank takes to load its backbones, measured while it loads.

ZeRO-3's promise is that no rank ever holds the whole frozen model; its partitions after the
load show the end state, not the way there (a loader that materialises everything and then
partitions ends in the same state). So the silo samples its own anonymous resident memory
(``RssAnon``: heap and tensors, not the page cache of memory-mapped weight files) during the
load and reports the peak above where it started, per rank, in its summary's ``zero`` report.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType

_STATUS = Path("/proc/self/status")


def rss_anon_bytes() -> int | None:
    """This process's RssAnon (Linux), or None where /proc does not say."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class LoadPeak:
    """``with LoadPeak() as peak: ...``; then ``peak.bytes`` is the highest RssAnon seen
    above the value at entry (sampled every ``interval`` seconds; None off Linux)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.start = rss_anon_bytes()
        self.high = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="fedma-load-peak", daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            now = rss_anon_bytes()
            if now is not None and self.high is not None and now > self.high:
                self.high = now
            time.sleep(self.interval)

    def __enter__(self) -> LoadPeak:
        self.start = self.high = rss_anon_bytes()
        if self.start is not None:
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        now = rss_anon_bytes()
        if now is not None and self.high is not None:
            self.high = max(self.high, now)

    @property
    def bytes(self) -> int | None:
        if self.start is None or self.high is None:
            return None
        return self.high - self.start
