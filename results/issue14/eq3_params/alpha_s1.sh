#!/bin/bash
cd /work/frozen36 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen36
python tools/run_recipe.py --work_dir=/work/runs/r24_alpha04 --seeds=0,1 --data=/work/shared/data/cifar10_subset_train.npz \
  --gin_bindings="MethodConfig.smoothing = 0.4" || echo FAILED
echo alpha_s1 done
