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
machine recovered, so a cut made on a noisy first pair of epochs is not final. (Replayed
on the records of 30 budgeted runs whose machines slowed there, this check ended all
within +1 s of the budget; without it, up to 64 s past it.) A plan that changes the end changes only
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

import numpy as np
import tensorflow as tf
from absl import logging

from tf_instcls import parallel
from tf_instcls.parallel import layouts
from tf_instcls.training import stages
from tf_instcls.training.checkpoints import PLAN_VARIABLES
from tf_instcls.training.schedules import planned_cosine, planned_progress

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


class TimeBudget:
    """A time-budgeted run's plan (``TrainConfig.time_budget_minutes``): its checkpointed
    variables, the learning rate that follows it, and the planner that makes and
    re-makes it. The loop calls ``start`` once, ``start_epoch`` / ``end_epoch`` around
    every epoch and ``plan`` at an epoch's start when ``ready``."""

    def __init__(self, mesh, *, minutes: float, max_epochs: int, monitor_every: int,
                 steps_per_epoch: int, warmup_steps: int, model_dir: str):
        self.mesh, self.budget_s, self.max_epochs = mesh, 60.0 * minutes, max_epochs
        self.monitor_every, self.steps_per_epoch = monitor_every, steps_per_epoch
        self.warmup_steps, self.model_dir = warmup_steps, model_dir
        # (planned epochs (0: not yet), the step the plan was made at, the cosine's
        # progress there)
        self.planned = layouts.replicated_variable(0, mesh, PLAN_VARIABLES[0], tf.int64)
        self.start_step = layouts.replicated_variable(0, mesh, PLAN_VARIABLES[1], tf.int64)
        self.start_progress = layouts.replicated_variable(0.0, mesh, PLAN_VARIABLES[2],
                                                          tf.float32)
        self.planner: EpochPlanner | None = None

    @property
    def plan_variables(self) -> tuple:
        return self.planned, self.start_step, self.start_progress

    def variables(self) -> dict:
        """{checkpoint name: variable}."""
        return dict(zip(PLAN_VARIABLES, self.plan_variables))

    def planned_epochs(self) -> int:
        """The plan's epochs (0: no plan yet, e.g. a fresh run)."""
        return int(parallel.to_numpy(self.planned))

    def learning_rate_fn(self, peak_lr: float):
        """``lr(step)``: warm-up, then the cosine whose end the plan sets (read from the
        plan's variables inside the step)."""
        spe = self.steps_per_epoch
        return lambda step: planned_cosine(
            step, peak_lr=peak_lr, warmup_steps=self.warmup_steps,
            default_total_steps=self.max_epochs * spe,
            planned_steps=self.planned * spe, start_step=self.start_step,
            start_progress=self.start_progress)

    def start(self, started: float, monitor_seconds: float | None = None) -> None:
        """The run's loop begins; ``started``: the run's start (perf_counter), from which
        the budget counts; ``monitor_seconds``: the monitor's evaluation at
        initialisation, if it ran."""
        self.planner = EpochPlanner(
            budget_s=self.budget_s, started=started, max_epochs=self.max_epochs,
            monitor_every=self.monitor_every,
            agree=lambda values: layouts.max_over_processes(values, self.mesh),
            planned=self.planned_epochs())
        if monitor_seconds is not None:
            self.planner.add_monitor_seconds(monitor_seconds)

    def ready(self, epoch: int) -> bool:
        return self.planner.ready(epoch)

    def start_epoch(self) -> None:
        self.planner.start_epoch()

    def end_epoch(self, *, full: bool, monitor_s: float) -> None:
        self.planner.end_epoch(full=full, monitor_s=monitor_s)

    def plan(self, epoch: int, step: int) -> int | None:
        """The plan (or re-plan) at the start of ``epoch`` (global step ``step``); every
        decision is recorded in stages.jsonl. When it changes the run's end, the
        cosine's progress runs on from where it stands to 1 at the new end
        (``schedules.planned_cosine``) and the new length is returned (None: unchanged;
        a length <= ``epoch`` ends the run here)."""
        epochs, figures = self.planner.plan(epoch)
        previous = figures["previous_epochs"]
        figures["changed"] = epochs != previous
        stages.record(self.model_dir, "plan", figures["elapsed_s"], **figures)
        if not figures["changed"]:
            return None
        spe = self.steps_per_epoch
        if not previous and epochs == self.max_epochs:  # the most fits: TrainConfig.
            start, progress = self.warmup_steps, 0.0  # epochs' cosine as it was, to the bit
        else:
            start = max(step, self.warmup_steps)  # a plan in the warm-up starts after it
            progress = float(planned_progress(  # the same float32 arithmetic as the step's
                start, warmup_steps=self.warmup_steps,
                default_total_steps=self.max_epochs * spe, planned_steps=previous * spe,
                start_step=int(parallel.to_numpy(self.start_step)),
                start_progress=float(parallel.to_numpy(self.start_progress))))
        for variable, value in zip(self.plan_variables, (np.int64(epochs), np.int64(start),
                                                         np.float32(progress))):
            variable.assign(layouts.pack_sharded(value, variable.layout))
        _announce(epochs, epoch, previous, figures)
        return epochs


def _announce(epochs: int, epoch: int, previous: int, figures: dict) -> None:
    """One console line for a plan that changed the run's end."""
    minutes = figures["budget_s"] / 60
    if epochs > epoch:
        what = (f"{epochs} epochs planned" if not previous
                else f"re-planned {previous} -> {epochs} epochs"
                + ("" if not figures["late"] else " (the machine slowed in the run's last tenth)"
                   if epochs < previous else " (the machine recovered in the run's last tenth)"))
        print(f"time budget {minutes:g} min: {what} ({figures['epoch_s']:.1f} s an epoch, "
              f"{figures['elapsed_s']:.0f} s spent; expected to end "
              f"{figures['expected_end_s'] / 60:.1f} min after the start)", flush=True)
    elif figures["late"]:  # the learning rate has nearly decayed: the run ends on time
        print(f"time budget {minutes:g} min: the machine slowed in the run's last tenth; it "
              f"ends after {epoch} of {previous} planned epochs ({figures['elapsed_s']:.0f} s "
              f"spent, {figures['epoch_s']:.1f} s an epoch)", flush=True)
    else:
        logging.warning("time budget %g min: spent after %d epochs (%.0f s; %.1f s an "
                        "epoch); the run ends here, before its learning rate decayed",
                        minutes, epoch, figures["elapsed_s"], figures["epoch_s"])
