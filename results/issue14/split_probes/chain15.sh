#!/bin/bash
# A same-conditions pair on split 1: SimCLR seed 2, then the recipe (tau 0.15) seed 2, adjacent in time,
# on the frozen code of every budget28 run (b6cf21a's library). Waits for the fresh-clone CI to finish.
while pgrep -f "pytest tests" > /dev/null || pgrep -f "ci11.sh" > /dev/null; do sleep 10; done
cd /work/frozen43 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen43
D=/work/shared/data/cifar10_subset_train.npz
run() { echo "$1 start $(date)"; shift; python tools/run_recipe.py --data=$D --gin_file=gin/cifar10_subset_npz.gin "$@" || echo FAILED; }
run "s1 simclr seed2" --work_dir=/work/runs/r24s1_simclr_budget28 --split_seed=1 --seeds=0,1,2 --gin_file=gin/ablations/simclr.gin
run "s1 tau 0.15 seed2" --work_dir=/work/runs/r24s1_t015_budget28 --split_seed=1 --seeds=0,1,2 --gin_bindings="MethodConfig.temperature = 0.15"
echo "chain15 done $(date)"
