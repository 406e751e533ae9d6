"""A benchmark's progress lines: what it is timing now and how long it has run, so that
no script is silent for minutes (on stderr, away from the tables on stdout)."""

import sys
import time


class Progress:
    """``progress(text)`` prints "[  12.3 s] text" to ``stream`` (None: sys.stderr at
    the call) and flushes; ``clock`` (seconds) is injectable for tests."""

    def __init__(self, stream=None, clock=time.perf_counter):
        self._stream, self._clock = stream, clock
        self._start = clock()

    def __call__(self, text):
        print(f"[{self._clock() - self._start:7.1f} s] {text}",
              file=self._stream or sys.stderr, flush=True)
