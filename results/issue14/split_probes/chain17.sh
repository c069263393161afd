#!/bin/bash
# Second same-conditions pairs on splits 1 and 2 (sixth rule in rules.md), adjacent in time, order the reverse of
# each split's first pair, on the frozen code of every budget28 run (b6cf21a's library). run_recipe skips finished seeds.
cd /work/frozen43 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen43
D=/work/shared/data/cifar10_subset_train.npz
T="MethodConfig.temperature = 0.15"
run() { echo "$1 start $(date)"; shift; python tools/run_recipe.py --data=$D --gin_file=gin/cifar10_subset_npz.gin "$@" || echo FAILED; }
run "s1 tau 0.15 seed3" --work_dir=/work/runs/r24s1_t015_budget28 --split_seed=1 --seeds=0,1,2,3 --gin_bindings="$T"
run "s1 simclr seed3" --work_dir=/work/runs/r24s1_simclr_budget28 --split_seed=1 --seeds=0,1,2,3 --gin_file=gin/ablations/simclr.gin
run "s2 simclr seed3" --work_dir=/work/runs/r24s2_simclr_budget28 --split_seed=2 --seeds=0,1,2,3 --gin_file=gin/ablations/simclr.gin
run "s2 tau 0.15 seed3" --work_dir=/work/runs/r24s2_t015_budget28 --split_seed=2 --seeds=0,1,2,3 --gin_bindings="$T"
echo "chain17 done $(date)"
