#!/bin/bash
# The recipe's epoch in the loop with a checkpoint every epoch against every 5th, same code,
# interleaved (A B A B), 12 epochs (epoch 0 and the first interval left out: 10 intervals,
# 2 of them with a checkpoint at k = 5), split 0's 4,068 training images, nothing else running.
cd "$(dirname "$0")/../../.." && . .venv/bin/activate
python tools/bench_epochs.py --code_dirs=.,. --rounds=2 --epochs=12 \
    --dataset=npz:/work/runs/r24_t015_budget28/train_unlabelled.npz --gin_file=gin/cifar10_subset_npz.gin \
    --gin_bindings="TrainConfig.time_budget_minutes = 0" \
    --variant_binding= --variant_binding="TrainConfig.checkpoint_every_epochs = 5" \
    --json=results/issue14/checkpoint_cost/bench_epochs.json
