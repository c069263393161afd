#!/bin/bash
# The recipe with a linear head (gin/ablations/no_head.gin) on splits 1 and 2, seeds 0 then 1,
# (It was stopped after its second run; chain13b.sh ran the rest.)
# one run at a time, on the frozen code of every budget28 run (b6cf21a's library).
cd /work/frozen43 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen43
D=/work/shared/data/cifar10_subset_train.npz
run() { echo "$1 start $(date)"; shift; python tools/run_recipe.py --data=$D --gin_file=gin/cifar10_subset_npz.gin --gin_file=gin/ablations/no_head.gin "$@" || echo FAILED; }
run "s1 linear head seed0" --work_dir=/work/runs/r24s1_linhead_budget28 --split_seed=1 --seeds=0
run "s2 linear head seed0" --work_dir=/work/runs/r24s2_linhead_budget28 --split_seed=2 --seeds=0
run "s1 linear head seed1" --work_dir=/work/runs/r24s1_linhead_budget28 --split_seed=1 --seeds=0,1
run "s2 linear head seed1" --work_dir=/work/runs/r24s2_linhead_budget28 --split_seed=2 --seeds=0,1
echo "chain13 done $(date)"
