#!/bin/bash
# Item 6, 30-minute budget: epoch cost of the recipe, SimCLR and NPID (NCE) at 24 px on the
# 4,068-image split, interleaved, 2 rounds of 5 epochs each; nothing else running.
cd /work/frozen32 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen32
D=/work/runs/r24_100/train_unlabelled.npz
O=/work/runs/full30/calib
for r in 1 2; do
  for m in recipe simclr npid; do
    extra=""
    [ $m = simclr ] && extra="--gin_file=gin/ablations/simclr.gin"
    [ $m = npid ] && extra="--gin_file=gin/ablations/npid.gin"
    rm -rf $O/$m$r
    python tools/train.py --gin_file=gin/cifar10_subset_npz.gin $extra --gin_bindings="TrainConfig.epochs = 5" \
      --dataset=npz:$D --model_dir=$O/$m$r > $O/$m$r.log 2>&1 || echo FAILED $m$r
  done
done
echo calib done
