"""The movie's scores: the generated video between the animatic (floor of motion) and ground truth (ceiling).

    python -m benchmarks.bench_movie                                  # the shipped toy bundle, short and long
    python -m benchmarks.bench_movie --scripts short --video-model DIR --out DIR   # another video model, not written
    python -m benchmarks.bench_movie --bundle DEST/bundles/toy --out DIR          # another whole bundle, not written
    python -m benchmarks.bench_movie --scripts long --without-movie --out DIR      # only the evaluator's floor/ceiling

Per example script (``examples/scripts/NAME.yaml``, copied with its face photos into a work folder), one child
process runs ``mdream generate SCRIPT -o OUT/NAME.mp4 --device cpu --json`` from an empty cache with the toy bundle
(every keyframe predicted by the keyframe AR model, every shot's clip drawn by the bundle's video model). Three
movies of the same shots are then scored by ``evaluate_movie(..., frames="clips")`` (the shipped frame analyser,
face embedder and motion reader; frame metrics on the first, middle and last frame of every shot's clip):

* **ground truth** (the ceiling): each shot mapped onto the toy world by the evaluator's ``ToyView`` and rendered
  by ``render_clip`` with its planned frame count at the video model's frame size (``toy_shot_clips``), muxed by
  the pipeline's own movie writer (``write_clips_movie``);
* **movie**: ``OUT/NAME.mp4``, what ``mdream generate`` wrote;
* **animatic** (the floor of motion): ``OUT/NAME/animatic.mp4``, the same generated keyframes held for each shot's
  duration (``mdream eval OUT/NAME --frames clips --movie OUT/NAME/animatic.mp4``).

The tables: scene and cast adherence, identity (nearest reference photo; consecutive appearances' cosine), the
continuity of the hidden state (palette, trousers), motion agreement (per action too) and camera agreement, with
their pair counts in brackets; and the time of the video stage (the run report's seconds) per second of video,
with the torch threads. ``--without-movie``: only the ground truth and its own animatic (its keyframes held), no
video model needed.

``--bundle``: a whole other model bundle (a folder with bundle.yaml, e.g. ``DEST/bundles/toy`` of ``mdream train
bundle --dest DEST``) makes the movies, scored by the same shipped evaluator, so a rebuilt toy bundle is compared
with the shipped one on equal terms.

Writes its section of benchmarks/RESULTS.md only when it measured the shipped toy bundle (no ``--video-model``,
no ``--bundle``, no ``--without-movie``, no ``--no-write``); without a shipped video model it says so and exits 0 (``make bench``
skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "scripts"
ASSETS = ROOT / "mdream" / "assets"
SHIPPED_VIDEO = ASSETS / "models" / "toy-video"
TOY_BUNDLE = ASSETS / "bundles" / "toy" / "bundle.yaml"
TITLE = "The movie's scores: generated video between the animatic and ground truth (toy)"
ROWS = ("ground truth", "movie", "animatic")
"""Scored movies, in table order (ceiling, the generated movie, floor)."""


def has_video_model(folder: Path) -> bool:
    return (folder / "video.json").is_file() or (folder / "model_index.json").is_file()


def bundle_with_video(video: Path, folder: Path) -> Path:
    """A copy of the toy bundle in ``folder`` whose video component is ``video`` (the others: the shipped models,
    named by absolute path). Returns the bundle folder (what a script's ``output.model_bundle`` names)."""
    data = yaml.safe_load(TOY_BUNDLE.read_text())
    for spec in data["components"].values():
        if isinstance(spec, dict) and "path" in spec:
            spec["path"] = str((TOY_BUNDLE.parent / spec["path"]).resolve())
    data["components"]["video"] = {"path": str(video.resolve())}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bundle.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


def bundle_video(bundle: Path) -> Path | None:
    """The video model folder a bundle (a folder with bundle.yaml) names, or None when it names none."""
    data = yaml.safe_load((bundle / "bundle.yaml").read_text()) or {}
    spec = (data.get("components") or {}).get("video")
    if not isinstance(spec, dict) or "path" not in spec:
        return None
    return (bundle / spec["path"]).resolve()


def copy_script(name: str, work: Path, bundle: Path | None) -> Path:
    """``examples/scripts/NAME.yaml`` and its face photos copied into ``work`` (``output.model_bundle``: ``bundle``
    when given)."""
    folder = work / "scripts"
    if not folder.exists():
        shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns(".mdream", "*.movie", "*.mp4", "*.report.json"))
    script = folder / f"{name}.yaml"
    if bundle is not None:
        data = yaml.safe_load(script.read_text())
        data["output"]["model_bundle"] = str(bundle.resolve())
        script.write_text(yaml.safe_dump(data, sort_keys=False))
    return script


