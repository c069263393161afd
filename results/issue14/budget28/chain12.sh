#!/bin/bash
cd /work/frozen43 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen43
D=/work/shared/data/cifar10_subset_train.npz
run() { echo "$1 start $(date)"; shift; python tools/run_recipe.py --data=$D --gin_file=gin/cifar10_subset_npz.gin "$@" || echo FAILED; }
run "s2 recipe seed0" --work_dir=/work/runs/r24s2_budget28 --split_seed=2 --seeds=0
run "s2 simclr seed0" --work_dir=/work/runs/r24s2_simclr_budget28 --split_seed=2 --seeds=0 --gin_file=gin/ablations/simclr.gin
run "s1 simclr seed1" --work_dir=/work/runs/r24s1_simclr_budget28 --split_seed=1 --seeds=0,1 --gin_file=gin/ablations/simclr.gin
run "s2 recipe seed1" --work_dir=/work/runs/r24s2_budget28 --split_seed=2 --seeds=0,1
run "s2 simclr seed1" --work_dir=/work/runs/r24s2_simclr_budget28 --split_seed=2 --seeds=0,1 --gin_file=gin/ablations/simclr.gin
echo "chain12 done $(date)"
