#!/bin/bash
# chain14.sh cut to splits 1 and 2 (2026-12-01 22:24 UTC, before split 1's seed-1 result):
# the machine runs epochs at 7-9 s against 5.5 s for seed 0, so the session has time for
# two of the three runs; split 0 (tau 0.15 already +4.72 above SimCLR there) is dropped.
# Waits for split 1's run (started by chain14.sh) to finish, then runs split 2.
while pgrep -f "run_recipe.py.*r24s1_t015_budget28" > /dev/null; do sleep 10; done
cd /work/frozen43 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen43
D=/work/shared/data/cifar10_subset_train.npz
run() { echo "$1 start $(date)"; shift; python tools/run_recipe.py --data=$D --gin_file=gin/cifar10_subset_npz.gin --gin_bindings="MethodConfig.temperature = 0.15" "$@" || echo FAILED; }
run "s2 tau 0.15 seed1" --work_dir=/work/runs/r24s2_t015_budget28 --split_seed=2 --seeds=0,1
echo "chain14b done $(date)"
