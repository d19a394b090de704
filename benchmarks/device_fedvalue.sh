#!/usr/bin/env bash
# Issue 8's comparison grid on one GPU machine with 16 CPU cores, in one call of under 10 minutes: three
# federation_value.py `train` pools at once, sized so that every core and the GPU are busy. Scoring is left to
# `federation_value.py evaluate` wherever the results land (it needs no GPU). Results: $OUT/fedvalue.tgz.
#   - cpu:   the comparison's settings (64 px, 5 rounds x 2 epochs; docs/results.md) on CPU workers;
#   - dp:    record-level DP (per-pair gradients are the slow part) on the GPU, same settings;
#   - long:  11 rounds x 5 local epochs (5.5x the training), on the GPU: is a studio that has trained long
#            enough to be data-limited helped by the shared critic?
# Needs fedgai's dependencies importable (PYTHONPATH=custom plus wheels, or `pip install -e .`).
set -uo pipefail
OUT=${OUT:-runs/device}
FV=${FV:-/tmp/fedvalue}
TRAIN_S=${TRAIN_S:-480}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
SET=('model.encoder="efficientnet-lite0"' 'loss.clip_pretrained="none"' 'model.image_size=64' 'train.max_pairs=64'
     'train.epochs=2' 'model.gram_rows=32' 'model.gram_cols=64' 'model.disc_width=64' 'model.decoder_width=64'
     'train.num_threads=1' 'train.amp="off"')
train() { timeout "$TRAIN_S" python3 benchmarks/federation_value.py train --data runs/bench-data "$@" 2>&1 \
            | grep -E "seed[0-9]|FAILED|Error" ; }

nvidia-smi -L
train --device cpu --workers 6 --out "$FV" --set "${SET[@]}" --seeds 0 1 2 \
      --variants local_fm fedgai_fm > "$OUT/cpu_fm.log" &
train --device cpu --workers 4 --out "$FV" --set "${SET[@]}" --seeds 0 \
      --variants local_no_gram fedgai_no_gram local_no_mrfm fedgai_no_mrfm > "$OUT/cpu_ablation.log" &
train --device cuda --workers 3 --out "$FV" --set "${SET[@]}" --seeds 0 1 2 \
      --variants fedgai_record_dp > "$OUT/gpu_dp.log" &
train --device cuda --workers 4 --out "$FV-long" --set "${SET[@]}" 'fed.rounds=11' 'train.epochs=5' --seeds 0 \
      --variants local fedgai_feddecorr local_fm fedgai_fm > "$OUT/gpu_long.log" &
wait
tail -n 30 "$OUT"/*.log
# Only what `evaluate` needs: run.json and the generated test sketches per run, the splits and the config.
(cd /tmp && find "$(basename "$FV")" "$(basename "$FV")-long" -not -path "*/scratch/*" \
   \( -name "*.json" -o -name "*.npz" \) | tar czf "$OUT/fedvalue.tgz" -T -)
ls -la "$OUT"
