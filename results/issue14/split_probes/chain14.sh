#!/bin/bash
# Seed 1 of the current recipe (the paper's tau 0.15) at the full 28-minute budget on splits 1, 2, 0,
# one run at a time, on the frozen code of every budget28 run (b6cf21a's library), same binding as seed 0.
cd /work/frozen43 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen43
D=/work/shared/data/cifar10_subset_train.npz
run() { echo "$1 start $(date)"; shift; python tools/run_recipe.py --data=$D --gin_file=gin/cifar10_subset_npz.gin --gin_bindings="MethodConfig.temperature = 0.15" "$@" || echo FAILED; }
run "s1 tau 0.15 seed1" --work_dir=/work/runs/r24s1_t015_budget28 --split_seed=1 --seeds=0,1
run "s2 tau 0.15 seed1" --work_dir=/work/runs/r24s2_t015_budget28 --split_seed=2 --seeds=0,1
run "s0 tau 0.15 seed1" --work_dir=/work/runs/r24_t015_budget28 --seeds=0,1
echo "chain14 done $(date)"
