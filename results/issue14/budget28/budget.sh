#!/bin/bash
while pgrep -f "base.sh" > /dev/null; do sleep 5; done
cd /work/frozen41 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen41
python tools/run_recipe.py --work_dir=/work/runs/r24_budget28 --seeds=0,1 --data=/work/shared/data/cifar10_subset_train.npz || echo FAILED
echo budget done
