#!/bin/bash
# NPID with NCE (m = 400 < N, run_ablation's npid_nce row) beside the recipe, as calib.sh.
cd /work/frozen32 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen32
D=/work/runs/r24_100/train_unlabelled.npz
O=/work/runs/full30/calib
for m in npid1 recipe3 npid2; do
  extra=""
  case $m in npid*) extra="--gin_file=gin/ablations/npid.gin --gin_bindings=MethodConfig.npid_noise=400";; esac
  rm -rf $O/$m
  python tools/train.py --gin_file=gin/cifar10_subset_npz.gin $extra --gin_bindings="TrainConfig.epochs = 5" \
    --dataset=npz:$D --model_dir=$O/$m > $O/$m.log 2>&1 || echo FAILED $m
done
echo calib2 done
