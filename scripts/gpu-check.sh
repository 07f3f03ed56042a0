#!/usr/bin/env bash
# maskkit's GPU check, for a machine with an NVIDIA GPU (adapted from ../shared/gpu-check.sh). It needs no
# network: torch, timm, pluggy, attrs, rich, pyyaml, pytest and hypothesis must already be installed
# (transformers too, for the ViTMAE reference rows). Run it from the repository root:
#     bash scripts/gpu-check.sh                      # 7-8 minutes on one H100/H200; each part has a timeout, and
#                                                    # they add up to 565 s (the last one, ViT-L/16 compiled whole,
#                                                    # counted at 90 s: it may use what the others left, up to
#                                                    # 240 s), for the device's 600 s a call; each is
#                                                    # also cut to what is left of the call (GPU_CHECK_SECONDS=600)
#                                                    # but 30 s, so that the goals table is printed within the call
#                                                    # whatever the untimed steps (installs, version line) took
#     GPU_CHECK_FULL=1 bash scripts/gpu-check.sh     # also ViT-L/16 eager with every variant, the installed
#                                                    # context-aware maskers (bench --masker) and the CPU parity
#                                                    # bench (ViT-B/16 on the CPU; minutes more)
#     GPU_CHECK_REHEARSAL=1 bash scripts/gpu-check.sh   # every command below on the CPU with one-block models and
#                                                    # a few images (about a minute; tests/test_gpu_check.py):
#                                                    # checks the script and the goals table, measures nothing
# It runs the CUDA tests (`pytest -m cuda`), then `maskkit bench`: ViT-B/16 at batch 64 eager with every variant
# and the data pipelines (loader against a plain decode + crop loop; data.decode: device, nvJPEG, over the same
# files), `maskkit train` of ViT-B/16 at batch 64 on
# generated JPEGs (end to end against the bench's images/s; then again with data.decode: device), ViT-L/16 at batch
# 64 compiled block by block (MAE, mask tokens, transformers), ViT-L/16 at the micro-batch the recipe's
# `batch_size: auto` picks for this GPU, compiled whole; and
# prints last the goals table of issue 10 (python -m maskkit.bench.goals).
# $OUT ends with what the goals read (the benchmarks' JSON, the training runs' metrics.jsonl), goals.json and
# logs.tar.gz (every log), a few small files, as a device tool sends back (the lent GPU machine here: at most 8
# files of 16 MiB); the generated JPEGs and the training runs' folders (a 1.3 GB checkpoint each) go to a scratch
# folder removed at the end. A part that fails prints the end of its log, so the reason is in the output too.
# A benchmark whose timeout comes while it times its rounds stops after the round under way and still writes the
# rounds done (its log, JSON and the goals table say "stopped after k of n rounds"; timeout reports 124). One whose
# timeout comes earlier (data pipelines, compiling before any round) ends at once and leaves its goals unmeasured.
# A part still running KILL_AFTER s after its timeout's SIGTERM (a training run stops at a step boundary and saves
# a checkpoint first; a benchmark finishes its round) is killed, so that no part outlives its share.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d)}; LOGS=$OUT/logs; mkdir -p "$LOGS"
SCRATCH=$(mktemp -d); trap 'rm -rf "$SCRATCH"' EXIT
# failed WHAT LOG: say that WHAT failed, with the end of its LOG
failed() { echo "$1: see $2"; tail -n 8 "$2" 2>/dev/null | sed 's/^/    /'; }
# within CAP COMMAND...: COMMAND with a timeout of CAP seconds, cut to what is left before END (with GPU_CHECK_FULL or
# GPU_CHECK_MASKERS, which take longer than a 600 s call, give GPU_CHECK_SECONDS), and killed KILL_AFTER s after
# its timeout's SIGTERM if still running: so every part ends by END, and the goals table comes within the call
[ "${GPU_CHECK_FULL:-0}" = "1" ] || [ -n "${GPU_CHECK_MASKERS:-}" ] && CALL=3600 || CALL=600
END=$(( ${GPU_CHECK_SECONDS:-$CALL} - 30 )); KILL_AFTER=10
within() {
  local left=$(( END - KILL_AFTER - SECONDS )); (( left < 1 )) && left=1
  timeout -k "$KILL_AFTER" "$(( $1 < left ? $1 : left ))" "${@:2}"
}
# metrics RUN: the goals read $OUT/RUN/metrics.jsonl; the rest of the run folder stays in $SCRATCH
metrics() { mkdir -p "$OUT/$1" && cp "$SCRATCH/$1/metrics.jsonl" "$OUT/$1/" 2>/dev/null; }
if [ "${GPU_CHECK_REHEARSAL:-0}" = "1" ]; then
  DEVICE=cpu; BATCH=4; JPEGS=64; TRAIN_STEPS=6; COMPILE=--no-compile; GOALS=(--rehearsal)
  TINY=(encoder.img_size=32 encoder.depth=1 encoder.embed_dim=32 encoder.num_heads=2 decoder.depth=1
        decoder.embed_dim=32 decoder.num_heads=2)
  SETS=(); for kv in "${TINY[@]}"; do SETS+=(--set "$kv"); done
  DATA=(--data-images 64 --device-decode)
