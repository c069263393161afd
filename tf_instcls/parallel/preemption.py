"""Stopping a run on SIGTERM / SIGINT: a preemptible VM, a cluster's scheduler or Ctrl-C.

While a run is under :func:`handle_signals`, the first SIGTERM or SIGINT only records a
request: the training loop finishes the step in flight, every process of the run agrees
on the step to stop after (:func:`should_stop` is a collective in a multi-client run),
the checkpoint of that step is written, and the process exits with code 128 + the
signal's number (143 for SIGTERM, 130 for SIGINT). Long phases (the contrastive prior's
and the kNN monitor's feature passes, hardest-negative mining) check between blocks and
raise :class:`StopRequested`, so a signal does not wait for an hour of mining.

A grace period bounds all of it: if the process is still alive ``grace_period_s`` after
the signal (a save that does not finish in time), it exits at once with the same code.
A checkpoint is published only once all of its files are complete, so the previous one
then stays the latest and intact. A second signal exits at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from absl import logging

from tf_instcls.parallel import layouts
from tf_instcls.parallel.mesh import process_count

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """A stop was requested (a signal) and a long phase gave up part-way."""


class _State:
    def __init__(self):
        self.signum: int | None = None  # the signal received (None: none)
        self.grace_period_s = 30.0
        self.active = False
        self.timer: threading.Timer | None = None


_state = _State()


def exit_code(signum: int) -> int:
    """The exit code of a run stopped by signal ``signum``: 128 + its number."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _state.signum


def should_stop(mesh=None) -> bool:
    """Whether the run stops here (False outside :func:`handle_signals`). In a
    multi-client run (``mesh`` spanning several processes) this is a collective: every
    process must call it at the same point, and all get True as soon as any one of them
    received a signal."""
    if not _state.active:  # not inside a run (an evaluation tool, a test): never
        return False
    local = _state.signum is not None
    if mesh is None or process_count() == 1:
        return local
    return bool(layouts.max_over_processes([float(local)], mesh)[0] > 0)


def check(mesh=None) -> None:
    """Raises :class:`StopRequested` when :func:`should_stop` (a collective in a
    multi-client run: call it at the same point in every process)."""
    if should_stop(mesh):
        raise StopRequested(f"stop requested ({signal_name(agreed_signal())})")


def agreed_signal() -> int:
    """The signal to report for an agreed stop: this process's own, or SIGTERM when the
    request came from another process of the run."""
    return _state.signum if _state.signum is not None else int(signal.SIGTERM)


@contextlib.contextmanager
def handle_signals(grace_period_s: float = 30.0):
    """SIGTERM and SIGINT request a stop while the block runs (then the previous
    handlers come back). Outside the main thread signals cannot be caught; the block
    then runs without (a log line says so)."""
    if threading.current_thread() is not threading.main_thread():
        logging.info("not in the main thread: SIGTERM / SIGINT keep their handlers")
        yield
        return
    _state.signum = None
    _state.grace_period_s, _state.active = float(grace_period_s), True
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.active = False
        if _state.timer is not None:  # the run ended within its grace period
            _state.timer.cancel()
            _state.timer = None


def _on_signal(signum, frame):
    del frame
    if _state.signum is not None:  # a second signal: no more waiting
        print(f"{signal_name(signum)} again: exiting now (code {exit_code(signum)}); the "
              "latest complete checkpoint is the one to resume from", file=sys.stderr,
              flush=True)
        os._exit(exit_code(signum))
    _state.signum = signum
    print(f"{signal_name(signum)}: finishing the step in flight, then saving a checkpoint "
          f"(grace period {_state.grace_period_s:g} s)", file=sys.stderr, flush=True)
    _state.timer = threading.Timer(_state.grace_period_s, _grace_expired, args=(signum,))
    _state.timer.daemon = True
    _state.timer.start()


def _grace_expired(signum):
    if not _state.active:  # the run ended in time
        return
    print(f"the grace period of {_state.grace_period_s:g} s after {signal_name(signum)} "
          f"is over: exiting now (code {exit_code(signum)}); the latest complete "
          "checkpoint is the one to resume from", file=sys.stderr, flush=True)
    os._exit(exit_code(signum))
