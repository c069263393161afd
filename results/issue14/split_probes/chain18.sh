#!/bin/bash
# Seed 4 of the shipped recipe (b396e45's gin: tau 0.15, a checkpoint every 5 epochs) on splits 1, 2, 0
# (seventh rule in rules.md), one run at a time, on a frozen worktree of b396e45.
cd /work/frozen44 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen44
D=/work/shared/data/cifar10_subset_train.npz
run() { echo "$1 start $(date)"; shift; python tools/run_recipe.py --data=$D --gin_file=gin/cifar10_subset_npz.gin "$@" || echo FAILED; }
run "s1 k5 seed4" --work_dir=/work/runs/r24s1_k5_budget28 --split_seed=1 --seeds=4
run "s2 k5 seed4" --work_dir=/work/runs/r24s2_k5_budget28 --split_seed=2 --seeds=4
run "s0 k5 seed4" --work_dir=/work/runs/r24_k5_budget28 --split_seed=0 --seeds=4
echo "chain18 done $(date)"
