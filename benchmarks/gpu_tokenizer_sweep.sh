#!/bin/bash
# Several toy-tokenizer recipes trained side by side on one CUDA GPU at equal training time, then each evaluated on
# held-out frames, all in one device call. On an H200, four runs at batch 256 made 890-1,440 frames/s each: 3.5
# minutes gave each about 256,000 frames in about 1,000 steps, where a 2 h CPU run sees 384,000 in 12,000 steps of
# 32. So such a sweep ranks recipes early in training, not at the CPU recipe's end point (docs/experiments/compute.md).
# At batch 32, five runs side by side made 1,200-2,000 steps each in 3.5 minutes.
#
# Usage: RUNS="GM GO" EXTRA_GM="--lookalike-share 0.2" EXTRA_GO="--lookalike-share 0.3" \
#          bash benchmarks/gpu_tokenizer_sweep.sh WORK OUT MINUTES BATCH EVAL_FRAMES
#   The first run in RUNS renders the 30,000 frames and embeds them: give it every mask the others need (a run with
#   --character-weight other than 1 and --lookalike-share above 0); the others start once its caches are written, from copies.
#   SEED_CACHE: a folder of caches from a CPU run of the same world, seed and frame count (descriptor_embeds.npz,
#   face_bank.npz: about a minute of the machine's time saved), copied into the first run; a cache made from other
#   inputs is rebuilt (each is keyed by what it was made from), so a run with another --image-size renders its own.
#   Where diffusers, pydantic or insightface (the evaluation's face embedder) is missing, the wheels in .gpuwheels/
#   are installed first (benchmarks/gpu_wheels.sh says how to make that folder). NUM_FRAMES: 30,000 unless set.
#   OUT gets one NAME.tgz per run: its last checkpoint's encoder/, decoder/ and state.json, its train_config.json, its
#   training log and its evaluation (NAME-eval.json, from `mdream train tokenizer-eval`, which runs on the CPU cores).
set -u
WORK=$1; OUT=$2; MINUTES=$3; BATCH=$4; EVAL_FRAMES=$5
mkdir -p "$OUT"
source benchmarks/gpu_wheels.sh
ARGS=(--clip toy --num-frames "${NUM_FRAMES:-30000}" --steps 100000 --max-minutes "$MINUTES" --batch-size "$BATCH"
      --checkpoint-every 500 --keep-checkpoints 1 --log-every 250)
export OMP_NUM_THREADS=4 MDREAM_DEBUG=1
read -r -a names <<< "$RUNS"
first=${names[0]}
pids=()
for r in "${names[@]}"; do
  mkdir -p "$WORK/$r"
  if [ "$r" = "$first" ] && [ -n "${SEED_CACHE:-}" ]; then cp "$SEED_CACHE"/*.np[yz] "$WORK/$r/"; fi
  if [ "$r" != "$first" ]; then
    while [ ! -f "$WORK/$first/vision_features_layer-1.npz" ] && kill -0 "${pids[0]}" 2>/dev/null; do sleep 2; done
    for f in frames.npz descriptor_embeds.npz face_bank.npz vision_features_layer-1.npz; do
      [ -f "$WORK/$first/$f" ] && cp "$WORK/$first/$f" "$WORK/$r/"
    done
  fi
  extra="EXTRA_$r"
  echo "$(date -u +%T) start $r: ${!extra:-}"
  # shellcheck disable=SC2086  # the extra options are meant to split into words
  python3 -m mdream train tokenizer --out "$WORK/$r" "${ARGS[@]}" ${!extra:-} > "$WORK/$r/train.log" 2>&1 &
  pids+=($!)
done
wait
echo "$(date -u +%T) training done"
for r in "${names[@]}"; do
  grep -E "^step |budget|done:" "$WORK/$r/train.log" | tail -n 3
  last="$WORK/$r/checkpoints/$(cat "$WORK/$r/checkpoints/latest")"
  python3 -m mdream train tokenizer-eval "$last" --frames "$EVAL_FRAMES" --steps 20 --probe-frames 0 \
      --conditions tokens+faces,tokens+faces+text --save "$WORK/$r/$r-eval.json" > "$WORK/$r/eval.log" 2>&1 &
done
wait
echo "$(date -u +%T) evaluations done"
for r in "${names[@]}"; do
  last="$WORK/$r/checkpoints/$(cat "$WORK/$r/checkpoints/latest")"
  python3 - "$r" "$WORK/$r/$r-eval.json" <<'PY'
import json, sys
try:
    res = json.load(open(sys.argv[2]))["results"]
except (OSError, ValueError, KeyError) as exc:
    print(sys.argv[1], "no evaluation:", exc)
else:
    print(sys.argv[1], " | ".join(f"{c}: scene {v['scene']:.3f} cast {v['cast']:.3f} both {v['scene_and_cast']:.3f}"
                                  for c, v in res.items()))
PY
  tail -n 3 "$WORK/$r/eval.log"
  cp "$WORK/$r/train.log" "$WORK/$r/eval.log" "$WORK/$r/train_config.json" "$last/"
  [ -f "$WORK/$r/$r-eval.json" ] && cp "$WORK/$r/$r-eval.json" "$last/"
  tar czf "$OUT/$r.tgz" -C "$last" encoder decoder state.json train.log eval.log train_config.json \
      $( [ -f "$last/$r-eval.json" ] && echo "$r-eval.json")
done
