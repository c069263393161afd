#!/bin/bash
# Same-conditions pairs on splits 2 and 0 (fifth rule in rules.md), adjacent in time, order alternated, on the
# frozen code of every budget28 run (b6cf21a's library). Each run_recipe call skips seeds already finished.
cd /work/frozen43 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen43
D=/work/shared/data/cifar10_subset_train.npz
T="MethodConfig.temperature = 0.15"
run() { echo "$1 start $(date)"; shift; python tools/run_recipe.py --data=$D --gin_file=gin/cifar10_subset_npz.gin "$@" || echo FAILED; }
run "s2 tau 0.15 seed2" --work_dir=/work/runs/r24s2_t015_budget28 --split_seed=2 --seeds=0,1,2 --gin_bindings="$T"
run "s2 simclr seed2" --work_dir=/work/runs/r24s2_simclr_budget28 --split_seed=2 --seeds=0,1,2 --gin_file=gin/ablations/simclr.gin
run "s0 simclr seed2" --work_dir=/work/runs/r24_simclr_budget28 --seeds=0,1,2 --gin_file=gin/ablations/simclr.gin
run "s0 tau 0.15 seed1" --work_dir=/work/runs/r24_t015_budget28 --seeds=0,1 --gin_bindings="$T"
echo "chain16 done $(date)"
