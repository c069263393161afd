#!/bin/bash
while pgrep -f "paired.sh" > /dev/null; do sleep 5; done
cd /work/frozen35 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen35
python tools/run_recipe.py --work_dir=/work/runs/r24_k30 --seeds=0 --data=/work/shared/data/cifar10_subset_train.npz \
  --gin_bindings="MethodConfig.num_hard_negatives = 30" || echo FAILED k30
echo k30 done
