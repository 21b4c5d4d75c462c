"""Floors and ceilings of the evaluator on a toy script (benchmarks/RESULTS.md).

    .venv/bin/python benchmarks/eval_baselines.py --out runs/eval_baselines

Writes a toy script (world 0, fixed episode seed, 60 shots, 64x64) with its ground-truth movie, then
builds and scores these movie folders against the script:

* ground truth: the toy world's own keyframes (the ceiling);
* degraded ground truth: the same frames blurred (down to 24 px and back) with pixel noise (sigma 12),
  roughly what an imperfect generator produces;
* shuffled: the ground-truth keyframes permuted across shots (right world, wrong shot);
* copy: ground-truth frame 0 for every shot (a model that copies);
* noise: uniform per-pixel noise (the floor).

Prints a markdown table (metrics x baselines) and writes ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mdream.eval.evaluate import EvalReport, evaluate_movie
from mdream.toyworld.commands import toy_script


def _write_movie(folder: Path, frames: list[np.ndarray], shots_json: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "keyframes").mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / "keyframes" / f"{i:04d}.png")
    shutil.copy2(shots_json, folder / "shots.json")
    return folder


def build_baselines(out: Path, seed: int = 7, shots: int = 60, size: int = 64) -> tuple[Path, dict[str, Path]]:
    """Write the toy script and one movie folder per baseline; returns (script, {name: folder})."""
    script_dir = out / "script"
    if script_dir.exists():
        shutil.rmtree(script_dir)
    script = toy_script(script_dir, seed=seed, shots=shots, size=size)
    groundtruth = script_dir / "groundtruth"
    shots_json = groundtruth / "shots.json"
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((groundtruth / "keyframes").glob("*.png"))]
    rng = np.random.default_rng(seed)

    degraded = []
    for frame in frames:
        small = Image.fromarray(frame).resize((24, 24), Image.BILINEAR).resize((size, size), Image.BILINEAR)
        noisy = np.asarray(small, np.float32) + rng.normal(0, 12, frame.shape)
        degraded.append(np.clip(noisy, 0, 255).astype(np.uint8))
    # A permutation with no fixed point, so every shot gets another shot's frame.
    order = rng.permutation(len(frames))
    while np.any(order == np.arange(len(frames))):
        order = rng.permutation(len(frames))
    movies = {
        "ground truth": groundtruth,
        "degraded ground truth": _write_movie(out / "degraded", degraded, shots_json),
        "shuffled": _write_movie(out / "shuffled", [frames[i] for i in order], shots_json),
        "copy": _write_movie(out / "copy", [frames[0]] * len(frames), shots_json),
        "noise": _write_movie(
            out / "noise", [rng.integers(0, 256, frames[0].shape, dtype=np.uint8) for _ in frames], shots_json
        ),
    }
    return script, movies


def markdown_table(reports: dict[str, EvalReport]) -> str:
    names = list(reports)
    lines = ["| metric (better) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label, direction in EvalReport.METRICS:
        cells = []
        for name in names:
            value = getattr(reports[name], key)
            cells.append("n/a" if value is None else f"{value:.3f}")
        arrow = "higher" if direction == "higher" else "lower"
        lines.append(f"| {label} ({arrow}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/eval_baselines"))
    parser.add_argument("--seed", type=int, default=7, help="Episode seed of the toy script.")
    parser.add_argument("--shots", type=int, default=60)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    t0 = time.time()
    script, movies = build_baselines(args.out, args.seed, args.shots, args.size)
    reports = {name: evaluate_movie(folder, script) for name, folder in movies.items()}
    elapsed = time.time() - t0
    gt = reports["ground truth"]
    print(markdown_table(reports))
    print(f"\n{gt.n_shots} shots, {gt.n_faces} faces, {gt.n_short_term_pairs} short-term and "
          f"{gt.n_long_term_pairs} long-term identity pairs; {elapsed:.1f} s in total")
    (args.out / "results.json").write_text(
        json.dumps({name: r.to_dict() for name, r in reports.items()}, indent=1) + "\n"
    )
    from benchmarks.results import update_section

    update_section(
        "Evaluator baselines (latest `make bench`)",
        markdown_table(reports)
        + f"\n\n{gt.n_shots} shots at {args.size}x{args.size}, episode seed {args.seed}; {elapsed:.1f} s in total. "
        "How to read these: see 'Evaluator floors and ceilings (toy world)' above.",
        f"python -m benchmarks.eval_baselines --seed {args.seed} --shots {args.shots} --size {args.size}",
    )


if __name__ == "__main__":
    main()
