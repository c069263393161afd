#!/bin/bash
cd /work/frozen41 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen41
python tools/run_recipe.py --work_dir=/work/runs/r24_simclr_budget28 --seeds=0,1 --data=/work/shared/data/cifar10_subset_train.npz \
  --gin_file=gin/cifar10_subset_npz.gin --gin_file=gin/ablations/simclr.gin || echo FAILED
echo "simclr s1 done $(date)"
