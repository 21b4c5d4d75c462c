"""`make bench`: run every benchmark; each writes its own section of benchmarks/RESULTS.md."""

from __future__ import annotations

import shlex
import subprocess
import sys

BENCHMARKS = [
    "benchmarks.bench_cli_startup",
    "benchmarks.bench_cache",
    "benchmarks.bench_toyworld",
    "benchmarks.eval_baselines",
    "benchmarks.bench_storyboard",
    "benchmarks.bench_main_job",
    "benchmarks.bench_ar_scaling",
    "benchmarks.bench_ar_quality",
    "benchmarks.bench_ar_quality --seed 900007 --seed 900008 --seed 900009 --references 4",  # few-shot
    "benchmarks.bench_continuity --generate",  # with the AR model's movies, with and without history
    "benchmarks.bench_video",  # the shipped toy video model (says so and skips while none ships)
    "benchmarks.bench_video_motion --steps 3 20",  # its motion on single clips, at its own 3 steps and at 20
    "benchmarks.bench_stage_memory",  # full-size weights per stage, with and without --offload (meta device)
    "benchmarks.bench_movie",  # the movie's scores between animatic and ground truth (skips while no video model ships)
]
# full-size timings: only where a GPU is present (a full SDXL UNet on 2 CPU cores would take hours)
GPU_BENCHMARKS = [
    "benchmarks.bench_sdxl_render", "benchmarks.bench_ar_decode", "benchmarks.bench_svd_video",
    "benchmarks.bench_fullsize_pipeline",
]


def main() -> None:
    import torch

    failed = []
    modules = BENCHMARKS + (GPU_BENCHMARKS if torch.cuda.is_available() else [])
    if not torch.cuda.is_available():
        print(f"no GPU: skipping {', '.join(GPU_BENCHMARKS)}", flush=True)
    for module in modules:
        print(f"== {module}", flush=True)
        if subprocess.call([sys.executable, "-m", *shlex.split(module)]) != 0:
            failed.append(module)
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
