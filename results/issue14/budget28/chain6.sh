#!/bin/bash
# after both seeds of the budgeted recipe: the multi-client test (new assertion), SimCLR
# seed 0 with the same budget (code of a6f9f26, as the recipe's seeds), then, once the
# re-planning code is frozen in /work/frozen42, item 3's exact command on all 5,085
# images with it, CI of a fresh clone, then SimCLR seed 1 (a6f9f26).
while pgrep -f "budget.sh" > /dev/null; do sleep 5; done
cd /work/main && . /work/main/.venv/bin/activate
timeout 900 python -m pytest tests/test_multiclient.py -q -k single_process_reference > /work/runs/mc_test.log 2>&1; echo "mc rc=$? $(date)"
cd /work/frozen41 && export PYTHONPATH=/work/frozen41
python tools/run_recipe.py --work_dir=/work/runs/r24_simclr_budget28 --seeds=0 --data=/work/shared/data/cifar10_subset_train.npz \
  --gin_file=gin/cifar10_subset_npz.gin --gin_file=gin/ablations/simclr.gin || echo FAILED
echo "simclr s0 done $(date)"
while [ ! -f /work/runs/frozen42_ready ]; do sleep 5; done
cd /work/frozen42 && export PYTHONPATH=/work/frozen42
mkdir -p /work/runs/full5085
/usr/bin/time -v python tools/train.py --gin_file=gin/cifar10_subset_npz.gin --dataset=npz:/work/runs/cifar5085_unlabelled.npz \
  --model_dir=/work/runs/full5085/model > /work/runs/full5085/train_console.txt 2> /work/runs/full5085/train_time.txt
/usr/bin/time -v python tools/export.py --model_dir=/work/runs/full5085/model > /work/runs/full5085/export_console.txt 2> /work/runs/full5085/export_time.txt
echo "full5085 done $(date)"
unset PYTHONPATH
d=$(mktemp -d /work/ci_XXXX) && git clone -q /work/main "$d" && cd "$d" && git log --oneline | head -1 && (time bash .ci/run) > /work/runs/ci.log 2>&1; echo "ci rc=$? $(date)"
cd /work/frozen41 && export PYTHONPATH=/work/frozen41
python tools/run_recipe.py --work_dir=/work/runs/r24_simclr_budget28 --seeds=0,1 --data=/work/shared/data/cifar10_subset_train.npz \
  --gin_file=gin/cifar10_subset_npz.gin --gin_file=gin/ablations/simclr.gin || echo FAILED
echo "simclr s1 done $(date)"
