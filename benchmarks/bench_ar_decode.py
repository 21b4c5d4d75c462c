"""Full-size keyframe AR decoding: milliseconds per keyframe with a LLaMA-2-7B-config backbone, against reading its
weights once per forward.

A random-weight LLaMA-2-7B-config backbone (``meta-llama/Llama-2-7b-hf``'s config, written out in
``bench_stage_memory``) inside mdream's ``KeyframeAR`` (GMM head, 2 tokens of 128 per keyframe), built on the meta
device and materialised on the target device in bf16, so nothing is downloaded. One ``MovieSession`` predicts
``--keyframes`` keyframes from random script conditioning (the encode stage's shapes; the time depends on sizes,
not on content): per keyframe one forward over the shot's conditioning chunk, then one per further token, through
transformers' dynamic KV cache (the sliding window and prefix as the keyframes stage uses them). Reports the median
milliseconds per keyframe and per forward, and the time one read of the weights takes at the device's measured
copy bandwidth (the floor of a forward that is bound by memory, not by kernel launches). ``--size tiny`` runs the
same code with a small Llama on the CPU (the tests).

    python -m benchmarks.bench_ar_decode [--size full|tiny] [--device cuda] [--keyframes 40] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.bench_ar_scaling import conditions
from benchmarks.bench_stage_memory import LLAMA_2_7B, TINY_LLAMA

TITLE = "Keyframe AR model: decoding at full size (LLaMA-2-7B config)"


def build(size: str, device: str, dtype: torch.dtype):
    """A random-weight KeyframeAR on ``device``: built on the meta device, materialised, initialised N(0, 0.02)."""
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    from mdream.models.keyframe_ar import KeyframeAR, KeyframeARConfig
    from mdream.models.toy_clip import build_word_tokenizer

    tokenizer = build_word_tokenizer([f"shot {i} of the long movie" for i in range(64)], max_length=32)
    config = LlamaConfig(**(LLAMA_2_7B if size == "full" else TINY_LLAMA))
    with init_empty_weights():  # parameters on the meta device; buffers (the rotary frequencies) computed as usual
        model = KeyframeAR(LlamaForCausalLM(config), tokenizer,
                           KeyframeARConfig(num_tokens=2, token_dim=128, text_dim=768 if size == "full" else 64,
                                            context_window=1024))
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model = model.to(dtype).to_empty(device=device)  # the weights allocated once, in their dtype
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # drawn where they live
            p.normal_(0.0, 0.02, generator=generator)
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    return model.eval()


def copy_bandwidth(device: str, gib: float = 2.0) -> float:
    """Bytes per second of a device-to-device copy (read + write counted once each, as a weight read reads once)."""
    n = int(gib * 2**30 / 2)
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    sync(device)
    return 2 * src.numel() * src.element_size() * 5 / (time.perf_counter() - t0)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(model, device: str, keyframes: int, warmup: int = 5) -> dict:
    shots = conditions(model, warmup + keyframes)
    session = model.start_movie()
    g = torch.Generator().manual_seed(0)
    per_keyframe = []
    for i, shot in enumerate(shots):
        sync(device)
        t0 = time.perf_counter()
        session.step(shot, temperature=1.0, generator=g)
        sync(device)
        if i >= warmup:
            per_keyframe.append(time.perf_counter() - t0)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    forwards = model.config.num_tokens  # the conditioning chunk, then one per further token
    ms = statistics.median(per_keyframe) * 1e3
    return {"ms_per_keyframe": ms, "forwards_per_keyframe": forwards, "ms_per_forward": ms / forwards,
            "weight_gb": weight_bytes / 1e9, "shifts": session.shifts}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keyframes", type=int, default=40)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = build(args.size, args.device, dtype)
    result = measure(model, args.device, args.keyframes)
    bandwidth = copy_bandwidth(args.device, 2.0 if args.size == "full" else 0.05)
    result["weight_read_ms"] = result["weight_gb"] * 1e9 / bandwidth * 1e3
    result["over_weight_read"] = result["ms_per_forward"] / result["weight_read_ms"]
    body = (
        "| backbone | device, dtype | ms per keyframe | forwards per keyframe | ms per forward | weights | one weight "
        "read | forward / weight read |\n|---|---|---:|---:|---:|---:|---:|---:|\n"
        f"| {'LLaMA-2-7B config' if args.size == 'full' else 'tiny Llama'} | {args.device}, {str(dtype)[6:]} | "
        f"{result['ms_per_keyframe']:.1f} | {result['forwards_per_keyframe']} | {result['ms_per_forward']:.1f} | "
        f"{result['weight_gb']:.2f} GB | {result['weight_read_ms']:.2f} ms | {result['over_weight_read']:.1f}x |\n\n"
        f"Median of {args.keyframes} keyframes after 5 of warm-up, random weights and conditioning; eager "
        "transformers decoding through its dynamic KV cache, as the keyframes stage runs it. The goal is a forward "
        "within 2x of one weight read.")
    print(body)
    if not args.no_write and args.size == "full" and args.device.startswith("cuda"):
        from benchmarks.results import update_section

        update_section(TITLE, body, f"python -m benchmarks.bench_ar_decode --keyframes {args.keyframes}")
    return result


if __name__ == "__main__":
    main()
