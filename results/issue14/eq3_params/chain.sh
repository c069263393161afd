#!/bin/bash
# After queue.sh: issue 17 item 2 (before = 14f91e4 in /work/frozen32, after = the working
# tree's batched-matmul label term, frozen in /work/frozen33), then two single-seed
# probes of Eq. 3's parameters at the recipe's budget.
while pgrep -f "full30/queue.sh" > /dev/null || pgrep -f "bash queue.sh" > /dev/null; do sleep 15; done
. /work/main/.venv/bin/activate
cd /work/frozen33 && bash tools/bench_eq3_before_after.sh /work/frozen32 /work/frozen33 /work/runs/full30/eq3_bmm 5
echo bench done
export PYTHONPATH=/work/frozen33
DATA=/work/shared/data/cifar10_subset_train.npz
python tools/run_recipe.py --work_dir=/work/runs/r24_alpha04 --seeds=0 --data=$DATA \
  --gin_bindings="MethodConfig.smoothing = 0.4" || echo FAILED alpha
python tools/run_recipe.py --work_dir=/work/runs/r24_k30 --seeds=0 --data=$DATA \
  --gin_bindings="MethodConfig.num_hard_negatives = 30" || echo FAILED k30
echo chain done
