#!/bin/bash
# Epoch cost of the recipe (tau 0.15) and SimCLR on split 0's 4,068 training images, same frozen code as every
# budget28 run (b6cf21a's library), 6 epochs each with no budget, 3 rounds, order alternated by round; nothing
# else running. Prints each run's epochs 1-5 (epoch 0 traces), its wall time from start to exit, and per round
# SimCLR's median epoch over the recipe's.
cd /work/frozen43 && . /work/main/.venv/bin/activate && export PYTHONPATH=/work/frozen43
D=/work/runs/r24_t015_budget28/train_unlabelled.npz
O=/work/runs/calib16
mkdir -p $O
run() {  # name, extra flags...
  local name=$1; shift; rm -rf $O/$name; local t0=$(date +%s.%N)
  python tools/train.py --gin_file=gin/cifar10_subset_npz.gin "$@" \
    --gin_bindings="TrainConfig.epochs = 6" --gin_bindings="TrainConfig.time_budget_minutes = 0.0" \
    --dataset=npz:$D --model_dir=$O/$name > $O/$name.log 2>&1 || echo FAILED $name
  echo "$name wall $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"
}
T="MethodConfig.temperature = 0.15"
for r in 1 2 3; do
  if [ $((r % 2)) = 1 ]; then
    run recipe$r --gin_bindings="$T"; run simclr$r --gin_file=gin/ablations/simclr.gin
  else
    run simclr$r --gin_file=gin/ablations/simclr.gin; run recipe$r --gin_bindings="$T"
  fi
done
cd /work/main && python3 results/issue14/full30/calib_times.py $O   # each run's epochs 1-5 and median
python3 - <<'PY'
import statistics, sys
sys.path.insert(0, "results/issue14/full30")
from calib_times import epoch_seconds
med = {(m, r): statistics.median(epoch_seconds(f"/work/runs/calib16/{m}{r}/metrics.jsonl"))
       for m in ("recipe", "simclr") for r in (1, 2, 3)}
ratios = [med["simclr", r] / med["recipe", r] for r in (1, 2, 3)]
print("SimCLR / recipe median epoch, per round:", " ".join(f"{x:.3f}" for x in ratios),
      f" median {statistics.median(ratios):.3f}")
PY
echo "calib16 done $(date)"
