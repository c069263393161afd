#!/bin/bash
# Probes: progressive resizing (16 px then 24 px) and pure 16 px, split seed 0, seed 0.
cd /work/frozen31 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen31
R=/work/runs/r24_100
G="--gin_file=gin/cifar10_subset_npz.gin --dataset=npz:$R/train_unlabelled.npz"
knn() { # model_dir
  python tools/export.py --model_dir=$1 --export_dir=$1/export --overwrite > $1/export.log 2>&1
  python tools/eval_knn.py --export_dir=$1/export --dataset=npz:$R/train_labelled.npz \
    --eval_dataset=npz:$R/holdout.npz --out_dir=$1/knn --feature=both --baselines \
    --cache_features=false > $1/knn.log 2>&1
  tail -8 $1/knn.log
}
P=/work/runs/prog/p16_24_128
if [ ! -f $P/knn/knn.json ]; then
  start=$(date +%s)
  python tools/train.py $G --model_dir=$P --epochs=128 --max_steps=1984 \
    --gin_bindings="DataConfig.train_image_size = 16" > $P.s1.log 2>&1 || exit 1
  sed -i 's/"train_image_size": 16/"train_image_size": 24/' $P/run_info.json
  python tools/train.py $G --model_dir=$P --epochs=128 \
    --gin_bindings="DataConfig.train_image_size = 24" > $P.s2.log 2>&1 || exit 1
  echo "train wall $(( $(date +%s) - start )) s"
  knn $P
fi
P=/work/runs/prog/p16_178
if [ ! -f $P/knn/knn.json ]; then
  start=$(date +%s)
  python tools/train.py $G --model_dir=$P --epochs=178 \
    --gin_bindings="DataConfig.train_image_size = 16" > $P.log 2>&1 || exit 1
  echo "train wall $(( $(date +%s) - start )) s"
  knn $P
fi
echo done
