#!/usr/bin/env bash
# maskkit's GPU check, for a machine with an NVIDIA GPU (adapted from ../shared/gpu-check.sh). It needs no
# network: torch, timm, pluggy, attrs, rich, pyyaml, pytest and hypothesis must already be installed
# (transformers too, for the ViTMAE reference rows of the benchmark). Run it from the repository root:
#     bash scripts/gpu-check.sh                  # about 5 minutes on one H100
#     GPU_CHECK_COMPILE=1 bash scripts/gpu-check.sh   # also ViT-L/16 compiled, MAE vs HF (minutes more)
# It runs the CUDA tests (`pytest -m cuda`: no host sync inside a training step, bf16 autocast, fused AdamW,
# masks on the GPU, torch.compile, the benchmark on a tiny model), then `maskkit bench` on ViT-B/16 and
# ViT-L/16 at 224 px (and `maskkit bench --masker` for the installed attmask/hpm/adamae maskers, or
# GPU_CHECK_MASKERS='a|b'), and prints the benchmark's table last. Full logs and the JSON results go to $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# install without network or build isolation (the build backend must already be there: setuptools is)
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/pip.txt" 2>&1 || echo "editable install failed; using PYTHONPATH"
for p in plugins/*/; do [ -f "$p/pyproject.toml" ] && python3 -m pip install -q --no-deps --no-build-isolation -e "$p" >>"$OUT/pip.txt" 2>&1; done
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"

# the CUDA tests (tests/test_cuda.py and every test marked cuda, the plugins' included)
timeout 240 python3 -m pytest -q -m cuda tests plugins 2>&1 | tee "$OUT/tests.txt" | tail -8
tests_rc=${PIPESTATUS[0]}

# the benchmark: maskkit's MAE, the mask-token encoder, the official-style MAE and transformers' ViTMAE
BENCH=(python3 -m maskkit bench)
if [ "${GPU_CHECK_COMPILE:-0}" = "1" ]; then
  timeout 540 "${BENCH[@]}" --device cuda --models vit_large_patch16 --variants mae,hf --batch-size 64 --steps 10 \
    --no-data --compile --json "$OUT/bench-compile.json" >"$OUT/bench-compile.txt" 2>&1 || echo "compiled benchmark failed: see $OUT/bench-compile.txt"
  tail -14 "$OUT/bench-compile.txt"
fi
echo "CUDA tests exit status: $tests_rc (log: $OUT/tests.txt)"
# the extra cost of context-aware maskers (maskkit bench --masker), for those the installed plugins provide
MASKERS=$(python3 -m maskkit list masker 2>/dev/null | grep -owE "${GPU_CHECK_MASKERS:-attmask|hpm|adamae}" | sort -u)
for m in $MASKERS; do
  timeout 180 "${BENCH[@]}" --device cuda --models vit_base_patch16 --batch-size 64 --steps 10 --masker "$m" \
    --json "$OUT/bench-masker-$m.json" 2>&1 | tee "$OUT/bench-masker-$m.txt" | tail -1
done
timeout 300 "${BENCH[@]}" --device cuda --models vit_base_patch16,vit_large_patch16 --batch-size 64 --steps 10 \
  --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" | tail -30
