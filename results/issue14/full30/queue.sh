#!/bin/bash
# Issue 14 item 6: NPID (NCE, m = 400) and SimCLR at the recipe's wall time (24 px views,
# the 4,068-image split of run_recipe.py). Epochs from calib*.sh: recipe 9.35 s, NPID 9.82 s
# per epoch -> 95 epochs; SimCLR keeps the 115 of its seed 0 (8.7-9.1 s here: >= equal time).
cd /work/frozen32 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen32
DATA=/work/shared/data/cifar10_subset_train.npz
npid() {
python tools/run_recipe.py --work_dir=/work/runs/r24_npid95 --seeds=$1 --data=$DATA \
  --gin_file=gin/cifar10_subset_npz.gin --gin_file=gin/ablations/npid.gin \
  --gin_bindings="MethodConfig.npid_noise = 400" --gin_bindings="TrainConfig.epochs = 95" || echo FAILED npid $1
}
npid 0
python tools/run_recipe.py --work_dir=/work/runs/r24_simclr115 --seeds=0,1 --data=$DATA \
  --gin_file=gin/cifar10_subset_npz.gin --gin_file=gin/ablations/simclr.gin \
  --gin_bindings="TrainConfig.epochs = 115" || echo FAILED simclr
npid 0,1
echo queue done
