#!/usr/bin/env bash
# The diagnosis and recipe probes of issue 14 (WORKSPACE.md, "A recipe that learns"),
# each a tools/train.py run on the CIFAR subset's 80% split (labels only for the kNN
# monitor on the 20% holdout), 1 CPU device, seed 0. Every probe spells out the values
# it differs in from gin/cifar10_subset_npz.gin, so the commands stay valid as the
# recipe changes. Usage: bash tools/issue14_probes.sh OUT_DIR [PROBE ...]
# (no PROBE: all of them, one after another; about 1 h 15 min on 2 cores).
# VIRTUAL_DEVICES=T (default 1) sets --virtual_devices; the first NPID probes used 2, as
# the issue-6 grid did (NPID on a 1-device mesh failed in DTensor until the memory update
# stopped using tf.transpose; the *_30ep NPID probes ran on 1 device).
# SEED=s (default: the gin file's 0) sets TrainConfig.seed and suffixes the run's name with
# _seed<s>; with SPLIT_DIR=DIR (tools/run_recipe.py's work dir: train_labelled.npz and
# holdout.npz) the split stays that of seed 0 while the training seed changes.
set -euo pipefail
out=${1:?usage: issue14_probes.sh OUT_DIR [PROBE ...]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
# the recipe before issue 14: tau 0.15, the paper's single optimizer, lr 1.0 / 256
paper=("MethodConfig.temperature = 0.15" "ClassifierConfig.unit_norm = False"
       "OptimConfig.classifier_lr_scale = 1.0" "OptimConfig.classifier_weight_decay = None"
       "OptimConfig.base_learning_rate = 1.0" "OptimConfig.weight_decay = 1e-4"
       "MonitorConfig.every_epochs = 1")
unit=("${paper[@]}" "ClassifierConfig.unit_norm = True")
# unit-norm W, lr 0.03 at batch 128, weight decay 5e-4, W lr x 133, W not decayed
tracked=("${unit[@]}" "OptimConfig.base_learning_rate = 0.06"
         "OptimConfig.weight_decay = 5e-4" "OptimConfig.classifier_lr_scale = 133.0"
         "OptimConfig.classifier_weight_decay = 0.0")
declare -A probes=(
  [paper_recipe_10ep]="10|paper"
  [unit_w_10ep]="10|unit"
  [unit_w_lrx8_10ep]="10|unit|OptimConfig.classifier_lr_scale = 8.0"
  [unit_w_lr003_wx133_10ep]="10|tracked"
  [simclr_lr05_10ep]="10|simclr_paper"
  [unit_w_lr003_wx133_50ep]="50|tracked|MonitorConfig.every_epochs = 5"
  [simclr_lightly_50ep]="50|simclr|MonitorConfig.every_epochs = 5"
  [q25_base]="25|tracked|MonitorConfig.every_epochs = 25"
  [q25_a04]="25|tracked|MonitorConfig.every_epochs = 25|MethodConfig.smoothing = 0.4"
  [q25_t01]="25|tracked|MonitorConfig.every_epochs = 25|MethodConfig.temperature = 0.1"
  [q25_s33]="25|tracked|MonitorConfig.every_epochs = 25|OptimConfig.classifier_lr_scale = 33.0"
  [q25_lr2]="25|tracked|MonitorConfig.every_epochs = 25|OptimConfig.base_learning_rate = 0.12"
  # m ~ N: these ran with npid.gin's m = 4096 before m < N (4,068) was enforced
  [npid_nce_first_8ep]="8|npid|MethodConfig.npid_z_estimate = 'first'|MethodConfig.npid_noise = 4067"
  [npid_nce_epoch_8ep]="8|npid|MethodConfig.npid_z_estimate = 'epoch'|MethodConfig.npid_noise = 4067"
  [npid_nce_step_8ep]="8|npid|MethodConfig.npid_z_estimate = 'step'|MethodConfig.npid_noise = 4067"
  # m = 400: NPID's m / N (4096 / 50,000 on CIFAR-10) is about 8%; 400 / 4,068 is 10%
  [npid_nce_step_m400_8ep]="8|npid|MethodConfig.npid_z_estimate = 'step'|MethodConfig.npid_noise = 400"
  [npid_nce_first_m400_8ep]="8|npid|MethodConfig.npid_z_estimate = 'first'|MethodConfig.npid_noise = 400"
  [npid_full_8ep]="8|npid|MethodConfig.npid_noise = 0"
  [npid_nce_m400_8ep]="8|npid|MethodConfig.npid_z_estimate = 'epoch'|MethodConfig.npid_noise = 400"
  [npid_nce_step_30ep]="30|npid|MethodConfig.npid_z_estimate = 'step'|MethodConfig.npid_noise = 400|MonitorConfig.every_epochs = 5"
  [npid_full_30ep]="30|npid|MethodConfig.npid_noise = 0|MonitorConfig.every_epochs = 5"
  # the recipe as it is (8-100% crops), its early epochs: the loss rises above log N
  # after the warm-up epoch (session of 2026-11-30, fourth)
  [r12_base]="12|recipe|MonitorConfig.every_epochs = 4"
  [r12_nosmooth]="12|recipe|MonitorConfig.every_epochs = 4|MethodConfig.smoothing = 0.0"
  [r12_warm5]="12|recipe|MonitorConfig.every_epochs = 4|OptimConfig.warmup_epochs = 5"
  [r12_headbn]="12|recipe|MonitorConfig.every_epochs = 4|ModelConfig.head_output_bn = True"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${!probes[@]}")
for name in "${names[@]}"; do
  spec=${probes[$name]:?unknown probe $name}
  IFS='|' read -r -a parts <<< "$spec"
  epochs=${parts[0]}
  base=${parts[1]}
  files=(--gin_file="$root/gin/cifar10_subset_npz.gin")
  case $base in
    paper) bindings=("${paper[@]}") ;;
    unit) bindings=("${unit[@]}") ;;
    tracked) bindings=("${tracked[@]}") ;;
    simclr_paper) bindings=("${paper[@]}"); files+=(--gin_file="$root/gin/ablations/simclr.gin")
                  bindings+=("OptimConfig.base_learning_rate = 1.0" "OptimConfig.base_batch_size = 256"
                             "OptimConfig.weight_decay = 1e-4") ;;
    simclr) bindings=("MonitorConfig.every_epochs = 1"); files+=(--gin_file="$root/gin/ablations/simclr.gin") ;;
    npid) bindings=("MonitorConfig.every_epochs = 1"); files+=(--gin_file="$root/gin/ablations/npid.gin") ;;
    recipe) bindings=() ;;
  esac
  bindings+=("${parts[@]:2}")
  run=$name
  if [ -n "${SEED:-}" ]; then bindings+=("TrainConfig.seed = $SEED"); run=${name}_seed$SEED; fi
  if [ -n "${SPLIT_DIR:-}" ]; then
    bindings+=("DataConfig.dataset = 'npz:$SPLIT_DIR/train_labelled.npz'"
               "DataConfig.eval_dataset = 'npz:$SPLIT_DIR/holdout.npz'")
  fi
  args=()
  for b in "${bindings[@]}"; do args+=(--gin_bindings="$b"); done
  echo "== $run"
  python "$root/tools/train.py" "${files[@]}" "${args[@]}" --virtual_devices="${VIRTUAL_DEVICES:-1}" \
    --epochs="$epochs" --model_dir="$out/$run" > "$out/$run.log" 2>&1
  cp "$out/$run/metrics.jsonl" "$out/${run}_metrics.jsonl"
  tail -n 1 "$out/$run.log"
done
