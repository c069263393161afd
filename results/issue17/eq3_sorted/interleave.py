"""The interleaved timing loop of this directory's microbenchmarks."""

import time

import numpy as np


def print_interleaved(fs: dict, rounds: int) -> None:
    """Runs each zero-argument function of ``fs`` once per round, in turn, and prints its
    median ms and the rounds' ms (each call's result is fetched with .numpy())."""
    res = {k: [] for k in fs}
    for _ in range(rounds):
        for k, f in fs.items():
            t0 = time.perf_counter()
            f().numpy()
            res[k].append(1e3 * (time.perf_counter() - t0))
    for k, v in res.items():
        print(f"{k:<24s} {np.median(v):6.1f}", " ".join(f"{q:.0f}" for q in v))
