"""The evaluator's motion scores between their floor and their ceiling, on a toy script.

For every shot of ``--script`` (default: examples/scripts/short.yaml), mapped onto the toy world by the evaluator's
``ToyView``, two movies are muxed with the pipeline's own movie writer (``write_movie``: the script's size and fps,
Lanczos upscale, H.264), each beside an empty movie folder:

* ground truth: ``render_clip`` of the shot with its planned frame count (the ceiling of motion);
* animatic: the same shot's keyframe held for as many frames (the floor).

Both are scored by ``evaluate_movie(..., frames="clips")`` (the shipped frame analyser and motion reader); the table
gives motion and camera agreement (per action too) and the frame metrics on sampled clip frames::

    OMP_NUM_THREADS=1 python benchmarks/bench_motion.py --out motion_bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--script", type=Path, default=ROOT / "examples" / "scripts" / "short.yaml")
    parser.add_argument("--out", type=Path, required=True, help="Folder for the two movies and report.json.")
    parser.add_argument("--size", type=int, default=32, help="Clip frame size (the toy video model's).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from mdream.eval.evaluate import TOY_ANALYSER, ToyView, evaluate_movie
    from mdream.eval.frame_analyser import FrameAnalyser
    from mdream.eval.toy_samples import toy_shot_clips, write_clips_movie
    from mdream.script import load_script, plan_script

    plan = plan_script(load_script(args.script))
    view = ToyView(plan, FrameAnalyser.from_pretrained(TOY_ANALYSER))
    reports = {}
    for name, held in (("ground truth", False), ("animatic", True)):
        folder = args.out / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        write_clips_movie(plan, toy_shot_clips(plan, view, args.size, args.seed, held=held), folder.with_suffix(".mp4"))
        start = time.perf_counter()
        reports[name] = evaluate_movie(folder, args.script, frames="clips")
        reports[name].notes.append(f"scored in {time.perf_counter() - start:.1f} s")
    rows = ["motion_agreement", "camera_agreement", "n_motion_pairs", "n_motion_skipped", "n_camera_pairs",
            "scene_accuracy", "cast_accuracy", "identity_accuracy", "toy_fid"]
    print(f"| metric | {' | '.join(reports)} |\n|---|{'---|' * len(reports)}")
    for row in rows:
        print(f"| {row} | " + " | ".join(_fmt(getattr(r, row)) for r in reports.values()) + " |")
    actions = sorted({a for r in reports.values() for a in r.motion_agreement_by_action})
    for action in actions:
        print(f"| motion agreement: {action} | "
              + " | ".join(_fmt(r.motion_agreement_by_action.get(action)) for r in reports.values()) + " |")
    (args.out / "report.json").write_text(json.dumps({k: r.to_dict() for k, r in reports.items()}, indent=1) + "\n")


def _fmt(value) -> str:
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


if __name__ == "__main__":
    main()