else
  DEVICE=cuda; BATCH=64; JPEGS=2048; TRAIN_STEPS=60; COMPILE=--compile; GOALS=(); TINY=(); SETS=(); DATA=()
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"
  # install without network or build isolation (the build backend must already be there: setuptools is)
  # (--no-index: nothing to look up, and no pip self-version check, a request of up to 5 s per call)
  PIP=(python3 -m pip install -q --no-index --no-deps --no-build-isolation)
  "${PIP[@]}" -e . >"$LOGS/pip.txt" 2>&1 || echo "editable install failed; using PYTHONPATH"
  for p in plugins/*/; do [ -f "$p/pyproject.toml" ] && "${PIP[@]}" -e "$p" >>"$LOGS/pip.txt" 2>&1; done
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__,
            torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee "$LOGS/versions.txt"
WORKERS=$(python3 -c "import os; print(min(16, os.cpu_count() or 1))")
# every tensor a loader worker sends holds an open file while in flight (16 workers x 4 batches: 64 at least,
# more for crops a worker decoded under data.decode: device): lift the soft limit on open files to the hard one
ulimit -n "$(ulimit -Hn)" 2>/dev/null; echo "open files: soft $(ulimit -n), hard $(ulimit -Hn)" | tee -a "$LOGS/versions.txt"
BENCH=(python3 -m maskkit bench --device "$DEVICE" --steps 5)

# 1. the CUDA tests (tests/test_cuda.py and every test marked cuda, the plugins' included)
if [ "$DEVICE" = cuda ]; then
  within 80 python3 -m pytest -v -rfE -m cuda plugins tests 2>&1 | tee "$LOGS/tests.txt" | tail -2
  echo "CUDA tests exit status: ${PIPESTATUS[0]} (log: $LOGS/tests.txt)"
  # the failed tests by name, even when the timeout cut the summary off (and collection errors)
  grep -E " (FAILED|ERROR) +\[|^ERROR " "$LOGS/tests.txt" | head -20
fi

# 2. ViT-B/16, batch 64, eager, every variant, and the data pipelines with every worker busy (nvJPEG's too)
within 90 "${BENCH[@]}" --models vit_base_patch16 --batch-size "$BATCH" --no-compile --workers "$WORKERS" \
  "${DATA[@]}" "${SETS[@]}" --json "$OUT/bench-B64.json" >"$LOGS/bench-B64.txt" 2>&1 \
  || failed "ViT-B/16 benchmark failed or timed out" "$LOGS/bench-B64.txt"

# 3. maskkit train end to end, ViT-B/16 at batch 64 on generated JPEGs, eager like the bench rows above; one
#    checkpoint half-way, in a logged window (metrics.jsonl's checkpoint_s): the goals table spreads its cost over
#    the shipped recipe's images between checkpoints
within 30 python3 -c "
import sys; from pathlib import Path; from maskkit.bench.data import plain_pool, write_jpegs
pool = plain_pool($WORKERS); write_jpegs(Path(sys.argv[1]), $JPEGS, pool=pool); pool.shutdown()" "$SCRATCH/jpegs" \
  >"$LOGS/jpegs.txt" 2>&1 || failed "writing the training JPEGs failed or timed out" "$LOGS/jpegs.txt"
TRAIN=(python3 -m maskkit train recipes/mae_vit_base_patch16.yaml data.root="$SCRATCH/jpegs" train.batch_size="$BATCH"
       train.accum_steps=1 train.effective_batch="$BATCH" train.max_steps="$TRAIN_STEPS"
       train.log_every=$((TRAIN_STEPS / 6)) train.ckpt_every=$((TRAIN_STEPS / 2)) train.warmup_epochs=0 train.num_workers="$WORKERS"
       train.compile=false eval.knn=false eval.reconstructions=0 "${TINY[@]}" train.device="$DEVICE")
within 60 "${TRAIN[@]}" --out "$SCRATCH/train-B64" >"$LOGS/train-B64.txt" 2>&1 \
  || failed "maskkit train failed" "$LOGS/train-B64.txt"
metrics train-B64
# 3b. the same with data.decode: device (workers read files; nvJPEG decodes two batches ahead, in a thread)
within 45 "${TRAIN[@]}" data.decode=device --out "$SCRATCH/train-B64-device" >"$LOGS/train-B64-device.txt" 2>&1 \
  || failed "maskkit train with data.decode: device failed" "$LOGS/train-B64-device.txt"
metrics train-B64-device

# 4. ViT-L/16, batch 64, compiled block by block (train.compile_scope: blocks; compiled whole, three ViT-L models
#    could take longer to compile than this part has): MAE, mask tokens, transformers
within 130 "${BENCH[@]}" --models vit_large_patch16 --batch-size "$BATCH" "$COMPILE" --compile-scope blocks \
  --variants mae,dense,hf --no-data \
  "${SETS[@]}" --json "$OUT/bench-L64.json" >"$LOGS/bench-L64.txt" 2>&1 \
  || failed "ViT-L/16 compiled benchmark failed or timed out" "$LOGS/bench-L64.txt"

# 5. ViT-L/16 at the per-GPU micro-batch that batch_size: auto picks on this GPU, compiled whole as train.compile:
#    auto compiles (its compile column: the whole-model compile time) (a rehearsal picks for an 80 GiB GPU and
#    benchmarks its small batch). The last part: compiling ViT-L/16 whole may take more than its 90 s share, so it
#    may run up to 240 s, taking what the earlier parts left unused (the deadline still ends it within the call)
AUTO=$(within 40 python3 -c "
import torch, maskkit
from maskkit.engine.batch_rule import StepShape, pick_batch
r = maskkit.load_recipe('recipes/mae_vit_large_patch16.yaml')
memory = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 80 * 2**30
with torch.device('meta'):  # shapes only: no memory, no initialisation
    model = maskkit.build_model(r)
print(pick_batch(StepShape.of(model), effective_batch=r.train.effective_batch, world_size=1,
                 device_type='cuda', memory_bytes=memory)[0])")
echo "batch_size: auto picks ${AUTO:-?} per GPU for ViT-L/16 here"
[ "$DEVICE" = cpu ] && AUTO=$BATCH
within 240 "${BENCH[@]}" --models vit_large_patch16 --batch-size "${AUTO:-256}" "$COMPILE" --variants mae --no-data \
  "${SETS[@]}" --json "$OUT/bench-Lauto.json" >"$LOGS/bench-Lauto.txt" 2>&1 \
  || failed "ViT-L/16 auto-batch benchmark failed or timed out" "$LOGS/bench-Lauto.txt"

# the extra cost of context-aware maskers (maskkit bench --masker) for those the installed plugins provide:
# with GPU_CHECK_FULL=1, or GPU_CHECK_MASKERS='attmask|hpm|adamae' (up to a minute each, beyond the 8 minutes)
if [ "${GPU_CHECK_FULL:-0}" = "1" ] || [ -n "${GPU_CHECK_MASKERS:-}" ]; then
  MASKERS=$(python3 -m maskkit list masker 2>/dev/null | grep -owE "${GPU_CHECK_MASKERS:-attmask|hpm|adamae}" | sort -u)
  for m in $MASKERS; do
    within 60 "${BENCH[@]}" --models vit_base_patch16 --batch-size "$BATCH" --masker "$m" "${SETS[@]}" \
      --json "$OUT/bench-masker-$m.json" >"$LOGS/bench-masker-$m.txt" 2>&1; tail -1 "$LOGS/bench-masker-$m.txt"
  done
fi

if [ "${GPU_CHECK_FULL:-0}" = "1" ]; then
  within 240 "${BENCH[@]}" --models vit_large_patch16 --batch-size "$BATCH" --no-compile --no-data "${SETS[@]}" \
    --json "$OUT/bench-L64-eager.json" >"$LOGS/bench-L64-eager.txt" 2>&1 \
    || failed "ViT-L/16 eager benchmark failed or timed out" "$LOGS/bench-L64-eager.txt"
  # the CPU parity goal: maskkit's step against the official-style one on this machine's CPU, fp32
  within 180 python3 -m maskkit bench --device cpu --models vit_base_patch16 --variants mae,official --no-data \
    --steps 5 "${SETS[@]}" --json "$OUT/bench-cpu.json" >"$LOGS/bench-cpu.txt" 2>&1 \
    || failed "CPU parity benchmark failed or timed out" "$LOGS/bench-cpu.txt"
fi

tail -22 "$LOGS/bench-L64.txt"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$LOGS"  # one file for all the logs (tar -xzf to read them)
python3 -m maskkit.bench.goals "${GOALS[@]}" "$OUT"
