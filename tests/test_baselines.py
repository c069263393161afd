"""Issue 6: sampled softmax and NPID (NCE, memory bank) against float64 numpy, on
plain tensors and on sharded / replicated meshes with padded N."""

import numpy as np
import pytest
import tensorflow as tf

from tf_instcls import parallel
from tf_instcls.losses.baselines import (
    npid_nce_loss,
    sampled_instance_classification_loss,
    update_memory_bank,
)

from helpers import assert_close

N, D, B = 13, 6, 8


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _setup(devices, layout, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, D))
    ids = rng.permutation(N)[:B].astype(np.int32)  # unique, as in a batch
    if devices is None:
        w_np = rng.normal(size=(N, D))
        return None, tf.Variable(w_np.astype(np.float32)), w_np, x, ids
    mesh = parallel.build_mesh(devices)
    clf = parallel.InstanceClassifier(N, D, mesh=mesh, layout=layout, seed=seed)
    w_np = parallel.to_numpy(clf.class_weights)[:N].astype(np.float64)
    return mesh, clf.class_weights, w_np, x, ids


def _pack(mesh, value, dtype):
    value = np.asarray(value, dtype)
    if mesh is None:
        return tf.constant(value)
    return parallel.pack_sharded(value, parallel.replicated_layout(mesh, value.ndim))


def _sampled_reference(x, ids, w, sampled, t):
    """Loss and gradients of the softmax restricted to the set, in float64."""
    members = sorted(set(ids.tolist()) | set(sampled.tolist()))
    xu, wu = _unit(x), _unit(w)
    losses, gx, gw = [], np.zeros_like(x), np.zeros_like(w)
    for b in range(len(x)):
        z = wu[members] @ xu[b] / t
        p = np.exp(z - z.max())
        p /= p.sum()
        target = members.index(ids[b])
        losses.append(-np.log(p[target]))
        dz = p.copy()
        dz[target] -= 1
        dz /= t
        # through the normalisations
        dxu = wu[members].T @ dz
        nx = np.linalg.norm(x[b])
        gx[b] = (dxu - xu[b] * (xu[b] @ dxu)) / nx
        for k, c in enumerate(members):
            dwu = dz[k] * xu[b]
            nw = np.linalg.norm(w[c])
            gw[c] += (dwu - wu[c] * (wu[c] @ dwu)) / nw
    return np.array(losses), gx, gw


def _nce_z(state):
    """(log Z, the epoch it was estimated at): NPID's own checkpointed state."""
    variables = state.method.variables()
    return (float(parallel.to_numpy(variables["npid_log_z"])),
            float(parallel.to_numpy(variables["npid_z_epoch"])))


@pytest.mark.parametrize("devices, layout", [(None, None), (1, "sharded"), (2, "sharded"),
                                             (4, "sharded"), (4, "replicated")])
def test_sampled_softmax_equals_the_full_softmax_restricted_to_the_set(devices, layout):
    mesh, w_var, w_np, x, ids = _setup(devices, layout)
    sampled = np.array([2, 5, 5, 11, ids[0]], np.int32)  # duplicates and an overlap
    t = 0.15

    @tf.function
    def run(xd, idd, sd):
        with tf.GradientTape() as tape:
            tape.watch(xd)
            loss, hit = sampled_instance_classification_loss(
                xd, idd, w_var, sd, temperature=t, valid_classes=N)
            total = tf.reduce_sum(loss)
        gx, gw = tape.gradient(total, [xd, w_var])
        return loss, hit, gx, gw

    loss, hit, gx, gw = run(_pack(mesh, x, np.float32), _pack(mesh, ids, np.int32),
                            _pack(mesh, sampled, np.int32))
    ref_loss, ref_gx, ref_gw = _sampled_reference(x, ids, w_np, sampled, t)
    to = parallel.to_numpy
    assert_close(to(loss), ref_loss, name="loss")
    assert_close(to(gx), ref_gx, name="grad_x")
    gw = to(gw)
    assert_close(gw[:N], ref_gw, name="grad_w")
    untouched = sorted(set(range(N)) - set(ids.tolist()) - set(sampled.tolist()))
    assert untouched and not gw[untouched].any() and not gw[N:].any()
    # hit: own class has the largest cosine within the set
    members = sorted(set(ids.tolist()) | set(sampled.tolist()))
    cos = _unit(x) @ _unit(w_np)[members].T
    expected = [members[int(np.argmax(row))] == i for row, i in zip(cos, ids)]
    assert to(hit).tolist() == expected


