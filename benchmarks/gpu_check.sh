#!/bin/bash
# One short GPU check, for a CUDA machine with mdream's dependencies importable (run from the repo root):
#   1. `mdream train tokenizer` on the toy world with --mixed-precision auto (bf16 on CUDA): 40 steps, then a
#      resume to 60; prints the resolved precision, throughput, the last state and the saved weights' dtype;
#   2. the full-size SDXL-config render benchmark (writes its section of benchmarks/RESULTS.md);
#   3. the main job, `make demo`'s commands with --device cuda: the bundled storyboard through every built stage with
#      the shipped toy models, timed, then `mdream eval`; its keyframes are packed into $OUT/gpu-demo.tgz when $OUT
#      is set, to compare with a CPU run's pixels;
#   4. --offload on the GPU: the short example with and without it (every stage's peak GPU memory from the run
#      reports, and whether the two movies' frames are the same), then tests/test_offload.py where pytest is
#      importable (its model-level tests run on cuda too there);
#   5. tests/test_models_static_decode.py (the static KV cache and its CUDA graphs against the dynamic cache), then
#      the full-size keyframe AR decoding benchmark (a random LLaMA-2-7B-config backbone in bf16, with the dynamic
#      cache, the static cache and CUDA graphs: ms per keyframe against one read of its weights; writes its section
#      of benchmarks/RESULTS.md);
#   6. (only with MDREAM_GPU_CHECK_SVD=1) the full-size video speed benchmark (a random SVD-XT-config UNet, VAE and
#      image encoder in fp16: mdream's video pipeline eager, channels-last and with a compiled UNet against diffusers'
#      StableVideoDiffusionPipeline, 25 frames at 1024x576; writes its section of benchmarks/RESULTS.md);
#   7. (only with MDREAM_GPU_CHECK_FULL=1) the whole pipeline at full size (a random-weight bundle of the full
#      template's shapes, about 25 GB of safetensors written to RUN_FOLDER; 3 shots through `mdream generate` with
#      and without --offload: each stage's time and peak GPU memory; writes its section of benchmarks/RESULTS.md).
# Usage: bash benchmarks/gpu_check.sh [RUN_FOLDER]   (steps 1-5: about 3 minutes on an H200, most of it building the
#        SDXL UNet; steps 6 and 7 are not timed yet, estimated 5-8 minutes each: give each its own call with the others
#        skipped, e.g. MDREAM_GPU_CHECK_SVD=1 with _TRAIN=0 _SDXL=0 _DEMO=0 _OFFLOAD=0 _AR=0;
#        MDREAM_GPU_CHECK_TRAIN=0 / _SDXL=0 / _DEMO=0 / _OFFLOAD=0 / _AR=0 skip steps 1 / 2 / 3 / 4 / 5;
#        step 1 takes about a minute)
# insightface, diffusers and pydantic, where missing, are installed from the wheels in .gpuwheels/ (gpu_wheels.sh
# says how to make that folder).
set -u
export MDREAM_DEBUG=1  # a bug shows its traceback here, not the one-line internal error
RUN=${1:-/tmp/mdream-gpu-check}
rm -rf "$RUN"
ARGS=(--out "$RUN" --clip toy --face-embedder none --no-character-text --num-frames 256 --checkpoint-every 20 --log-every 10 --max-minutes 3)
source benchmarks/gpu_wheels.sh
python3 -c "import torch; from mdream.training.common import resolve_mixed_precision as r; \
print('cuda', torch.cuda.is_available(), torch.__version__, '| --mixed-precision auto ->', r('auto'))"
if [ "${MDREAM_GPU_CHECK_TRAIN:-1}" != 0 ]; then
python3 -m mdream train tokenizer "${ARGS[@]}" --steps 40 2>&1 | grep -E "step |done|training|Error|error" || exit 1
python3 -m mdream train tokenizer "${ARGS[@]}" --steps 60 --resume auto 2>&1 | grep -E "step |done|resumed|Error|error" || exit 1
python3 - "$RUN" <<'PY'
import json, sys
from pathlib import Path
from safetensors import safe_open
run = Path(sys.argv[1])
last = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
print("last checkpoint", json.loads((last / "state.json").read_text()))
with safe_open(str(next((last / "decoder" / "unet").glob("*.safetensors"))), "pt") as f:
    print("saved UNet dtypes", sorted({str(f.get_tensor(k).dtype) for k in f.keys()}))
PY
fi
if [ "${MDREAM_GPU_CHECK_SDXL:-1}" != 0 ]; then
  python3 -m benchmarks.bench_sdxl_render --device cuda --dtype fp16
fi
if [ "${MDREAM_GPU_CHECK_DEMO:-1}" != 0 ]; then
  DEMO="$RUN/demo"
  mkdir -p "$DEMO"
  python3 -m mdream script-validate examples/scripts/storyboard.yaml || exit 1
  TIMEFORMAT="generate: %R s wall"
  time python3 -m mdream generate examples/scripts/storyboard.yaml \
      -o "$DEMO/storyboard.mp4" --until render --device cuda || exit 1
  python3 -m mdream eval "$DEMO/storyboard" --script examples/scripts/storyboard.yaml || exit 1
  [ -n "${OUT:-}" ] && tar czf "$OUT/gpu-demo.tgz" -C "$DEMO" storyboard
fi
if [ "${MDREAM_GPU_CHECK_OFFLOAD:-1}" != 0 ]; then
  for mode in plain offload; do
    flag=$([ "$mode" = offload ] && echo --offload)
    mkdir -p "$RUN/$mode"
    python3 -m mdream generate examples/scripts/short.yaml -o "$RUN/$mode/short.mp4" --cache-dir "$RUN/$mode/cache" \
        --device cuda $flag --json > "$RUN/$mode.json" || exit 1
    python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print(sys.argv[2], [(s['stage'], round(s['seconds'], 1), \
s['peak_gpu_bytes']) for s in r['stages']])" "$RUN/$mode.json" "$mode"
  done
  python3 - "$RUN" <<'PY'
import sys
import imageio_ffmpeg
def frames(path):
    reader = imageio_ffmpeg.read_frames(path)
    next(reader)
    return [bytes(f) for f in reader]
a, b = (frames(f"{sys.argv[1]}/{m}/short.mp4") for m in ("plain", "offload"))
print("offloaded movie frames identical:", len(a), "frames,", a == b)
PY
  python3 -c "import pytest" 2>/dev/null && python3 -m pytest -q tests/test_offload.py -p no:cacheprovider
fi
if [ "${MDREAM_GPU_CHECK_AR:-1}" != 0 ]; then
  python3 -c "import pytest" 2>/dev/null && python3 -m pytest -q tests/test_models_static_decode.py -p no:cacheprovider
  python3 -m benchmarks.bench_ar_decode --device cuda
fi
if [ "${MDREAM_GPU_CHECK_SVD:-0}" = 1 ]; then
  python3 -m benchmarks.bench_svd_video --device cuda --repeats 2
fi
if [ "${MDREAM_GPU_CHECK_FULL:-0}" = 1 ]; then
  python3 -m benchmarks.bench_fullsize_pipeline --device cuda --folder "$RUN/fullsize"
fi
