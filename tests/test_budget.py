"""A wall-clock budget (TrainConfig.time_budget_minutes): the plan's arithmetic against
brute force, the planner's timing rules on a given clock, the agreement over the mesh,
and real runs: the plan fixes the schedule's length, is checkpointed, a resumed run
follows it exactly, and a spent budget ends the run with its plan saved."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import parallel, pretrain
from tf_instcls.parallel import layouts
from tf_instcls.training import budget, checkpoints, loop
from tf_instcls.training.schedules import planned_cosine, planned_progress


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
    # in the last tenth of the run: a check every TIMED_EPOCHS epochs, none at its end
    late = budget.EpochPlanner(budget_s=1e9, started=0.0, max_epochs=500,
                               agree=lambda values: values, planned=100)
    late.walls = [1.0]
    assert not late.ready(90) and not late.ready(95)
    late.walls = [1.0] * budget.TIMED_EPOCHS
    assert late.ready(90) and late.ready(99) and not late.ready(100)


def _late_planner(walls_before, planned=100, budget_s=1000.0):
    """A planner at epoch 90 of a 100-epoch plan made for 10 s epochs (900 s spent), after
    ``walls_before`` (epochs 90 onwards)."""
    planner = budget.EpochPlanner(budget_s=budget_s, started=0.0, max_epochs=500,
                                  agree=lambda values: values, planned=planned)
    planner._skip_first = False
    clock = 900.0
    for wall in walls_before:
        planner.start_epoch(now=clock)
        clock += wall
        planner.end_epoch(full=True, now=clock)
    return planner, clock


def test_in_the_last_tenth_a_slower_machine_shortens_the_plan_and_a_faster_one_does_not():
    # slower: 2 epochs of 15 s -> 930 s spent at epoch 92; 8 more at 15 s would end at
    # 1,050 s, past the 1,000 s budget; 4 more (990 s) fit, 5 (1,005 s) do not
    slow, clock = _late_planner([15.0, 15.0])
    assert slow.ready(92)
    epochs, figures = slow.plan(92, now=clock)
    assert figures["late"] and figures["epoch_s"] == 15.0 and epochs == 96
    assert figures["expected_end_s"] == 990.0 and slow.planned == 96
    # the next check uses every epoch of the last tenth: (15 + 15 + 5 + 5) / 4 = 10 s;
    # 940 s spent, 6 more fit: the cut is undone, up to the plan before the last tenth
    for wall in (5.0, 5.0):
        slow.start_epoch(now=clock)
        clock += wall
        slow.end_epoch(full=True, now=clock)
    assert slow.ready(94)  # 94 >= 0.9 x 96: still the last tenth
    epochs, figures = slow.plan(94, now=clock)
    assert figures["epoch_s"] == 10.0 and figures["timed_epochs"] == 4
    assert epochs == 100 and figures["previous_epochs"] == 96
    for wall in (1.0, 1.0):  # much faster: 942 s spent, but never past the plan of 100
        slow.start_epoch(now=clock)
        clock += wall
        slow.end_epoch(full=True, now=clock)
    epochs, figures = slow.plan(96, now=clock)
    assert figures["late"] and epochs == 100
    # faster: 2 epochs of 5 s, 910 s spent; 8 more fit easily, but the plan stays 100
    fast, clock = _late_planner([5.0, 5.0])
    epochs, figures = fast.plan(92, now=clock)
    assert figures["late"] and epochs == 100
    # before the last tenth (epoch 100 of 120) a re-plan may lengthen the plan as before:
    # 950 s spent, 210 more epochs of 5 s fit 2,000 s
    early, clock = _late_planner([5.0] * 10, planned=120, budget_s=2000.0)
    epochs, figures = early.plan(100, now=clock)
    assert not figures["late"] and epochs == 310


def test_a_plan_cut_to_the_current_epoch_in_the_last_tenth_ends_the_run():
    # 2 epochs of 45 s: 990 s spent at epoch 92, no epoch more fits the 1,000 s budget
    planner, clock = _late_planner([45.0, 45.0])
    epochs, figures = planner.plan(92, now=clock)
    assert figures["late"] and epochs == 92


def test_planned_cosine_follows_the_plan_continuously_against_float64():
    peak, warm, default = 0.1, 10, 1000

    def reference(step, planned, start, done):
        if planned and step >= start:
            p = done + (1 - done) * min(1.0, (step - start) / max(planned - start, 1))
        elif step < warm:
            return peak * (step + 1) / warm
        else:
            p = min(1.0, (step - warm) / (default - warm))
        return 0.5 * peak * (1 + np.cos(np.pi * p))

    def lr(step, planned, start, done):
        return float(planned_cosine(step, peak_lr=peak, warmup_steps=warm,
                                    default_total_steps=default, planned_steps=planned,
                                    start_step=start, start_progress=done))

    def progress(step, planned, start, done):
        return float(planned_progress(step, warmup_steps=warm, default_total_steps=default,
                                      planned_steps=planned, start_step=start,
                                      start_progress=done))

    for step in (0, 5, 9, 10, 30, 500, 999, 1200):  # no plan: warm-up + cosine to 1000
        assert lr(step, 0, 0, 0.0) == pytest.approx(reference(step, 0, 0, 0.0), abs=1e-7)
    # planned at step 30 to end at 400, re-planned at 200 to end at 300
    first = progress(30, 0, 0, 0.0)
    assert first == pytest.approx(20 / 990)
    second = progress(200, 400, 30, first)
    assert second == pytest.approx(first + (1 - first) * 170 / 370)
    for step in (0, 9, 29, 30, 31, 199):
        assert lr(step, 400, 30, first) == pytest.approx(reference(step, 400, 30, first),
                                                         abs=1e-7)
    for step in (200, 250, 299, 300, 350):
        assert lr(step, 300, 200, second) == pytest.approx(
            reference(step, 300, 200, second), abs=1e-7)
    # continuous at each plan, 0 at the end
    assert lr(30, 400, 30, first) == pytest.approx(lr(30, 0, 0, 0.0), abs=1e-7)
    assert lr(200, 300, 200, second) == pytest.approx(lr(200, 400, 30, first), abs=1e-7)
    assert lr(300, 300, 200, second) == 0.0


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
        method=loop.FullConfig(num_hard_negatives=8),
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
    # before the plan the cosine ran to 7 epochs; from the plan (step 3 x steps) its
    # progress runs on from where it stood (2 of 6 epochs after the warm-up) to 1 at 5
    for record in metrics:
        step = int(record["step"]) - 1  # the epoch's last step
        p = (max(step - steps, 0) / (6 * steps) if record["epoch"] < 3 else
             2 / 6 + (4 / 6) * (step - 3 * steps) / (2 * steps))
        # (epoch 0's last step ends the warm-up at the peak: p = 0)
        expected = 0.5 * 0.48 * 256 / 4096 * (1 + np.cos(np.pi * p))
        assert record["lr"] == pytest.approx(expected, rel=1e-5, abs=1e-9)
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
def test_a_replan_moves_the_end_of_the_cosine_from_where_it_stands(tmp_path, monkeypatch):
    """Planned 6 epochs at epoch 3, re-planned to 7 at epoch 5 (forced, as above): the
    cosine's progress is continuous at each plan and reaches 1 at the new end."""
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
    # progress: 2/6 at the plan (step 3 x steps), to 1 at 6 epochs; at the re-plan (step
    # 5 x steps) 2/6 + 4/6 x 2/3 = 7/9, to 1 at 7 epochs
    for record in metrics:
        step, epoch = int(record["step"]) - 1, record["epoch"]
        p = (max(step - steps, 0) / (6 * steps) if epoch < 3 else
             2 / 6 + (4 / 6) * (step - 3 * steps) / (3 * steps) if epoch < 5 else
             7 / 9 + (2 / 9) * (step - 5 * steps) / (2 * steps))
        expected = 0.5 * 0.48 * 256 / 4096 * (1 + np.cos(np.pi * p))
        assert record["lr"] == pytest.approx(expected, rel=1e-5, abs=1e-9)
    second_lr = 0.5 * 0.48 * 256 / 4096 * (1 + np.cos(np.pi * 7 / 9))
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


