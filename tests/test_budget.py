"""A wall-clock budget (TrainConfig.time_budget_minutes): the plan's arithmetic against
brute force, the planner's timing rules on a given clock, the agreement over the mesh,
and real runs: the plan fixes the schedule's length, is checkpointed, a resumed run
follows it exactly, and a spent budget ends the run with its plan saved."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import parallel, pretrain
from tf_instcls.parallel import layouts
from tf_instcls.training import budget, checkpoints, loop
from tf_instcls.training.schedules import planned_cosine, warmup_cosine


def _brute_monitor_runs(first, end, every):
    return sum(1 for e in range(first, end) if every and ((e + 1) % every == 0 or e == end - 1))


@pytest.mark.parametrize("every", [0, 1, 3, 10])
def test_monitor_runs_counts_every_period_and_the_last_epoch(every):
    for first in range(0, 25):
        for end in range(first, 40):
            assert budget.monitor_runs(first, end, every) == _brute_monitor_runs(first, end,
                                                                                  every)


def test_plan_is_the_most_epochs_that_fit_the_budget():
    rng = np.random.default_rng(0)
    for _ in range(300):
        budget_s = float(rng.uniform(10, 500))
        elapsed = float(rng.uniform(0, 200))
        epoch_s = float(rng.uniform(0.5, 20))
        next_epoch, max_epochs = int(rng.integers(1, 6)), int(rng.integers(6, 80))
        every, monitor_s = int(rng.integers(0, 6)), float(rng.uniform(0, 5))
        fits = [end for end in range(next_epoch, max_epochs + 1)
                if elapsed + (end - next_epoch) * epoch_s
                + _brute_monitor_runs(next_epoch, end, every) * monitor_s <= budget_s]
        expected = max(fits) if fits else next_epoch
        assert budget.plan_epochs(budget_s=budget_s, elapsed_s=elapsed, next_epoch=next_epoch,
                                  epoch_s=epoch_s, max_epochs=max_epochs, monitor_every=every,
                                  monitor_s=monitor_s) == expected
    assert budget.plan_epochs(budget_s=10, elapsed_s=11, next_epoch=3, epoch_s=1,
                              max_epochs=9) == 3  # spent: no more epochs
    assert budget.plan_epochs(budget_s=1e9, elapsed_s=0, next_epoch=3, epoch_s=1,
                              max_epochs=9) == 9  # capped by TrainConfig.epochs
    with pytest.raises(ValueError, match="epoch_s must be a positive time"):
        budget.plan_epochs(budget_s=10, elapsed_s=0, next_epoch=1, epoch_s=0, max_epochs=5)


def test_planner_skips_the_traced_and_partial_epochs_and_counts_the_monitor_apart():
    planner = budget.EpochPlanner(budget_s=99.0, started=0.0, max_epochs=50,
                                  agree=lambda values: values, monitor_every=4)
    planner.add_monitor_seconds(9.0)  # at initialisation (traces: left out once others exist)
    clock = 5.0
    for wall, full, monitor in [(30.0, True, 0.0),  # the first epoch: traces, not timed
                                (1.0, False, 0.0),  # a resumed part of an epoch
                                (2.5, True, 0.5),  # 2.0 + a monitor evaluation of 0.5
                                (2.0, True, 0.0)]:
        assert not planner.ready(0)
        planner.start_epoch(now=clock)
        clock += wall
        planner.end_epoch(full=full, monitor_s=monitor, now=clock)
    assert planner.ready(4) and planner.walls == [2.0, 2.0]
    epochs, figures = planner.plan(4, now=clock)
    assert figures["elapsed_s"] == clock and figures["epoch_s"] == 2.0
    assert figures["monitor_s"] == 0.5  # the later evaluations, not the traced first
    assert epochs == budget.plan_epochs(budget_s=99.0, elapsed_s=clock, next_epoch=4,
                                        epoch_s=2.0, max_epochs=50, monitor_every=4,
                                        monitor_s=0.5)
    # 40.5 s spent + 27 epochs x 2 s + 7 evaluations x 0.5 s = 98 s; one more: 100 s
    assert epochs == 4 + 27 and figures["expected_end_s"] == 98.0
    assert planner.walls == [] and not planner.ready(5)  # the next plan needs new epochs


def test_replans_come_after_each_tenth_of_the_plan_from_the_epochs_since_the_last():
    planner = budget.EpochPlanner(budget_s=1000.0, started=0.0, max_epochs=500,
                                  agree=lambda values: values, planned=100)  # resumed
    clock, epoch = 0.0, 10
    for wall in [50.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]:  # the first traces
        assert not planner.ready(epoch)  # 10 epochs (a tenth of 100) not yet timed
        planner.start_epoch(now=clock)
        clock += wall
        planner.end_epoch(full=True, now=clock)
        epoch += 1
    planner.start_epoch(now=clock)
    clock += 6.0  # slower now
    planner.end_epoch(full=True, now=clock)
    assert planner.ready(21)
    epochs, figures = planner.plan(21, now=clock)
    # after the trace: 9 epochs of 4 s and one of 6 s, 4.2 s an epoch; 92 s spent
    assert figures["epoch_s"] == 4.2 and figures["elapsed_s"] == 92.0
    assert figures["timed_epochs"] == 10 and figures["previous_epochs"] == 100
    assert epochs == budget.plan_epochs(budget_s=1000.0, elapsed_s=clock, next_epoch=21,
                                        epoch_s=figures["epoch_s"], max_epochs=500)
    assert planner.planned == epochs
    # no re-plan in the last tenth of the run, however many epochs were timed
    late = budget.EpochPlanner(budget_s=1e9, started=0.0, max_epochs=500,
                               agree=lambda values: values, planned=100)
    late.walls = [1.0] * 50
    assert late.ready(89) and not late.ready(90)


def test_planned_cosine_follows_the_plan_continuously_against_float64():
    peak, warm, default = 0.1, 10, 1000

    def reference(step, planned, start, start_lr):
        if planned and step >= start:
            return start_lr * 0.5 * (1 + np.cos(np.pi * min(1.0, (step - start)
                                                            / max(planned - start, 1))))
        if step < warm:
            return peak * (step + 1) / warm
        return 0.5 * peak * (1 + np.cos(np.pi * min(1.0, (step - warm) / (default - warm))))

    def lr(step, planned, start, start_lr):
        return float(planned_cosine(step, peak_lr=peak, warmup_steps=warm,
                                    default_total_steps=default, planned_steps=planned,
                                    start_step=start, start_lr=start_lr))

    for step in (0, 5, 9, 10, 30, 500, 999, 1200):  # no plan: warm-up + cosine to 1000
        assert lr(step, 0, 0, 0.0) == pytest.approx(reference(step, 0, 0, 0.0), abs=1e-7)
    start = 30
    start_lr = lr(start, 0, 0, 0.0)
    for step in (0, 9, 29, 30, 31, 200, 399, 400, 450):  # planned to end at step 400
        assert lr(step, 400, start, start_lr) == pytest.approx(
            reference(step, 400, start, start_lr), abs=1e-7)
    assert lr(start, 400, start, start_lr) == pytest.approx(lr(start - 1, 0, 0, 0.0),
                                                            abs=2e-5)  # no jump
    assert lr(400, 400, start, start_lr) == 0.0


def test_the_slowest_process_figures_are_agreed_on():
    seen = []
    planner = budget.EpochPlanner(budget_s=60.0, started=0.0, max_epochs=100,
                                  agree=lambda values: seen.append(values) or [20.0, 3.0, 0.0])
    for now in (0.0, 1.0, 2.0, 3.0):
        planner.start_epoch(now=now)
        planner.end_epoch(full=True, now=now + 1.0)
    epochs, figures = planner.plan(3, now=4.0)
    assert seen == [[4.0, 1.0, 0.0]]  # this process' figures go to the agreement
    assert (figures["elapsed_s"], figures["epoch_s"], epochs) == (20.0, 3.0, 3 + 13)


@pytest.mark.parametrize("devices", [1, 4])
def test_max_over_processes_on_the_mesh(devices):
    mesh = parallel.build_mesh(devices)
    values = [3.5, -1.0, 1e4]
    np.testing.assert_array_equal(layouts.max_over_processes(values, mesh), values)


def _configs(tmp_path, *, budget_minutes, epochs=7, max_steps=0, every=2):
    return dict(
        data=loop.DataConfig(image_size=16),
        model=loop.ModelConfig(backbone_width=4, head_hidden_dim=16, embedding_dim=16),
        optim=loop.OptimConfig(warmup_epochs=1),
        train=loop.TrainConfig(epochs=epochs, batch_size=256, verbose=0, deterministic=True,
                               time_budget_minutes=budget_minutes, max_steps=max_steps),
        method=loop.MethodConfig(num_hard_negatives=8),
        monitor=loop.MonitorConfig(k=10, every_epochs=every),
    )


def _records(path, name):
    with open(path) as f:
        return [r for r in map(json.loads, f) if name is None or r.get("stage") == name]


def _planned(model_dir):
    latest = tf.train.latest_checkpoint(f"{model_dir}/checkpoints")
    return int(tf.train.load_checkpoint(latest).get_tensor(checkpoints.PLAN_KEY))


@pytest.mark.slow
def test_a_budgeted_run_plans_once_fixes_its_schedule_and_resumes_on_its_plan(
        tmp_path, monkeypatch):
    """The plan (forced to 5 of at most 7 epochs, so that it does not depend on this
    machine's speed) sets the cosine's length, is checkpointed, and a run stopped after
    it and resumed ends exactly where the uninterrupted run ends."""
    real_plan, calls = budget.plan_epochs, []

    def plan_five(**kwargs):
        calls.append(kwargs)
        real_plan(**kwargs)  # the real arithmetic runs on the real figures
        return 5

    monkeypatch.setattr(budget, "plan_epochs", plan_five)
    mesh = parallel.build_mesh(2)
    whole = tmp_path / "whole"
    pretrain.run_pretraining(str(whole), mesh=mesh, **_configs(tmp_path, budget_minutes=60))
    assert len(calls) == 1 and calls[0]["next_epoch"] == 3 and calls[0]["max_epochs"] == 7
    assert calls[0]["monitor_every"] == 2 and calls[0]["monitor_s"] > 0
    metrics = _records(whole / "metrics.jsonl", None)
    assert [r["epoch"] for r in metrics] == [0, 1, 2, 3, 4]
    steps = int(metrics[-1]["step"]) // 5
    # before the plan the cosine ran to 7 epochs; from the plan (step 3 x steps) a
    # cosine from the lr there to 0 at 5 epochs
    peak = 0.48 * 256 / 4096
    start = 3 * steps
    start_lr = float(warmup_cosine(start, peak_lr=peak, total_steps=7 * steps,
                                   warmup_steps=steps))
    for record in metrics:
        step = int(record["step"]) - 1  # the epoch's last step
        if record["epoch"] < 3:
            expected = warmup_cosine(step, peak_lr=peak, total_steps=7 * steps,
                                     warmup_steps=steps)
        else:
            expected = start_lr * 0.5 * (1 + np.cos(np.pi * (step - start) / (5 * steps
                                                                              - start)))
        assert record["lr"] == pytest.approx(float(expected), rel=1e-5, abs=1e-9)
    assert "knn_top1" in metrics[-1] and "knn_seconds" in metrics[-1]  # the last epoch's
    plan = _records(whole / "stages.jsonl", "plan")
    assert len(plan) == 1 and plan[0]["planned_epochs"] == 5
    assert _planned(whole) == 5

    # stopped in epoch 4 (after the plan), then resumed: the same end, bit for bit
    part = tmp_path / "part"
    pretrain.run_pretraining(str(part), mesh=mesh,
                             **_configs(tmp_path, budget_minutes=60, max_steps=4 * steps - 2))
    assert _planned(part) == 5
    pretrain.run_pretraining(str(part), mesh=mesh, **_configs(tmp_path, budget_minutes=60))
    assert len(calls) == 2  # the resumed run did not plan again
    resumed = _records(part / "metrics.jsonl", None)
    assert resumed[-1]["epoch"] == 4 and resumed[-1]["step"] == 5 * steps
    for name in ("checkpoints",):
        a = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(whole / name)))
        b = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(part / name)))
        for key in (checkpoints.W_KEY, checkpoints.STEP_KEY, checkpoints.PLAN_KEY):
            np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key))

    # the plan belongs to the run: no budget now is refused, by name
    with pytest.raises(ValueError, match="with a time budget"):
        pretrain.run_pretraining(str(whole), mesh=mesh, **_configs(tmp_path, budget_minutes=0))


@pytest.mark.slow
def test_a_spent_budget_ends_the_run_with_its_plan_saved(tmp_path, caplog):
    mesh = parallel.build_mesh(1)
    configs = _configs(tmp_path, budget_minutes=1e-4, every=0)
    pretrain.run_pretraining(str(tmp_path), mesh=mesh, **configs)
    metrics = _records(tmp_path / "metrics.jsonl", None)
    assert [r["epoch"] for r in metrics] == [0, 1, 2]  # one traced, two timed
    assert _planned(tmp_path) == 3
    assert any("the run ends here" in r.getMessage() for r in caplog.records)
    logs = pretrain.run_pretraining(str(tmp_path), mesh=mesh, **configs)  # nothing to do
    assert len(_records(tmp_path / "metrics.jsonl", None)) == 3 and "loss" not in logs


def test_bad_budgets_are_refused_by_name():
    with pytest.raises(ValueError, match="time_budget_minutes must be >= 0"):
        loop.validate_configs(train=loop.TrainConfig(time_budget_minutes=-1.0))
    with pytest.raises(ValueError, match="cannot plan a DataConfig.train_size_schedule"):
        loop.validate_configs(data=loop.DataConfig(train_size_schedule=((0, 16), (2, 24))),
                              train=loop.TrainConfig(epochs=4, time_budget_minutes=5.0))


@pytest.mark.slow
def test_a_replan_starts_a_new_cosine_from_the_current_learning_rate(tmp_path, monkeypatch):
    """Planned 6 epochs at epoch 3, re-planned to 7 at epoch 5 (forced, as above): the
    lr is continuous at the re-plan and reaches 0 at the new end."""
    answers = iter([6, 7])
    monkeypatch.setattr(budget, "plan_epochs", lambda **kwargs: next(answers))
    pretrain.run_pretraining(str(tmp_path), mesh=parallel.build_mesh(1),
                             **_configs(tmp_path, budget_minutes=60, every=0))
    plans = _records(tmp_path / "stages.jsonl", "plan")
    assert [(p["next_epoch"], p["previous_epochs"], p["planned_epochs"]) for p in plans] == [
        (3, 0, 6), (5, 6, 7)]
    metrics = _records(tmp_path / "metrics.jsonl", None)
    assert [r["epoch"] for r in metrics] == list(range(7))
    steps = int(metrics[-1]["step"]) // 7
    peak = 0.48 * 256 / 4096

    def segment(step, start, start_lr, end):
        return start_lr * 0.5 * (1 + np.cos(np.pi * (step - start) / (end - start)))

    first_lr = float(warmup_cosine(3 * steps, peak_lr=peak, total_steps=7 * steps,
                                   warmup_steps=steps))
    second_lr = segment(5 * steps, 3 * steps, first_lr, 6 * steps)  # where the re-plan is
    for record in metrics:
        step, epoch = int(record["step"]) - 1, record["epoch"]
        expected = (warmup_cosine(step, peak_lr=peak, total_steps=7 * steps,
                                  warmup_steps=steps) if epoch < 3 else
                    segment(step, 3 * steps, first_lr, 6 * steps) if epoch < 5 else
                    segment(step, 5 * steps, second_lr, 7 * steps))
        assert record["lr"] == pytest.approx(float(expected), rel=1e-5, abs=1e-9)
    assert metrics[-1]["lr"] < 0.03 * second_lr  # the last step: 1 step before the end


@pytest.mark.slow
def test_a_budget_that_holds_every_epoch_keeps_the_fixed_epochs_schedule(tmp_path):
    """When TrainConfig.epochs fit, the plan leaves the schedule as it was: the lr of
    every epoch is that of a run of that many epochs without a budget."""
    for name, minutes in (("budget", 600), ("fixed", 0)):
        pretrain.run_pretraining(str(tmp_path / name), mesh=parallel.build_mesh(1),
                                 **_configs(tmp_path, budget_minutes=minutes, epochs=5,
                                            every=0))
    plans = _records(tmp_path / "budget" / "stages.jsonl", "plan")
    assert [(p["next_epoch"], p["planned_epochs"]) for p in plans] == [(3, 5)]
    budgeted = [r["lr"] for r in _records(tmp_path / "budget" / "metrics.jsonl", None)]
    fixed = [r["lr"] for r in _records(tmp_path / "fixed" / "metrics.jsonl", None)]
    assert len(budgeted) == 5 and budgeted == fixed  # to the bit, epoch by epoch
