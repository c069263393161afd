"""A wall-clock budget for a run: ``TrainConfig.time_budget_minutes``.

With a budget, ``TrainConfig.epochs`` is the most a run may train, and the run itself
chooses how many epochs it trains, from this machine's measured speed, so that it ends
within the budget. The plan sets where the learning rate's cosine reaches zero. It is
checkpointed (``planned_epochs`` and the segment's start step and lr), so a resumed run
follows it exactly until it next re-plans.

How: the first epoch of a process traces (it is slower and is not timed). After the
next ``TIMED_EPOCHS`` full epochs, at the start of the following one, the planner takes
their mean wall time (from epoch start to epoch start: the miner, the step, the epoch's
callbacks and checkpoint), less the kNN monitor's evaluations, which are counted apart
at their own measured cost and period. The time already spent counts from the run's
start (``run_pretraining``: building the state and the prior included). The plan is the
most epochs that fit; every process of a multi-client run plans from the slowest
process' figures, so all agree.

Re-plans: a shared 2-core machine's speed drifts (on one machine, one run's epochs went
from 4.4 to 5.4 s within ten minutes), so the planner plans again after every
``REPLAN_FRACTION`` of the planned epochs, from the epochs timed since its last plan,
until the last ``REPLAN_FRACTION`` of the run. In that last tenth the end may not move
past the plan made before it: every ``TIMED_EPOCHS`` epochs the planner checks, from the
mean of all the epochs timed in the last tenth, that the run still ends within the
budget, and shortens the plan if it does not, or restores it (up to that plan) if the
machine recovered, so a cut made on a noisy first pair of epochs is not final. (Machines
that slowed there put runs up to 64 s past a 28-minute budget: WORKSPACE.md, "The end of
a budget".) A plan that changes the end changes only
how fast the cosine's progress runs from where it stands to the new end
(``schedules.planned_cosine``): the learning rate stays continuous and the curve a
cosine in its progress. An unchanged end changes nothing. (A first version restarted a
cosine from the current rate at each re-plan; every restart starts flat, so after six
re-plans the rate at 65% of a run was 2.5 x a cosine's.)

The epochs before the first plan use ``TrainConfig.epochs`` as the schedule's length
(after a 1-epoch warm-up the learning rate at epoch 3 is within 1e-4 of the peak).
"""

from __future__ import annotations

import math
import time

TIMED_EPOCHS = 2  # full epochs timed (after a process' first) before the plan
REPLAN_FRACTION = 0.1  # re-plan after each tenth of the planned epochs, not in the last


def monitor_runs(first: int, end: int, every: int) -> int:
    """How many times the kNN monitor evaluates in epochs ``first .. end - 1`` of a run of
    ``end`` epochs: every ``every`` epochs and at the last epoch."""
    if every <= 0 or end <= first:
        return 0
    periodic = end // every - first // every
    return periodic + (0 if end % every == 0 else 1)


def plan_epochs(*, budget_s: float, elapsed_s: float, next_epoch: int, epoch_s: float,
                max_epochs: int, monitor_every: int = 0, monitor_s: float = 0.0) -> int:
    """The most epochs E (``next_epoch <= E <= max_epochs``) whose remaining epochs
    ``next_epoch .. E - 1`` fit the budget: ``elapsed_s + (E - next_epoch) * epoch_s``
    plus the monitor's evaluations in them (``monitor_runs``) at ``monitor_s`` each
    is at most ``budget_s``. ``next_epoch`` when not even one more epoch fits."""
    if epoch_s <= 0 or not math.isfinite(epoch_s):
        raise ValueError(f"epoch_s must be a positive time; got {epoch_s}")
    best = next_epoch
    for end in range(next_epoch + 1, max_epochs + 1):
        cost = elapsed_s + (end - next_epoch) * epoch_s
        cost += monitor_runs(next_epoch, end, monitor_every) * monitor_s
        if cost > budget_s:
            break
        best = end
    return best


