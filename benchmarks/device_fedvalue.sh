#!/usr/bin/env bash
# Issue 8's comparison grid on one GPU machine with 16 CPU cores (docs/results.md), in three calls of under
# 10 minutes each (`bash benchmarks/device_fedvalue.sh 1`, then 2, then 3, on the same machine: FV persists).
# Each call runs federation_value.py `train` pools side by side so that every core and the GPU are busy;
# scoring is left to `federation_value.py evaluate` wherever the results land (it needs no GPU).
#   - CPU pools: the comparison's settings (64 px, 5 rounds x 2 epochs; docs/results.md), one thread each;
#   - GPU: record-level DP (per-pair gradients are the slow part), same settings;
#   - GPU, FV-long: 11 rounds x 5 local epochs (5.5x the training): is a studio that trained long enough to be
#     limited by data rather than by steps helped by the shared critic?
# Results: $OUT/fedvalue<stage>.tgz (run.json + generated test sketches of every run, splits, config).
# Needs fedgai's dependencies importable (PYTHONPATH=custom plus wheels, or `pip install -e .`).
set -uo pipefail
STAGE=${1:?usage: device_fedvalue.sh 1|2|3}
OUT=${OUT:-runs/device}
FV=${FV:-/tmp/fedvalue}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
SET=('model.encoder="efficientnet-lite0"' 'loss.clip_pretrained="none"' 'model.image_size=64' 'train.max_pairs=64'
     'train.epochs=2' 'model.gram_rows=32' 'model.gram_cols=64' 'model.disc_width=64' 'model.decoder_width=64'
     'train.num_threads=1' 'train.amp="off"')
LONG=('fed.rounds=11' 'train.epochs=5')
train() {  # LOG DEVICE WORKERS OUT [federation_value args...]
  local log=$1 device=$2 workers=$3 out=$4
  shift 4
  timeout "${TRAIN_S:-460}" python3 benchmarks/federation_value.py train --data runs/bench-data --device "$device" \
    --workers "$workers" --out "$out" "$@" 2>&1 | grep -E "seed[0-9]|FAILED|Error" > "$OUT/$log.log"
}

nvidia-smi -L
case "$STAGE" in
  1)
    train cpu_fm cpu 6 "$FV" --set "${SET[@]}" --seeds 0 1 2 --variants local_fm fedgai_fm &
    train cpu_ablation cpu 4 "$FV" --set "${SET[@]}" --seeds 0 \
      --variants local_no_gram fedgai_no_gram local_no_mrfm fedgai_no_mrfm &
    train gpu_dp cuda 3 "$FV" --set "${SET[@]}" --seeds 0 1 2 --variants fedgai_record_dp &
    train gpu_long cuda 4 "$FV-long" --set "${SET[@]}" "${LONG[@]}" --seeds 0 \
      --variants local fedgai_feddecorr local_fm fedgai_fm &
    ;;
  2)
    train cpu_ablation2 cpu 10 "$FV" --set "${SET[@]}" --seeds 1 2 \
      --variants local_no_gram fedgai_no_gram local_no_mrfm fedgai_no_mrfm &
    train cpu_fedavg cpu 1 "$FV" --set "${SET[@]}" --seeds 0 1 2 --variants fedavg_full fedavg_bn &
    train gpu_long2 cuda 6 "$FV-long" --set "${SET[@]}" "${LONG[@]}" --seeds 1 2 \
      --variants local fedgai_feddecorr local_fm fedgai_fm &
    ;;
  3)
    train cpu_modes cpu 11 "$FV" --set "${SET[@]}" --seeds 0 1 2 \
      --variants fedavg_bn fedgai fedgai_client_dp fedgai_he &
    ;;
  *) echo "stage must be 1, 2 or 3" >&2; exit 2 ;;
esac
wait
tail -n 30 "$OUT"/*.log
# Only what `evaluate` needs: run.json and the generated test sketches per run, the splits and the config.
(cd "$(dirname "$FV")" && find "$(basename "$FV")" "$(basename "$FV")-long" -not -path "*/scratch/*" \
   \( -name "*.json" -o -name "*.npz" \) 2>/dev/null | tar czf "$OUT/fedvalue$STAGE.tgz" -T -)
ls -la "$OUT"