def _nce_reference(x, ids, bank, noise, t, log_z, n, proximal):
    xu, vu = _unit(x), _unit(bank)
    m = len(noise)
    c = m / n
    losses = []
    for b in range(len(x)):
        p = np.exp(vu @ xu[b] / t - log_z)
        h = p / (p + c)
        loss = -np.log(h[ids[b]]) - sum(np.log(1 - h[j]) for j in noise)
        loss += proximal * np.sum((xu[b] - vu[ids[b]]) ** 2)
        losses.append(loss)
    exps = [np.exp(vu[j] @ xu[b] / t) for b in range(len(x)) for j in noise]
    return np.array(losses), np.log(np.mean(exps) * n)


@pytest.mark.parametrize("devices, layout", [(None, None), (1, "sharded"), (2, "sharded"),
                                             (4, "sharded"), (4, "replicated")])
@pytest.mark.parametrize("proximal", [0.0, 30.0])
def test_nce_loss_matches_numpy(devices, layout, proximal):
    mesh, bank_var, bank_np, x, ids = _setup(devices, layout, seed=1)
    noise = np.random.default_rng(5).integers(0, N, 20).astype(np.int32)
    t, log_z = 0.07, 4.2

    @tf.function
    def run(xd, idd, nd):
        with tf.GradientTape() as tape:
            tape.watch(xd)
            loss, estimate, _ = npid_nce_loss(xd, idd, bank_var, nd, log_z=log_z,
                                              temperature=t, valid_classes=N,
                                              proximal=proximal)
            total = tf.reduce_sum(loss)
        gx, gbank = tape.gradient(total, [xd, bank_var])
        return loss, estimate, gx, gbank is None

    loss, estimate, gx, no_bank_grad = run(_pack(mesh, x, np.float32), _pack(mesh, ids, np.int32),
                                      _pack(mesh, noise, np.int32))
    ref_loss, ref_log_z = _nce_reference(x, ids, bank_np, noise, t, log_z, N, proximal)
    assert_close(parallel.to_numpy(loss), ref_loss, name="loss")
    assert abs(float(parallel.to_numpy(estimate)) - ref_log_z) < 1e-4
    assert no_bank_grad  # the bank is not trained by gradient
    assert np.isfinite(parallel.to_numpy(gx)).all()

    @tf.function
    def first_step(xd, idd, nd, now):  # the step's flag: this batch's own estimate of Z
        return npid_nce_loss(xd, idd, bank_var, nd, log_z=tf.constant(log_z),
                             estimate_now=now, temperature=t, valid_classes=N,
                             proximal=proximal)[0]

    args = (_pack(mesh, x, np.float32), _pack(mesh, ids, np.int32), _pack(mesh, noise, np.int32))
    own_z, _ = _nce_reference(x, ids, bank_np, noise, t, ref_log_z, N, proximal)
    assert_close(parallel.to_numpy(first_step(*args, _pack(mesh, True, np.bool_))), own_z,
                 name="loss with the batch's Z")
    assert_close(parallel.to_numpy(first_step(*args, _pack(mesh, False, np.bool_))), ref_loss,
                 name="loss with the given Z")


