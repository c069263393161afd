r"""Training throughput against a PyTorch peer, interleaved in one process, with each
core's busy share.

Ours: the real training step of a gin config (default: the CIFAR-subset recipe, a
1-device mesh as train.py uses on this machine) fed by the same input pipeline train.py
builds (augmentation, prefetch), once per value of --batchnorm_kernels. The peer: the
same network in PyTorch (ResNet-18-CIFAR of the same width, the same MLP head), the same
side, batch and two views, the same cosine softmax over N rows of W (temperature 0.15)
and SGD with momentum, fed by a torch DataLoader whose worker does the same augmentation
in torch (random resized crop, flip, colour jitter, grayscale). The configurations take
turns, --rounds times; each figure is the median over rounds (instances/s: images per
second, each seen in two views). Each core's busy share is read from /proc/stat over
every timed window. torch is optional: without it only ours is timed.

  python benchmarks/bench_vs_torch.py --side=32 --rounds=5 --json=runs/bench/torch32.json
  python benchmarks/bench_vs_torch.py --side=24 --precisions=float32,mixed_bfloat16

Run nothing else meanwhile: the result is a ratio of two programs sharing the cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time

import numpy as np
from absl import app, flags

from tf_instcls.cli import gin_config

import harness

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [os.path.join(harness.GIN_DIR, "cifar10_subset_npz.gin")],
                          "gin configs of our run.")
flags.DEFINE_multi_string("gin_bindings", [], "gin bindings of our run.")
flags.DEFINE_string("dataset", f"npz:{harness.CIFAR_SUBSET}", "DataConfig.dataset (an npz "
                    "or the digits: the peer reads the same images).")
flags.DEFINE_integer("side", 32, "Side of the training views (DataConfig.train_image_size).",
                     lower_bound=8)
flags.DEFINE_list("batchnorm_kernels", ["auto", "closed_form"],
                  "ModelConfig.batchnorm_kernel values of our step to compare.")
flags.DEFINE_list("precisions", ["float32"], "ModelConfig.precision values of our step.")
flags.DEFINE_integer("steps", 8, "Timed steps per configuration and round.", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads of the peer.", lower_bound=1)
flags.DEFINE_integer("torch_workers", 1, "DataLoader workers of the peer.", lower_bound=0)
flags.DEFINE_bool("torch", True, "Time the PyTorch peer (if torch is installed).")
flags.DEFINE_string("json", None, "Write the result here.")


def ours(base, kernel: str, precision: str):
    """(a call running one training step on the next batch of train.py's pipeline, the
    global batch, the training images) of the config ``base`` with this BN kernel and
    precision."""
    from tf_instcls import parallel
    from tf_instcls.parallel import layouts
    from tf_instcls.training import loop
    from tf_instcls.training.step import make_train_step

    config = dataclasses.replace(base, model=dataclasses.replace(
        base.model, batchnorm_kernel=kernel, precision=precision))
    mesh = parallel.build_mesh(None)
    state = loop.build_state(tempfile.mkdtemp(prefix="bench_torch_"), config=config,
                             mesh=mesh)
    batches = loop._batches(state, config, 0)  # train.py's pipeline, from step 0
    step = make_train_step(state.encoder, state.classifier, state.optimizer,
                           lambda s: 0.01, state.method,
                           hard_table=state.hard_negatives.table if state.hard_negatives
                           else None, loss_scale=state.loss_scale)
    image_layout, id_layout = layouts.batch_layout(mesh, 5), layouts.batch_layout(mesh, 1)

    def call():
        batch = next(batches)
        out = step(layouts.pack_local_batch(batch["images"], image_layout),
                   layouts.pack_local_batch(batch["ids"], id_layout), state.global_step)
        return float(parallel.to_numpy(out["loss"]))

    return call, config.train.batch_size, state.train_source.images


def peer(images: np.ndarray, config):
    """(a call running one PyTorch step on the next batch of its DataLoader, batch)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.set_num_threads(FLAGS.torch_threads)
    torch.manual_seed(0)
    width, side = config.model.backbone_width, FLAGS.side
    batch, temperature = config.train.batch_size, 0.15
    jitter = config.data.augment_config(side)

    def conv_bn(cin, cout, stride, k=3):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a = nn.Sequential(*conv_bn(cin, cout, stride), nn.ReLU(inplace=True),
                                   *conv_bn(cout, cout, 1))
            self.short = (nn.Sequential(*conv_bn(cin, cout, stride, 1))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return F.relu(self.a(x) + self.short(x))

    layers_, cin = [*conv_bn(3, width, 1), nn.ReLU(inplace=True)], width
    for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
        for b in range(2):
            layers_.append(Block(cin, width * mult, stride if b == 0 else 1))
            cin = width * mult
    hidden = config.model.head_hidden_dim
    encoder = nn.Sequential(*layers_, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(cin, hidden, bias=False), nn.BatchNorm1d(hidden),
                            nn.ReLU(inplace=True), nn.Linear(hidden, 128))
    n = len(images)
    weights = nn.Parameter(F.normalize(torch.randn(n, 128), dim=1))
    optimizer = torch.optim.SGD([*encoder.parameters(), weights], lr=0.01, momentum=0.9,
                                weight_decay=5e-4)

    def view(image: torch.Tensor) -> torch.Tensor:  # uint8 [H, W, 3] -> float [3, s, s]
        h, w = image.shape[:2]
        for _ in range(10):  # random resized crop, SimCLR's
            area = h * w * np.random.uniform(*jitter.crop_scale)
            ratio = np.exp(np.random.uniform(*np.log(jitter.crop_ratio)))
            ch, cw = int(round(np.sqrt(area / ratio))), int(round(np.sqrt(area * ratio)))
            if 0 < ch <= h and 0 < cw <= w:
                break
        else:
            ch, cw = h, w
        top, left = np.random.randint(0, h - ch + 1), np.random.randint(0, w - cw + 1)
        x = image[top:top + ch, left:left + cw].permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)[0]
        if np.random.rand() < 0.5:
            x = x.flip(2)
        if np.random.rand() < jitter.jitter_prob:
            b, c, s, _ = jitter.jitter_strength
            x = x * np.random.uniform(1 - b, 1 + b)
            mean = x.mean()
            x = (x - mean) * np.random.uniform(1 - c, 1 + c) + mean
            gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
            x = (x - gray) * np.random.uniform(1 - s, 1 + s) + gray
        if np.random.rand() < jitter.grayscale_prob:
            x = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None].expand(3, -1, -1)
        return x.clamp(0, 1)

    class Views(torch.utils.data.Dataset):
        def __init__(self):
            self.images = torch.from_numpy(images)

        def __len__(self):
            return n

        def __getitem__(self, i):
            return torch.stack([view(self.images[i]), view(self.images[i])]), i

    loader = torch.utils.data.DataLoader(
        Views(), batch_size=batch, shuffle=True, drop_last=True,
        num_workers=FLAGS.torch_workers, persistent_workers=FLAGS.torch_workers > 0)

    def batches():
        while True:
            yield from loader

    stream = batches()

    def call():
        x, ids = next(stream)
        x = x.reshape(-1, 3, side, side)
        z = F.normalize(encoder(x), dim=1)
        logits = z @ F.normalize(weights, dim=1).t() / temperature
        loss = F.cross_entropy(logits, ids.repeat_interleave(2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss)

    return call, batch


def main(argv):
    del argv
    base = gin_config.configs_from_gin(list(FLAGS.gin_file), list(FLAGS.gin_bindings) + [
        f"DataConfig.dataset = '{FLAGS.dataset}'",
        f"DataConfig.train_image_size = {FLAGS.side}",
        "TrainConfig.time_budget_minutes = 0.0", "MonitorConfig.every_epochs = 0",
        "ClassifierConfig.init_mode = 'gaussian'",  # (the prior costs start-up only)
        "TrainConfig.epochs = 1000"])  # one pipeline with batches enough for any run
    calls = {}
    for precision in FLAGS.precisions:
        for kernel in FLAGS.batchnorm_kernels:
            call, batch, images = ours(base, kernel, precision)
            calls[f"ours {precision} bn={kernel}"] = (call, batch)
    try:
        import torch  # noqa: F401
        has_torch = True
    except ImportError:
        has_torch = False
        print("torch is not installed: timing ours only")
    if FLAGS.torch and has_torch:  # the same training images (the holdout left out)
        calls["pytorch peer float32"] = peer(np.asarray(images), base)
    for call, _ in calls.values():  # trace, fill the pipelines, warm up
        for _ in range(3):
            call()
    rates = {name: [] for name in calls}
    busy = {name: [] for name in calls}
    for _ in range(FLAGS.rounds):
        for name, (call, batch) in calls.items():
            before, start = harness.cpu_times(), time.perf_counter()
            for _ in range(FLAGS.steps):
                call()
            seconds = time.perf_counter() - start
            rates[name].append(batch * FLAGS.steps / seconds)
            busy[name].append(harness.busy_share(before, harness.cpu_times()))
    peer_rate = (statistics.median(rates["pytorch peer float32"])
                 if "pytorch peer float32" in rates else None)
    rows = []
    print(f"side {FLAGS.side} px, batch {base.train.batch_size} x 2 views, "
          f"{FLAGS.rounds} rounds x {FLAGS.steps} steps (median, min-max)")
    for name in calls:
        rate = statistics.median(rates[name])
        cores = np.median(np.array(busy[name]), axis=0).tolist()
        row = {"config": name, "instances_per_sec": rate, "min": min(rates[name]),
               "max": max(rates[name]), "core_busy": cores,
               "vs_peer": rate / peer_rate if peer_rate else None}
        rows.append(row)
        vs = f"  x{row['vs_peer']:.2f} of the peer" if peer_rate else ""
        print(f"{name:32s} {rate:7.1f} instances/s ({row['min']:.1f}-{row['max']:.1f})  "
              f"cores busy {', '.join(f'{100 * c:.0f}%' for c in cores)}{vs}")
    if FLAGS.json:
        os.makedirs(os.path.dirname(FLAGS.json) or ".", exist_ok=True)
        with open(FLAGS.json, "w") as f:
            json.dump({"side": FLAGS.side, "rounds": FLAGS.rounds, "steps": FLAGS.steps,
                       "cpu_count": os.cpu_count(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
