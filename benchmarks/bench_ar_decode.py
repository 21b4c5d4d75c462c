"""Full-size keyframe AR decoding: milliseconds per keyframe with a LLaMA-2-7B-config backbone, against reading its
weights once per forward.

A random-weight LLaMA-2-7B-config backbone (``meta-llama/Llama-2-7b-hf``'s config, written out in
``bench_stage_memory``) inside mdream's ``KeyframeAR`` (GMM head, 2 tokens of 128 per keyframe), built on the meta
device and materialised on the target device in bf16, so nothing is downloaded. One ``MovieSession`` predicts
``--keyframes`` keyframes from random script conditioning (the encode stage's shapes; the time depends on sizes,
not on content): per keyframe one forward over the shot's conditioning chunk, then one per further token (the
sliding window and prefix as the keyframes stage uses them), once per KV cache (``MovieSession``'s ``decode``):
transformers' dynamic cache (eager), the static cache driven at fixed shapes (eager), and the static cache with each
forward replayed from a captured CUDA graph (CUDA only). Reports the median milliseconds per keyframe and per forward,
and the time one read of the weights takes at the device's measured copy bandwidth (the floor of a forward that is
bound by memory, not by kernel launches); the movies' tokens at temperature 0 are compared with the dynamic cache's.
``--size tiny`` runs the same code with a small Llama on the CPU (the tests).

    python -m benchmarks.bench_ar_decode [--size full|tiny] [--device cuda] [--keyframes 40] [--decode MODE ...]
        [--no-write]
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


def measure(model, device: str, keyframes: int, decode: str = "dynamic", warmup: int = 5) -> dict:
    """One movie of ``warmup + keyframes`` keyframes at temperature 0 with the ``decode`` KV cache: the median time
    per keyframe after the warm-up (where each CUDA graph is captured) and the tokens."""
    shots = conditions(model, warmup + keyframes)
    session = model.start_movie(decode=decode)
    per_keyframe, tokens = [], []
    for i, shot in enumerate(shots):
        sync(device)
        t0 = time.perf_counter()
        tokens.append(session.step(shot, temperature=0.0))
        sync(device)
        if i >= warmup:
            per_keyframe.append(time.perf_counter() - t0)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    forwards = model.config.num_tokens  # the conditioning chunk, then one per further token
    ms = statistics.median(per_keyframe) * 1e3
    return {"decode": decode, "ms_per_keyframe": ms, "forwards_per_keyframe": forwards, "ms_per_forward": ms / forwards,
            "weight_gb": weight_bytes / 1e9, "shifts": session.shifts, "tokens": torch.stack(tokens),
            "graph_replays": session.static.replays if session.static is not None else 0}


LABELS = {"dynamic": "dynamic cache, eager", "static": "static cache, eager", "graphs": "static cache, CUDA graphs"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--keyframes", type=int, default=40)
    parser.add_argument("--decode", nargs="+", choices=tuple(LABELS), default=None,
                        help="KV caches to time (default: all that the device runs; graphs need CUDA)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    modes = args.decode or [m for m in LABELS if m != "graphs" or args.device.startswith("cuda")]
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = build(args.size, args.device, dtype)
    runs, failed = {}, {}
    for mode in modes:
        try:
            runs[mode] = measure(model, args.device, args.keyframes, mode)
        except Exception as error:  # a GPU check has one try: report the mode that fails and time the others
            if mode == modes[0]:
                raise
            failed[mode] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    bandwidth = copy_bandwidth(args.device, 2.0 if args.size == "full" else 0.05)
    reference = runs[modes[0]]["tokens"]
    rows = []
    for mode, run in runs.items():
        run["weight_read_ms"] = run["weight_gb"] * 1e9 / bandwidth * 1e3
        run["over_weight_read"] = run["ms_per_forward"] / run["weight_read_ms"]
        run["max_token_difference"] = float((run.pop("tokens") - reference).abs().max())
        rows.append(f"| {LABELS[mode]} | {run['ms_per_keyframe']:.1f} | {run['ms_per_forward']:.1f} | "
                    f"{run['over_weight_read']:.1f}x | {run['max_token_difference']:.2g} |")
    rows += [f"| {LABELS[mode]} | failed: {message} | | | |" for mode, message in failed.items()]
    first = runs[modes[0]]
    body = (
        f"{'LLaMA-2-7B config' if args.size == 'full' else 'tiny Llama'} backbone, {args.device}, {str(dtype)[6:]}: "
        f"weights {first['weight_gb']:.2f} GB, one read of them {first['weight_read_ms']:.2f} ms at the measured copy "
        f"bandwidth ({bandwidth / 1e12:.2f} TB/s); {first['forwards_per_keyframe']} forwards per keyframe (the shot's "
        "conditioning chunk, then the second token).\n\n"
        f"| KV cache | ms per keyframe | ms per forward | forward / weight read | max token difference vs the "
        f"{LABELS[modes[0]]} |\n|---|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n\n"
        f"Median of {args.keyframes} keyframes after 5 of warm-up (where each CUDA graph is captured), random weights "
        "and conditioning, temperature 0. The goal is a forward within 2x of one weight read.")
    print(body)
    if not args.no_write and args.size == "full" and args.device.startswith("cuda"):
        from benchmarks.results import update_section

        update_section(TITLE, body, f"python -m benchmarks.bench_ar_decode --keyframes {args.keyframes}")
    return runs


if __name__ == "__main__":
    main()