def test_nce_with_the_batch_z_has_a_bounded_gradient_where_a_stale_z_explodes():
    """Why npid_z_estimate = 'step' (self-normalised NCE) cannot blow up: with Z the
    batch's own estimate, sum_b sum_j sigma(a_bj) <= sum_b sum_j exp(a_bj) = B, so the
    mean loss's gradient summed over the batch is at most 2 / t. A Z estimated once
    against a random bank (NPID's code; our 'first') is far too small once the bank
    holds features close to the batch's: then every noise sample pushes at 1 / t."""
    rng = np.random.default_rng(5)
    n, d, b, m, t = 400, 16, 32, 256, 0.07
    centre = _unit(rng.normal(size=d))
    # a filled bank and a batch of features all near one direction (cosine ~ 0.9)
    bank = _unit(centre + 0.45 * rng.normal(size=(n, d)) / np.sqrt(d))
    x = tf.constant(_unit(centre + 0.45 * rng.normal(size=(b, d)) / np.sqrt(d)), tf.float32)
    ids = tf.constant(rng.permutation(n)[:b], tf.int32)
    noise = tf.constant(rng.integers(0, n, m), tf.int32)
    random_bank = tf.constant(_unit(rng.normal(size=(n, d))), tf.float32)
    _, stale_log_z, _ = npid_nce_loss(x, ids, random_bank, noise, temperature=t)

    def grad_sum(log_z):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss, _, _ = npid_nce_loss(x, ids, tf.constant(bank, tf.float32), noise,
                                       log_z=log_z, temperature=t)
            mean = tf.reduce_mean(loss)
        return float(tf.reduce_sum(tf.norm(tape.gradient(mean, x), axis=1)))

    own, stale = grad_sum(None), grad_sum(stale_log_z)
    assert own <= 2 / t
    assert stale > 10 * (2 / t)  # every one of the m noise samples pushes at ~1 / t


@pytest.mark.parametrize("devices, layout", [(None, None), (1, "sharded"), (4, "sharded"),
                                             (2, "sharded"), (4, "replicated")])
def test_memory_bank_update_is_exact_on_a_sharded_bank(devices, layout):
    mesh, bank_var, bank_np, _, ids = _setup(devices, layout, seed=2)
    f = np.random.default_rng(3).normal(size=(B, D))
    padded_before = parallel.to_numpy(bank_var)[N:] if mesh is not None else None

    @tf.function
    def run(idd, fd):
        update_memory_bank(bank_var, idd, fd, momentum=0.5)

    run(_pack(mesh, ids, np.int32), _pack(mesh, f, np.float32))
    expected = bank_np.copy()
    for i, row in zip(ids, _unit(f)):
        expected[i] = _unit(0.5 * bank_np[i] + 0.5 * row)
    got = parallel.to_numpy(bank_var)
    np.testing.assert_allclose(got[:N], expected, rtol=1e-5, atol=1e-6)
    if padded_before is not None:
        np.testing.assert_array_equal(got[N:], padded_before)
    if mesh is not None and layout == "sharded":
        assert bank_var.layout.sharding_specs[0] != "unsharded"


@pytest.mark.slow
def test_npid_and_sampled_train_resume_and_keep_the_bank_sharded(tmp_path):
    from tf_instcls import pretrain
    from tf_instcls.training import loop

    mesh = parallel.build_mesh(2)
    base = dict(data=loop.DataConfig(image_size=16),
                optim=loop.OptimConfig(warmup_epochs=0, base_learning_rate=0.03),
                classifier=loop.ClassifierConfig(init_mode="gaussian"),
                monitor=loop.MonitorConfig(k=10))
    train = loop.TrainConfig(epochs=1, batch_size=256, verbose=0)
    npid = dict(model=loop.ModelConfig(backbone_width=4, embedding_dim=16, use_head=False),
                method=loop.NPIDConfig(noise=64, z_estimate="epoch", temperature=0.15))
    logs = pretrain.run_pretraining(str(tmp_path / "npid"), **base, **npid, train=train,
                                    mesh=mesh)
    assert np.isfinite(logs["loss"]) and logs["knn_top1"] > 20
    state = loop.build_state(str(tmp_path / "npid"), **base, **npid, train=train, mesh=mesh)
    bank = state.classifier.class_weights
    assert not state.optimizer.has_slot(bank)  # the bank is not an optimised variable
    # NCE's Z is part of the checkpoint: estimated (finite, > log N) at epoch 0
    log_z, z_epoch = _nce_z(state)
    assert z_epoch == 0 and np.isfinite(log_z) and log_z > np.log(1528)
    assert bank.layout.sharding_specs[0] != "unsharded"
    norms = np.linalg.norm(parallel.to_numpy(bank)[:1528], axis=1)
    visited = np.isclose(norms, 1.0, atol=1e-4).sum()
    assert visited >= 5 * 256  # 5 steps of 256 instances were written by the memory rule
    again = loop.TrainConfig(**{**train.__dict__, "epochs": 2})
    logs = pretrain.run_pretraining(str(tmp_path / "npid"), **base, **npid, train=again,
                                    mesh=mesh)
    assert logs["step"] == 10 and np.isfinite(logs["loss"])
    state = loop.build_state(str(tmp_path / "npid"), **base, **npid, train=again, mesh=mesh)
    new_log_z, z_epoch = _nce_z(state)
    assert z_epoch == 1 and new_log_z != log_z  # "epoch": re-estimated in epoch 1

    sampled = dict(model=loop.ModelConfig(backbone_width=4, embedding_dim=16,
                                          head_hidden_dim=16),
                   method=loop.SampledConfig(num_sampled=128))
    logs = pretrain.run_pretraining(str(tmp_path / "sampled"), **base, **sampled, train=train,
                                    mesh=mesh)
    assert np.isfinite(logs["loss"]) and logs["loss"] < np.log(256 * 2 + 128) + 1