def run_generate(script: Path, movie: Path, cache: Path) -> tuple[dict, float]:
    """``mdream generate SCRIPT -o MOVIE --device cpu --json`` in a child process: its JSON run report and wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mdream", "generate", str(script), "-o", str(movie), "--device", "cpu",
                           "--cache-dir", str(cache), "--json"], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"mdream generate {script} failed ({done.returncode}):\n{done.stderr[-4000:]}{done.stdout[-4000:]}")
    return json.loads(done.stdout), wall


def score_script(name: str, script: Path, out: Path, size: int, seed: int, with_movie: bool) -> dict:
    """Generate (``with_movie``) and score one script's movies; the numbers for its tables."""
    from mdream.eval.evaluate import TOY_ANALYSER, ToyView, evaluate_movie
    from mdream.eval.frame_analyser import FrameAnalyser
    from mdream.eval.toy_samples import toy_shot_clips, write_clips_movie
    from mdream.script import load_script, plan_script

    plan = plan_script(load_script(script))
    result: dict = {"name": name, "shots": len(plan.shots), "duration": plan.total_duration, "fps": plan.output.fps,
                    "reports": {}}
    truth = out / f"{name}-ground-truth"
    truth.mkdir(parents=True, exist_ok=True)
    view = ToyView(plan, FrameAnalyser.from_pretrained(TOY_ANALYSER))
    write_clips_movie(plan, toy_shot_clips(plan, view, size, seed), truth.with_suffix(".mp4"))
    result["reports"]["ground truth"] = evaluate_movie(truth, script, frames="clips")
    if with_movie:
        movie = out / f"{name}.mp4"
        print(f"{name}: mdream generate ({len(plan.shots)} shots, {plan.total_duration:g} s)", flush=True)
        report, wall = run_generate(script, movie, out / f"{name}-cache")
        if report.get("movie_kind") != "video":
            sys.exit(f"mdream generate {script} wrote {report.get('movie_kind')!r}, not a video: the bundle has no "
                     "video model")
        stages = {r["stage"]: r for r in report["stages"]}
        result |= {"wall": wall, "generate_seconds": float(report["seconds"]),
                   "video_seconds": float(stages["video"]["seconds"]), "clips": len(stages["video"]["produced"])}
        movie_dir = movie.with_suffix("")
        result["reports"]["movie"] = evaluate_movie(movie_dir, script, frames="clips")
        result["reports"]["animatic"] = evaluate_movie(movie_dir, script, frames="clips",
                                                       movie=movie_dir / "animatic.mp4")
    else:
        held = out / f"{name}-ground-truth-animatic"
        held.mkdir(parents=True, exist_ok=True)
        write_clips_movie(plan, toy_shot_clips(plan, view, size, seed, held=True), held.with_suffix(".mp4"))
        result["reports"]["animatic"] = evaluate_movie(held, script, frames="clips")
    return result


def _fmt(value, count: int | None = None) -> str:
    text = "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
    return text if count is None else f"{text} ({count})"


def scores_table(results: list[dict]) -> str:
    """Adherence, identity, continuity, motion and camera per script and movie (pair counts in brackets)."""
    lines = ["| script | movie | scene | cast | identity: nearest reference (faces) | identity: consecutive "
             "appearances (pairs) | palette kept: consecutive / 20+ apart (pairs) | trousers kept: consecutive / "
             "20+ apart (pairs) | motion agreement (pairs) | camera agreement (shots) |",
             "|---|---|" + "---:|" * 8]
    for r in results:
        for row in ROWS:
            e = r["reports"].get(row)
            if e is None:
                continue
            label = {"ground truth": "ground-truth clips (ceiling)", "movie": "generated movie",
                     "animatic": "animatic: its keyframes held (floor)"}[row]
            lines.append(
                f"| {r['name']}.yaml | {label} | {_fmt(e.scene_accuracy)} | {_fmt(e.cast_accuracy)} | "
                f"{_fmt(e.identity_accuracy, e.n_faces)} | {_fmt(e.identity_short_term, e.n_short_term_pairs)} | "
                f"{_fmt(e.palette_continuity_short_term, e.n_palette_short_term_pairs)} / "
                f"{_fmt(e.palette_continuity_long_term, e.n_palette_long_term_pairs)} | "
                f"{_fmt(e.trousers_continuity_short_term, e.n_trousers_short_term_pairs)} / "
                f"{_fmt(e.trousers_continuity_long_term, e.n_trousers_long_term_pairs)} | "
                f"{_fmt(e.motion_agreement, e.n_motion_pairs)} | {_fmt(e.camera_agreement, e.n_camera_pairs)} |")
    return "\n".join(lines)


def actions_table(results: list[dict]) -> str:
    """Motion agreement per scripted action."""
    actions = sorted({a for r in results for e in r["reports"].values() for a in e.motion_agreement_by_action})
    lines = [f"| script | movie | {' | '.join(actions)} |", "|---|---|" + "---:|" * len(actions)]
    for r in results:
        for row in ROWS:
            if row in r["reports"]:
                by_action = r["reports"][row].motion_agreement_by_action
                lines.append(f"| {r['name']}.yaml | {row} | "
                             + " | ".join(_fmt(by_action.get(a)) if a in by_action else "-" for a in actions) + " |")
    return "\n".join(lines)


