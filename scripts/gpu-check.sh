#!/usr/bin/env bash
# maskkit's GPU check, for a machine with an NVIDIA GPU (adapted from ../shared/gpu-check.sh). It needs no
# network: torch, timm, pluggy, attrs, rich, pyyaml, pytest and hypothesis must already be installed
# (transformers too, for the ViTMAE reference rows). Run it from the repository root:
#     bash scripts/gpu-check.sh                      # about 7 minutes on one H100/H200 (each part has a timeout)
#     GPU_CHECK_FULL=1 bash scripts/gpu-check.sh     # also ViT-L/16 eager with every variant and the installed
#                                                    # context-aware maskers (bench --masker; minutes more)
# It runs the CUDA tests (`pytest -m cuda`), then `maskkit bench`: ViT-B/16 at batch 64 eager with every variant
# and the data pipelines (loader against a plain decode + crop loop; data.decode: device, nvJPEG, over the same
# files), `maskkit train` of ViT-B/16 at batch 64 on
# generated JPEGs (end to end against the bench's images/s), ViT-L/16 at batch 64 compiled (MAE, mask tokens,
# transformers), ViT-L/16 at the micro-batch the recipe's `batch_size: auto` picks for this GPU, compiled; and
# prints last the goals table of issue 10 (python -m maskkit.bench.goals). Logs and JSON go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# install without network or build isolation (the build backend must already be there: setuptools is)
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.txt" 2>&1 || echo "editable install failed; using PYTHONPATH"
for p in plugins/*/; do [ -f "$p/pyproject.toml" ] && python3 -m pip install -q --no-deps --no-build-isolation -e "$p" >>"$OUT/pip.txt" 2>&1; done
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
WORKERS=$(python3 -c "import os; print(min(16, os.cpu_count() or 1))")
BENCH=(python3 -m maskkit bench --device cuda --steps 5)

# 1. the CUDA tests (tests/test_cuda.py and every test marked cuda, the plugins' included)
timeout 110 python3 -m pytest -q -m cuda tests plugins 2>&1 | tee "$OUT/tests.txt" | tail -4
echo "CUDA tests exit status: ${PIPESTATUS[0]} (log: $OUT/tests.txt)"

# 2. ViT-B/16, batch 64, eager, every variant, and the data pipelines with every worker busy (nvJPEG's too)
timeout 110 "${BENCH[@]}" --models vit_base_patch16 --batch-size 64 --no-compile --workers "$WORKERS" \
  --json "$OUT/bench-B64.json" >"$OUT/bench-B64.txt" 2>&1 || echo "ViT-B/16 benchmark failed: see $OUT/bench-B64.txt"

# 3. maskkit train end to end, ViT-B/16 at batch 64 on generated JPEGs, eager like the bench rows above
timeout 30 python3 -c "
import sys; from pathlib import Path; from maskkit.bench.data import plain_pool, write_jpegs
pool = plain_pool($WORKERS); write_jpegs(Path(sys.argv[1]), 2048, pool=pool); pool.shutdown()" "$OUT/jpegs"
timeout 80 python3 -m maskkit train recipes/mae_vit_base_patch16.yaml --out "$OUT/train-B64" \
  data.root="$OUT/jpegs" train.batch_size=64 train.accum_steps=1 train.effective_batch=64 train.max_steps=60 \
  train.log_every=10 train.ckpt_every=0 train.warmup_epochs=0 train.num_workers="$WORKERS" train.compile=false \
  eval.knn=false eval.reconstructions=0 >"$OUT/train-B64.txt" 2>&1 || echo "maskkit train failed: see $OUT/train-B64.txt"

# 4. ViT-L/16, batch 64, compiled (train.compile: auto's setting on CUDA): MAE, mask tokens, transformers
timeout 150 "${BENCH[@]}" --models vit_large_patch16 --batch-size 64 --compile --variants mae,dense,hf --no-data \
  --json "$OUT/bench-L64.json" >"$OUT/bench-L64.txt" 2>&1 || echo "ViT-L/16 compiled benchmark failed: see $OUT/bench-L64.txt"

# 5. ViT-L/16 at the per-GPU micro-batch that batch_size: auto picks on this GPU, compiled
AUTO=$(python3 -c "
import torch, maskkit
from maskkit.engine.batch_rule import StepShape, pick_batch
r = maskkit.load_recipe('recipes/mae_vit_large_patch16.yaml')
print(pick_batch(StepShape.of(maskkit.build_model(r)), effective_batch=r.train.effective_batch, world_size=1,
                 device_type='cuda', memory_bytes=torch.cuda.get_device_properties(0).total_memory)[0])")
echo "batch_size: auto picks ${AUTO:-?} per GPU for ViT-L/16 here"
timeout 90 "${BENCH[@]}" --models vit_large_patch16 --batch-size "${AUTO:-256}" --compile --variants mae --no-data \
  --json "$OUT/bench-Lauto.json" >"$OUT/bench-Lauto.txt" 2>&1 || echo "ViT-L/16 auto-batch benchmark failed: see $OUT/bench-Lauto.txt"

# the extra cost of context-aware maskers (maskkit bench --masker) for those the installed plugins provide:
# with GPU_CHECK_FULL=1, or GPU_CHECK_MASKERS='attmask|hpm|adamae' (up to a minute each, beyond the 8 minutes)
if [ "${GPU_CHECK_FULL:-0}" = "1" ] || [ -n "${GPU_CHECK_MASKERS:-}" ]; then
  MASKERS=$(python3 -m maskkit list masker 2>/dev/null | grep -owE "${GPU_CHECK_MASKERS:-attmask|hpm|adamae}" | sort -u)
  for m in $MASKERS; do
    timeout 60 "${BENCH[@]}" --models vit_base_patch16 --batch-size 64 --masker "$m" \
      --json "$OUT/bench-masker-$m.json" >"$OUT/bench-masker-$m.txt" 2>&1; tail -1 "$OUT/bench-masker-$m.txt"
  done
fi

if [ "${GPU_CHECK_FULL:-0}" = "1" ]; then
  timeout 240 "${BENCH[@]}" --models vit_large_patch16 --batch-size 64 --no-compile --no-data \
    --json "$OUT/bench-L64-eager.json" >"$OUT/bench-L64-eager.txt" 2>&1 || echo "ViT-L/16 eager benchmark failed"
fi

tail -22 "$OUT/bench-L64.txt"
python3 -m maskkit.bench.goals "$OUT"