def _tiny_ablation_cmd(work_dir, grid, only, seeds, *bindings):
    """run_ablation.py on digits, 1 epoch of a tiny network on 2 virtual devices."""
    import os
    import sys

    from helpers import ROOT

    tiny = ("DataConfig.image_size = 16", "ModelConfig.backbone_width = 4",
            "ModelConfig.head_hidden_dim = 16", *bindings)
    return [sys.executable, os.path.join(ROOT, "benchmarks", "run_ablation.py"),
            f"--grid={grid}", f"--work_dir={work_dir}",
            f"--gin_file={os.path.join(ROOT, 'gin', 'digits.gin')}", "--dataset=digits",
            "--epochs=1", "--batch_size=128", "--virtual_devices=2", f"--only={only}",
            f"--seeds={seeds}", *[f"--gin_bindings={b}" for b in tiny]]


@pytest.mark.slow
def test_run_ablation_writes_tables_and_does_not_rerun_finished_runs(tmp_path):
    import json
    import subprocess

    from helpers import subprocess_env

    cmd = _tiny_ablation_cmd(tmp_path, "table2", "no_head,no_prior", "0,1",
                             "MonitorConfig.k = 20")
    first = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.load(open(tmp_path / "ablation_table2.json"))
    assert [r["name"] for r in results] == ["no_head", "no_prior"]
    assert all(0 < r["knn_top1"] <= 100 and r["paper"] for r in results)
    for r in results:  # one training per seed, each in its own model_dir, seed bound
        assert [s["seed"] for s in r["per_seed"]] == [0, 1]
        assert (tmp_path / r["name"] / "seed1" / "config.gin").exists()
        assert "TrainConfig.seed = 1" in (tmp_path / r["name"] / "seed1" / "config.gin").read_text()
        tops = [s["knn_top1"] for s in r["per_seed"]]
        assert abs(r["knn_top1"] - np.mean(tops)) < 1e-9
        assert abs(r["knn_top1_std"] - np.std(tops, ddof=1)) < 1e-9
        assert r["vs_reference"] == "-"  # the reference (full_prior_smoothing) was not run
    losses = [s["final_loss"] for s in results[0]["per_seed"]]
    assert losses[0] != losses[1]  # the seeds really differ
    md = (tmp_path / "ablation_table2.md").read_text()
    assert "| no_head | no MLP head" in md and "58.60" in md and " +- " in md
    second = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0 and second.stdout.count("done before: skipped") == 4