def time_table(results: list[dict], threads: int) -> str:
    lines = ["| script | shots | running time | video stage | per second of video | `generate` in all | wall |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['name']}.yaml | {r['shots']} | {r['duration']:g} s ({r['fps']} fps) | "
                     f"{r['video_seconds']:.1f} s | {r['video_seconds'] / r['duration']:.2f} s | "
                     f"{r['generate_seconds']:.1f} s | {r['wall']:.1f} s |")
    return "\n".join(lines) + f"\n\n({threads} torch thread{'s' if threads != 1 else ''}, CPU.)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scripts", nargs="+", default=["short", "long"], help="example scripts (names in examples/scripts)")
    parser.add_argument("--video-model", type=Path, default=None,
                        help="A video model folder to use instead of the shipped one (the toy bundle's other models "
                             "stay); its numbers are printed, not written into RESULTS.md.")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="A whole model bundle (a folder with bundle.yaml) instead of the shipped toy bundle; its "
                             "numbers are printed, not written into RESULTS.md.")
    parser.add_argument("--without-movie", action="store_true",
                        help="Only the ground truth and its own animatic (no generate, no video model).")
    parser.add_argument("--out", type=Path, default=None, help="Keep the movies and report.json here [default: a "
                                                               "temporary folder].")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the ground-truth renders.")
    parser.add_argument("--no-write", action="store_true", help="Print the tables, leave RESULTS.md as it is.")
    args = parser.parse_args(argv)
    for name in args.scripts:
        if not (EXAMPLES / f"{name}.yaml").is_file():
            parser.error(f"no example script {EXAMPLES / name}.yaml")
    if args.bundle is not None and args.video_model is not None:
        parser.error("--bundle names every model, the video model too: leave --video-model out")
    if args.bundle is not None and not (args.bundle / "bundle.yaml").is_file():
        parser.error(f"--bundle {args.bundle}: no bundle.yaml there")
    video = args.video_model or SHIPPED_VIDEO
    if args.bundle is not None:
        video = bundle_video(args.bundle)
        if video is None or not has_video_model(video):
            parser.error(f"--bundle {args.bundle}: it names no video model with a video.json")
    if args.video_model is not None and not has_video_model(args.video_model):
        parser.error(f"--video-model {args.video_model}: no video model there (video.json)")
    if not args.without_movie and not has_video_model(video):
        print(f"no video model at {SHIPPED_VIDEO}: skipping the movie benchmark (the toy bundle's movie is the "
              "animatic; train one with `mdream train video --config video-toy-action-map` and export it there with "
              "`mdream train export RUN/final mdream/assets/models/toy-video --fp16`)")
        return

    import torch

    size = 32
    if not args.without_movie:
        size = int(json.loads((video / "video.json").read_text()).get("width", 32))
    threads = torch.get_num_threads()  # the child's too: it runs with this environment
    with tempfile.TemporaryDirectory(prefix="mdream-bench-movie-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        bundle = bundle_with_video(args.video_model, out / "bundle") if args.video_model else args.bundle
        results = [score_script(name, copy_script(name, out, bundle), out, size, args.seed, not args.without_movie)
                   for name in args.scripts]
        (out / "report.json").write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "reports"} | {"reports": {k: e.to_dict() for k, e in r["reports"].items()}}
             for r in results], indent=1) + "\n")
    what = ("ground-truth clips against their own animatic" if args.without_movie else
            "`mdream generate SCRIPT -o OUT/NAME.mp4 --device cpu --json` with "
            + (f"the bundle {args.bundle}" if args.bundle else "the toy bundle")
            + (f" and the video model {args.video_model}" if args.video_model else "") + ", from an empty cache")
    body = (
        f"{what}; each movie scored by `evaluate_movie(..., frames=\"clips\")` (`mdream eval OUT/NAME --script SCRIPT "
        "--frames clips [--movie MP4]`): frame metrics on the first, middle and last frame of every shot's clip, "
        "motion and camera read by the shipped motion reader. *Ground-truth clips*: every shot mapped onto the toy "
        f"world and rendered with its planned frame count ({size}x{size}, ground-truth seed {args.seed}, muxed by "
        "the pipeline's movie writer); *animatic*: "
        + ("the ground truth's keyframes held" if args.without_movie else
           "`OUT/NAME/animatic.mp4`, the generated keyframes held for each shot's duration")
        + ". Pair counts in brackets (faces for identity, shots for the camera; 20+ apart: pairs of appearances 20 "
        "or more shots apart, n/a on a short script).\n\n"
        + scores_table(results) + "\n\nMotion agreement per scripted action:\n\n" + actions_table(results)
    )
    if not args.without_movie:
        body += ("\n\nTime of the video stage (the run report's seconds: every shot's clip drawn by the video "
                 "model), per second of video:\n\n" + time_table(results, threads))
    print(body)
    if args.no_write or args.video_model is not None or args.bundle is not None or args.without_movie:
        print("\n(RESULTS.md not written: only the shipped toy bundle's numbers go there)")
        return
    from benchmarks.results import update_section

    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', threads)} python -m benchmarks.bench_movie " \
              f"--scripts {' '.join(args.scripts)}"
    update_section(TITLE, body, command)


if __name__ == "__main__":
    main()