@pytest.mark.slow
@pytest.mark.parametrize("every", [1, 5])
def test_a_late_cut_ends_the_run_on_time_with_its_last_epoch_saved(tmp_path, monkeypatch,
                                                                    capsys, caplog, every):
    """Planned 10 epochs (forced), the check at epoch 9, in the last tenth, cuts the plan
    to 9: the run ends after epoch 8 with one line, no warning, and a checkpoint of its
    last step and its new plan, whether that step was saved before the cut (a checkpoint
    every epoch: saved again, with the plan) or not (every 5 epochs: saved once); a rerun
    has nothing to do."""
    answers = iter([10, 10, 10, 9])
    monkeypatch.setattr(budget, "plan_epochs", lambda **kwargs: next(answers))
    configs = _configs(tmp_path, budget_minutes=60, epochs=12, every=0)
    configs["train"] = dataclasses.replace(configs["train"], checkpoint_every_epochs=every)
    mesh = parallel.build_mesh(1)
    pretrain.run_pretraining(str(tmp_path), mesh=mesh, **configs)
    plans = _records(tmp_path / "stages.jsonl", "plan")
    assert [(p["next_epoch"], p["previous_epochs"], p["planned_epochs"], p["late"])
            for p in plans] == [(3, 0, 10, False), (5, 10, 10, False), (7, 10, 10, False),
                                (9, 10, 9, True)]
    metrics = _records(tmp_path / "metrics.jsonl", None)
    assert [r["epoch"] for r in metrics] == list(range(9))
    steps = int(metrics[-1]["step"]) // 9
    saves = [r["step"] for r in _records(tmp_path / "stages.jsonl", "checkpoint")]
    assert saves == ([steps * e for e in range(1, 10)] + [9 * steps] if every == 1
                     else [5 * steps, 9 * steps])
    assert tf.train.latest_checkpoint(f"{tmp_path}/checkpoints").endswith(f"-{9 * steps}")
    assert _planned(tmp_path) == 9
    assert "ends after 9 of 10 planned epochs" in capsys.readouterr().out
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")
                and "time budget" in r.getMessage()]
    logs = pretrain.run_pretraining(str(tmp_path), mesh=mesh, **configs)  # nothing to do
    assert len(_records(tmp_path / "metrics.jsonl", None)) == 9 and "loss" not in logs
