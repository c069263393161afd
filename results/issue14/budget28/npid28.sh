#!/bin/bash
cd /work/frozen43 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen43
echo "start $(date)"
python tools/run_recipe.py --work_dir=/work/runs/r24_npid_budget28 --seeds=0,1 --data=/work/shared/data/cifar10_subset_train.npz \
  --gin_file=gin/cifar10_subset_npz.gin --gin_file=gin/ablations/npid.gin \
  --gin_bindings="MethodConfig.npid_noise = 400" || echo FAILED
echo "npid done $(date)"