def test_run_ablation_calls_an_effect_only_beyond_the_seed_spread():
    import importlib
    import os

    ablation = importlib.import_module("run_ablation")  # benchmarks/, on the tests' path
    ref = {"knn_top1": 50.0, "knn_top1_std": 1.0}
    assert ablation.effect(ref, ref) == "reference"
    assert ablation.effect({"knn_top1": 52.5, "knn_top1_std": 2.0}, ref) == "+2.50 (effect)"
    assert ablation.effect({"knn_top1": 48.5, "knn_top1_std": 2.0}, ref) == "-1.50 (within spread)"
    assert "no call" in ablation.effect({"knn_top1": 60.0, "knn_top1_std": None}, ref)
    assert ablation.spread([1.0, 2.0, None, 3.0]) == (2.0, 1.0)
    assert ablation.spread([4.0]) == (4.0, None)
    names = [r.name for r in ablation.grid("baselines")]
    assert names[0] == "full_prior_smoothing" and {"npid", "npid_nce", "simclr"} <= set(names)
    runs = {r.name: r for r in ablation.grid("baselines")}
    for name in ("npid", "npid_nce", "simclr"):  # each method's own gin recipe, layered
        assert len(runs[name].gin_files) == 1 and os.path.exists(runs[name].gin_files[0])
    assert runs["npid_nce"].bindings == ["NPIDConfig.noise = 400"]  # < N of 4k images
    # rows are the shipped gin/ablations files, not strings repeating them
    for name, gin in (("no_head", "no_head"), ("no_prior", "no_prior"),
                      ("no_smoothing", "no_smoothing"), ("sampled_1024", "sampled")):
        assert runs[name].bindings == [] and runs[name].gin_files == ablation.ablation(gin)
    for which in ("baselines", "table2", "table3", "table5"):
        assert all(os.path.exists(f) for r in ablation.grid(which) for f in r.gin_files)
    table4 = ablation.grid("table4", ["2", "5"])
    assert [(r.name, r.reference, r.epochs) for r in table4][:2] == [
        ("gaussian_2ep", "gaussian_2ep", 2), ("prior_running_bn_2ep", "gaussian_2ep", 2)]


@pytest.mark.slow
def test_npid_nce_trains_on_one_device_with_the_default_step_estimate(tmp_path):
    """The default Z ('step', self-normalised) on a 1-device mesh (the memory update
    once failed there): finite NCE loss below its start, Z finite and checkpointed."""
    import json

    from tf_instcls import pretrain
    from tf_instcls.training import loop

    configs = dict(data=loop.DataConfig(image_size=16),
                   model=loop.ModelConfig(backbone_width=4, embedding_dim=16, use_head=False),
                   method=loop.NPIDConfig(noise=64, temperature=0.07),
                   classifier=loop.ClassifierConfig(init_mode="gaussian"),
                   monitor=loop.MonitorConfig(k=10),
                   optim=loop.OptimConfig(warmup_epochs=0, base_learning_rate=0.03))
    assert configs["method"].z_estimate == "step"
    train = loop.TrainConfig(epochs=1, batch_size=128, verbose=0, log_steps=True)
    mesh = parallel.build_mesh(1)
    logs = pretrain.run_pretraining(str(tmp_path), **configs, train=train, mesh=mesh)
    steps = [json.loads(line)["loss"] for line in open(tmp_path / "steps.jsonl")]
    # the loss rises while the bank fills with the first epoch's (similar) features, as
    # in the CIFAR probes (13 -> 14 in epoch 1, then down to 6.4 by epoch 8), but stays
    # finite and moderate ('first' reached hundreds there)
    assert np.isfinite(steps).all() and max(steps) < 30
    assert 0 <= logs["knn_top1"] <= 100
    state = loop.build_state(str(tmp_path), **configs, train=train, mesh=mesh)
    log_z, z_epoch = _nce_z(state)
    assert np.isfinite(log_z) and z_epoch == 0