class EpochPlanner:
    """Times a process' epochs and makes the plan and its re-plans (see the module
    docstring).

    ``agree(values) -> values``: the element-wise maximum over every process of the
    run (identity in a single-process run)."""

    def __init__(self, *, budget_s: float, started: float, max_epochs: int, agree,
                 monitor_every: int = 0, planned: int = 0):
        """``planned``: the checkpointed plan of a resumed run (0: none yet)."""
        self.budget_s, self.started, self.max_epochs = budget_s, started, max_epochs
        self.agree, self.monitor_every, self.planned = agree, monitor_every, planned
        self.walls: list[float] = []  # full epochs timed since the last plan (less the
        # monitor's time)
        self.late: list[float] = []  # every epoch timed in the plan's last tenth
        self.ceiling = 0  # the plan made before its last tenth (0: not there yet)
        self.monitor: list[float] = []  # the monitor's evaluations' seconds
        self._epoch_start: float | None = None
        self._skip_first = True

    def start_epoch(self, now: float | None = None) -> None:
        self._epoch_start = time.perf_counter() if now is None else now

    def end_epoch(self, *, full: bool, monitor_s: float = 0.0,
                  now: float | None = None) -> None:
        """An epoch ended: ``full`` = it ran every step (not a resumed partial one)."""
        now = time.perf_counter() if now is None else now
        if monitor_s:
            self.monitor.append(monitor_s)
        if self._epoch_start is None:
            return
        if self._skip_first or not full:  # the trace, or a resumed part of an epoch
            self._skip_first = False
            return
        self.walls.append(now - self._epoch_start - monitor_s)

    def ready(self, epoch: int) -> bool:
        """Whether to plan at the start of ``epoch``."""
        if not self.planned:
            return len(self.walls) >= TIMED_EPOCHS
        if self._late(epoch):  # the last tenth: a check that may not lengthen the plan
            return epoch < self.planned and len(self.walls) >= TIMED_EPOCHS
        return len(self.walls) >= max(TIMED_EPOCHS, math.ceil(REPLAN_FRACTION * self.planned))

    def _late(self, epoch: int) -> bool:
        return bool(self.planned) and epoch >= (1 - REPLAN_FRACTION) * self.planned

    def add_monitor_seconds(self, seconds: float) -> None:
        """An evaluation of the monitor outside an epoch (at initialisation)."""
        self.monitor.append(seconds)

    def plan(self, next_epoch: int, now: float | None = None) -> tuple[int, dict]:
        """(epochs, the figures it came from), agreed over processes; the epochs timed
        so far are used up (the next plan waits for new ones)."""
        now = time.perf_counter() if now is None else now
        recent, self.walls = self.walls, []
        late = self._late(next_epoch)
        if late:  # the mean of every epoch of the last tenth: steadier than the last two
            self.late += recent
            recent = self.late
            self.ceiling = self.ceiling or self.planned  # (a run stays in its last tenth)
        # the monitor's first evaluation traces: its later ones, once there are any
        evaluations = self.monitor[1:] or self.monitor
        mine = [now - self.started, sum(recent) / len(recent),
                sum(evaluations) / len(evaluations) if evaluations else 0.0]
        elapsed_s, epoch_s, monitor_s = (float(v) for v in self.agree(mine))
        epochs = plan_epochs(budget_s=self.budget_s, elapsed_s=elapsed_s,
                             next_epoch=next_epoch, epoch_s=epoch_s,
                             max_epochs=self.max_epochs, monitor_every=self.monitor_every,
                             monitor_s=monitor_s)
        if late:
            epochs = min(epochs, self.ceiling)
        figures = {"previous_epochs": self.planned, "timed_epochs": len(recent), "late": late,
                   "budget_s": self.budget_s, "elapsed_s": round(elapsed_s, 2),
                   "epoch_s": round(epoch_s, 3), "monitor_s": round(monitor_s, 3),
                   "monitor_every": self.monitor_every, "next_epoch": next_epoch,
                   "max_epochs": self.max_epochs, "planned_epochs": epochs,
                   "expected_end_s": round(elapsed_s + (epochs - next_epoch) * epoch_s
                                           + monitor_runs(next_epoch, epochs,
                                                          self.monitor_every) * monitor_s, 1)}
        self.planned = epochs
        return epochs, figures
