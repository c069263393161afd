#!/bin/bash
cd /work/frozen40 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen40
python tools/run_recipe.py --work_dir=/work/runs/r24_100 --seeds=0 --data=/work/shared/data/cifar10_subset_train.npz || echo FAILED
echo base done
