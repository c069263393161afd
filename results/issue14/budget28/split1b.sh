#!/bin/bash
cd /work/frozen43 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen43
echo "split1 recipe seed1 start $(date)"
python tools/run_recipe.py --work_dir=/work/runs/r24s1_budget28 --split_seed=1 --seeds=0,1 --data=/work/shared/data/cifar10_subset_train.npz \
  --gin_file=gin/cifar10_subset_npz.gin || echo FAILED
echo "split1b done $(date)"
