#!/usr/bin/env bash
# The GPU session's one prepared script (run from the repository root on a CUDA machine; results go to $OUT):
#   1. the GPU smoke tests and paper-profile training speed (benchmarks/gpu_smoke.py);
#   2. the federation comparison of issue 8 (benchmarks/federation_value.py all) on the demo studios.
# Needs fedgai's dependencies importable (PYTHONPATH=custom plus wheels, or `pip install -e .`).
set -uo pipefail
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
SMOKE_S=${SMOKE_S:-120}
COMPARE_S=${COMPARE_S:-400}
EVAL_S=${EVAL_S:-90}
FV=${FV:-/tmp/fedvalue}
quiet() { grep -v -E "does not fit in a single ciphertext|operations are disabled|increasing the poly_modulus"; }

nvidia-smi -L
# SMOKE_S=0 skips the smoke tests (e.g. when they already ran on this kind of machine in the session).
if [ "$SMOKE_S" -gt 0 ]; then
  timeout "$SMOKE_S" python3 benchmarks/gpu_smoke.py --steps 20 --cpu-steps 2 --out "$OUT/gpu_smoke.json" 2>&1 | tail -40
fi

# Same settings as the quick profile (128 px, 5 rounds x 3 epochs, <= 96 training pairs a studio), with the
# EfficientNet-Lite0 encoder (VGG-16 weights are not installable offline) and CLIP off (no weights offline).
# Slowest variants first so that they do not trail; float32 (bf16 autocast is slower at these sizes).
# Few workers: without MPS, processes time-slice one GPU; 12 workers on an H200 finished no run in 390 s
# (docs/results.md), while one federation keeps the GPU busy with its own small kernels.
ARGS=(--data runs/bench-data --device cuda --workers "${WORKERS:-3}" --out "$FV"
      --variants fedgai_record_dp fedgai_he fedgai_client_dp local fedgai fedgai_feddecorr fedavg_full fedavg_bn
                 local_paper_loss fedgai_paper_loss local_no_gram fedgai_no_gram local_no_mrfm fedgai_no_mrfm
      --set 'model.encoder="efficientnet-lite0"' 'loss.clip_pretrained="none"' 'train.amp="off"')
timeout "$COMPARE_S" python3 benchmarks/federation_value.py all "${ARGS[@]}" 2>&1 | quiet | tail -80
# Whatever finished is scored even if the budget cut the comparison short.
timeout "$EVAL_S" python3 benchmarks/federation_value.py evaluate "${ARGS[@]}" 2>&1 | quiet | tail -40

(cd "$FV" && find . -name "*.json" -not -path "*/scratch/*" | tar czf "$OUT/fedvalue_json.tgz" -T -)
(cd "$FV" && find . -name "*.npz" -path "./compare/*" | tar cf - -T - | split -b 15M - "$OUT/fedvalue_fakes.tar.")
ls -la "$OUT"
