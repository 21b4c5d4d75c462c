#!/bin/bash
# Two toy-tokenizer trainings side by side on one CUDA GPU, at equal training time, for an A/B at more compute than
# the 2-core CPU budget allows: run A (GP) passes EXTRA_A, run B (GC) passes EXTRA_B, both on the same 30,000 frames.
# The finished runs' exported encoder/ and decoder/ (EMA) are packed into OUT/GP.tgz and OUT/GC.tgz (the device tool
# brings back shallow folders only) for `mdream train tokenizer-eval` elsewhere. Resume both with --resume auto.
# Usage: EXTRA_A="--position-channels 2" EXTRA_B="" bash benchmarks/gpu_tokenizer_ab.sh WORK OUT MINUTES BATCH [FACE_BANK]
#   FACE_BANK: a face_bank.npy from a CPU run of the same world and seed, for machines without onnxruntime.
set -u
WORK=$1; OUT=$2; MINUTES=$3; BATCH=$4; BANK=${5:-}
mkdir -p "$WORK/GP" "$WORK/GC" "$OUT"
[ -n "$BANK" ] && cp "$BANK" "$WORK/GP/face_bank.npy" && cp "$BANK" "$WORK/GC/face_bank.npy"
ARGS=(--clip toy --num-frames 30000 --steps 100000 --max-minutes "$MINUTES" --batch-size "$BATCH" --character-weight 4
      --checkpoint-every 500 --keep-checkpoints 1 --log-every 250)
export OMP_NUM_THREADS=4 MDREAM_DEBUG=1
python3 -m mdream train tokenizer --out "$WORK/GP" "${ARGS[@]}" ${EXTRA_A:-} > "$OUT/GP.log" 2>&1 &
A=$!
# B reuses A's frames and CLIP features once A has written them (the same world seed and seed give the same frames)
while [ ! -f "$WORK/GP/vision_features_layer-1.npz" ] && kill -0 $A 2>/dev/null; do sleep 2; done
cp "$WORK/GP/frames.npz" "$WORK/GP/descriptor_embeds.npy" "$WORK/GP/vision_features_layer-1.npz" "$WORK/GC/"
python3 -m mdream train tokenizer --out "$WORK/GC" "${ARGS[@]}" ${EXTRA_B:-} > "$OUT/GC.log" 2>&1 &
B=$!
wait $A; wait $B
for r in GP GC; do
  last="$WORK/$r/checkpoints/$(cat "$WORK/$r/checkpoints/latest")"
  cp "$WORK/$r/train_config.json" "$OUT/$r-train_config.json"
  tar czf "$OUT/$r.tgz" -C "$last" encoder decoder state.json
  grep -E "^step " "$OUT/$r.log" | tail -n 2
done