def test_the_paper_grid_is_the_fixed_protocol():
    """Every row holds out split 0, Table 2 adds one component per row, Table 4 compares
    at equal epochs, and SimCLR's four candidates run on split 1, the best backbone kNN
    (the first on a tie) going to split 0."""
    import importlib
    import os

    ablation = importlib.import_module("run_ablation")
    runs = {r.name: r for r in ablation.paper_grid(["SimCLRConfig.temperature = 0.2"])}
    assert all(r.bindings[0] == "DataConfig.holdout_seed = 0" for r in runs.values())
    chain = ["linear_head", "mlp", "mlp_prior", "recipe"]
    assert [runs[n].reference for n in chain] == ["linear_head", *chain[:-1]]
    assert all(runs[n].linear for n in chain) and not runs["npid_nce"].linear
    assert [os.path.basename(f) for f in runs["linear_head"].gin_files] == [
        "no_head.gin", "no_prior.gin", "no_smoothing.gin"]
    assert runs["recipe"].gin_files == () and runs["sampled_1024"].reference == "mlp"
    assert [(runs[n].epochs, runs[n].reference) for n in ("prior_5ep", "prior_20ep")] == [
        (5, "gaussian_5ep"), (20, "gaussian_20ep")]
    assert runs["simclr"].bindings[1:] == ["SimCLRConfig.temperature = 0.2"]
    assert "simclr" not in {r.name for r in ablation.paper_grid()}
    tuning = ablation.simclr_tuning()
    assert len(tuning) == 4 and all(r.seeds == (0,) for r in tuning)
    assert all(r.bindings[0] == "DataConfig.holdout_seed = 1" for r in tuning)
    scores = {r.name: {"knn_top1": 50.0} for r in tuning}
    scores[tuning[3].name]["knn_top1"] = 51.0
    assert ablation.simclr_choice(scores) == (tuning[3].name, tuning[3].bindings[1:])
    scores[tuning[3].name]["knn_top1"] = 50.0
    assert ablation.simclr_choice(scores)[0] == tuning[0].name


@pytest.mark.slow
def test_the_paper_grid_runs_and_writes_its_page(tmp_path):
    import json
    import os
    import subprocess

    from helpers import subprocess_env

    cmd = _tiny_ablation_cmd(tmp_path, "paper", "linear_head,simclr", "0")
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    page = json.load(open(tmp_path / "paper_tables.json"))
    tuning = {r["name"]: r for r in page["simclr_tuning"]}
    best = max(tuning.values(), key=lambda r: r["knn_top1"])
    assert page["simclr_choice"] == best["name"]
    for name in tuning:  # the tuning held out split 1, the rows split 0
        info = json.load(open(tmp_path / name / "seed0" / "run_info.json"))
        assert info["holdout_seed"] == 1 and info["seed"] == 0
    rows = {r["name"]: r for r in page["results"]}
    assert set(rows) == {"linear_head", "simclr"}
    assert rows["simclr"]["per_seed"][0]["bindings"] == [
        "DataConfig.holdout_seed = 0", *best["per_seed"][0]["bindings"][1:]]
    for name in rows:
        assert json.load(open(tmp_path / name / "seed0" / "run_info.json"))["holdout_seed"] == 0
    scored = rows["linear_head"]
    assert all(0 < scored[k] <= 100 for k in ("knn_top1", "knn_embedding_top1", "linear_top1"))
    knn = json.load(open(tmp_path / "linear_head" / "seed0" / "eval" / "knn.json"))
    assert knn["results"][0]["top1"] == scored["knn_top1"] and knn["k"] == 200
    md = (tmp_path / "paper_tables.md").read_text()
    assert "## Table 2" in md and "| linear_head |" in md and "58.60" in md
    assert "## SimCLR's tuning" in md and md.count("| yes |") == 1
    assert os.path.getsize(tmp_path / "paper_tables.png") > 1000


def test_the_paper_page_prints_dash_for_what_a_run_did_not_record(tmp_path):
    """A run result without a wall time or final loss (one re-entered from an earlier
    report) is aggregated like any other; its missing cells print '-'."""
    import importlib

    paper_tables = importlib.import_module("paper_tables")
    from harness import spread

    per_seed = [{"name": f"mlp/seed{s}", "epochs": 50, "knn_top1": v,
                 "knn_embedding_top1": v - 1.0, "final_loss": None, "train_wall_s": None}
                for s, v in enumerate((40.0, 42.0))]
    row = {"name": "mlp", "description": "MLP head", "epochs": 50, "seeds": [0, 1],
           "reference": "mlp", "per_seed": per_seed, "vs_reference_knn_top1": "reference"}
    for key in ("knn_top1", "knn_embedding_top1", "linear_top1", "train_wall_s"):
        row[key], row[key + "_std"] = spread([s.get(key) for s in per_seed])
    assert row["train_wall_s"] is None and row["knn_top1"] == 41.0
    md = open(paper_tables.write(str(tmp_path), [row], [])).read()
    assert "| mlp | MLP head | 50 | 41.00 +- 1.41 |" in md
    assert "| mlp/seed1 | 50 | 42.00 | 41.00 | - | - | - |" in md
