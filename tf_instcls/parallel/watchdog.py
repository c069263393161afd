"""A progress watchdog: a run that stops making progress (a collective waiting on a
process that is stopped or unreachable hangs forever in TF) exits with a clear error.

The training loop, feature passes and checkpoint saves call :func:`beat`; a daemon
thread ends the process (exit code 75) when no beat came for ``timeout_s`` seconds.
Checkpoints already written are untouched: TF publishes a checkpoint only after all
of its files are complete.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from absl import logging

EXIT_CODE = 75  # EX_TEMPFAIL: restart the processes to resume
_active: Watchdog | None = None


def beat() -> None:
    """Records progress (no-op when no watchdog runs)."""
    if _active is not None:
        _active.last = time.monotonic()


class Watchdog:
    def __init__(self, timeout_s: float, describe=lambda: ""):
        self.timeout_s = float(timeout_s)
        self.describe = describe
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tf_instcls-watchdog",
                                        daemon=True)

    def __enter__(self):
        global _active
        _active = self
        self._thread.start()
        return self

    def __exit__(self, *exc):
        global _active
        self._stop.set()
        _active = None
        return False

    def _watch(self):
        while not self._stop.wait(min(5.0, self.timeout_s / 4)):
            idle = time.monotonic() - self.last
            if idle > self.timeout_s:
                message = (
                    f"no training progress for {idle:.0f} s (FaultConfig.step_timeout_s = "
                    f"{self.timeout_s:g}): another process of this run is probably dead, "
                    f"stopped or unreachable, and a collective is waiting for it. "
                    f"{self.describe()} Stopping (exit code {EXIT_CODE}); restart every "
                    "process with the same --model_dir to resume from the latest checkpoint.")
                logging.error(message)
                print(f"ERROR: {message}", file=sys.stderr, flush=True)
                os._exit(EXIT_CODE)
