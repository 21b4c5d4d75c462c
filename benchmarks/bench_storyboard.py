"""The shipped toy bundle end to end on the storyboard example: encode -> keyframes (given) -> render -> eval.

    python -m benchmarks.bench_storyboard

Every shot's ground-truth keyframe is given, so this measures the tokenizer + ID-preserving renderer
round trip through the real stages and cache, scored by the toy evaluator.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.results import update_section
from mdream.eval.evaluate import evaluate_movie
from mdream.stages.options import RunOptions
from mdream.stages.run import generate, movie_dir_for

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "scripts" / "storyboard.yaml"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        movie = Path(tmp) / "movie.mp4"
        t0 = time.perf_counter()
        options = RunOptions(cache_dir=Path(tmp) / "cache", device="cpu", quiet=True)
        reports = generate(SCRIPT, movie, options, until="export").reports  # the keyframes are what it scores
        seconds = time.perf_counter() - t0
        report = evaluate_movie(movie_dir_for(movie), SCRIPT)
    per_stage = ", ".join(f"{r.stage} {r.seconds:.1f} s" for r in reports)
    rows = "\n".join(
        f"| {name} | {'n/a' if value is None else f'{value:.3f}'} |" for name, value in report.metric_values().items()
    )
    body = (
        f"`generate(storyboard.yaml)` (keyframes, storyboard and animatic) then `evaluate_movie` (toy backend): {len(reports[0].produced)} shots, "
        f"{seconds:.1f} s in all ({per_stage}).\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        "Read against 'Evaluator baselines (latest `make bench`)' below: its ground-truth column is the ceiling "
        "and its noise column the floor, scored by the same shipped analyser and face embedder. Toy-FID and "
        "diversity compare only within one analyser (see 'Evaluator floors and ceilings' above)."
    )
    update_section("Storyboard round trip with the shipped toy bundle", body, "python -m benchmarks.bench_storyboard")
    print(body)


if __name__ == "__main__":
    main()
