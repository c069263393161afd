#!/bin/bash
# After split 2's seed 0 (started by chain13.sh): split 0's seed 0, then split 1's seed 1,
# so the linear head is seen on all three splits before it is seen twice on one.
# (Stopped 40 s into split 0: by then split 2 had failed the decision rule, WORKSPACE.md;
#  chain13c.sh ran instead.)
cd /work/frozen43 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen43
while pgrep -f "r24s2_linhead_budget28" > /dev/null; do sleep 10; done
D=/work/shared/data/cifar10_subset_train.npz
run() { echo "$1 start $(date)"; shift; python tools/run_recipe.py --data=$D --gin_file=gin/cifar10_subset_npz.gin --gin_file=gin/ablations/no_head.gin "$@" || echo FAILED; }
run "s0 linear head seed0" --work_dir=/work/runs/r24_linhead_budget28 --seeds=0
run "s1 linear head seed1" --work_dir=/work/runs/r24s1_linhead_budget28 --split_seed=1 --seeds=0,1
echo "chain13b done $(date)"
