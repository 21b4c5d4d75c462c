"""The keyframe AR model over a long movie: time and memory per keyframe stay flat.

Generates ``--shots`` keyframes with the shipped toy keyframe AR model (one ``MovieSession``: a KV cache over a
fixed prefix and a window of recent shots that slides), from random script conditioning (the model's inputs have
the encode stage's shapes; the numbers depend on sizes, not on content), and reports: time per keyframe around
keyframe 10-60 and over the last 50, their ratio (and the ratio of the last 50 over keyframes 101-150, when the
window has filled once: the cost per keyframe grows with the context until the window is full, then stays flat), and
the same with the window recomputed at each slide instead of cut and rotated; the process's resident memory after 100
and after 1,000 keyframes;
and the same movie without a KV cache (the whole window recomputed at every step), for the cache's speed-up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.results import update_section
from mdream.models.bundle import ModelBundle
from mdream.models.keyframe_ar import ShotCondition

TITLE = "Keyframe AR model: time and memory over 1,000 keyframes"


def rss_mib() -> float:
    """Resident memory of this process now (MiB), from /proc."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def conditions(model, n: int, seed: int = 0) -> list[ShotCondition]:
    g = torch.Generator().manual_seed(seed)
    text_dim, out = model.config.text_dim, []
    for i in range(n):
        mask = torch.rand(3, generator=g) < 0.5
        mask[i % 3] = True
        faces = torch.nn.functional.normalize(torch.randn(3, 512, generator=g), dim=-1) * mask[:, None]
        out.append(ShotCondition(
            identifier=f"shot {i} of the long movie", descriptor_embed=torch.randn(text_dim, generator=g),
            face_embeds=faces, face_mask=mask, character_text_embeds=torch.randn(3, text_dim, generator=g) * mask[:, None],
        ))
    return out


def run(model, shots: list[ShotCondition], use_cache: bool, marks: tuple[int, ...],
        slide: str = "auto") -> tuple[list[float], dict[int, float]]:
    """Seconds per keyframe for each shot, and the resident memory after each mark."""
    session = model.start_movie(use_cache=use_cache, slide=slide)
    g = torch.Generator().manual_seed(0)
    seconds, memory = [], {}
    for i, shot in enumerate(shots, 1):
        t0 = time.perf_counter()
        session.step(shot, temperature=1.0, generator=g)
        seconds.append(time.perf_counter() - t0)
        if i in marks:
            memory[i] = rss_mib()
    return seconds, memory


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shots", type=int, default=1000)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ModelBundle.find("toy").load("keyframe_ar", device="cpu").eval()
    shots = conditions(model, args.shots)
    n = args.shots
    cached, memory = run(model, shots, True, (100, n))
    recomputed, _ = run(model, shots, True, (), slide="recompute")
    uncached, _ = run(model, shots, False, ())
    slide = model.start_movie().slide
    early, late = mean(cached[10:60]), mean(cached[n - 50 :])  # 50 each: every slide of the window counted
    full = mean(cached[100:150]) if n >= 200 else float("nan")
    body = (
        f"`python -m benchmarks.bench_ar_scaling --shots {n}`: the shipped toy keyframe AR model "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, generation window "
        f"{model.config.context_window} positions) generating {n} keyframes in one generation run (one MovieSession), from random conditioning "
        f"with the encode stage's shapes. The window slides by `{slide}` (the oldest half of the history cut out of "
        "the KV cache, the keys after it rotated back); the row *recomputed at each slide* is the same movie with "
        "`slide=\"recompute\"` (a pass over the kept window at each slide).\n\n"
        "| measure | value |\n|---|---|\n"
        f"| ms per keyframe, keyframes 11-60 | {early * 1e3:.2f} |\n"
        f"| ms per keyframe, the last 50 | {late * 1e3:.2f} |\n"
        f"| ratio (goal <= 1.2) | {late / early:.2f} |\n"
        f"| ms per keyframe, keyframes 101-150 (the window full) | {full * 1e3:.2f} |\n"
        f"| ratio of the last 50 over keyframes 101-150 | {late / full:.2f} |\n"
        f"| recomputed at each slide: ms per keyframe, the last 50 (ratio over keyframes 11-60) | "
        f"{mean(recomputed[n - 50 :]) * 1e3:.2f} ({mean(recomputed[n - 50 :]) / mean(recomputed[10:60]):.2f}) |\n"
        f"| resident memory after 100 keyframes (MiB) | {memory[100]:.0f} |\n"
        f"| resident memory after {n} keyframes (MiB) | {memory[n]:.0f} |\n"
        f"| ratio (goal <= 1.1) | {memory[n] / memory[100]:.3f} |\n"
        f"| whole movie with the KV cache (s) | {sum(cached):.1f} |\n"
        f"| whole movie recomputing the window at every step (s) | {sum(uncached):.1f} |\n"
        f"| speed-up of the cache | {sum(uncached) / sum(cached):.2f}x |\n"
    )
    update_section(TITLE, body, f"python -m benchmarks.bench_ar_scaling --shots {n}")
    print(body)


if __name__ == "__main__":
    main()
