"""The toy bundle rebuilt from scratch against the shipped one: time per step, each component's own check, movies.

    python -m benchmarks.bench_toy_bundle --run runs/toy-bundle                      # steps and component checks
    python -m benchmarks.bench_toy_bundle --run runs/toy-bundle --movies short long  # + movies of both bundles

``--run`` is the OUT folder of ``make toy-bundle`` (``mdream train bundle --out OUT``). From its ``manifest.json``:
each step's expected minutes on 2 cores (the shipped runs' times, ``toy_bundle.STEPS``) against the minutes it took
(summed over its attempts), and whether it has finished. Then, per component, the held-out numbers its trainer
wrote beside the weights, for the shipped model (``mdream/assets``) and the rebuilt one (``OUT/bundle``, the staged
tree): the toy CLIP's image-to-descriptor retrieval, the frame analyser's and the motion reader's validation
accuracies, the keyframe AR model's held-out token cosine (a dash where a side did not record it).

``--movies`` also runs ``benchmarks.bench_movie`` on the example scripts with the shipped bundle and with the
rebuilt one (``OUT``'s DEST, ``--dest``: default the manifest's), both scored by the shipped evaluator, and puts
their movie scores side by side. Writes its section of benchmarks/RESULTS.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from mdream.training.toy_bundle import ASSETS, MANIFEST, STAGED, STEPS, _read_manifest

TITLE = "The toy bundle rebuilt from scratch"

#: Per component: (its file beside the weights, the held-out numbers in it, their labels); paths are within an
#: assets tree (``mdream/assets`` or a bundle run's staged ``OUT/bundle``).
CHECKS: dict[str, tuple[str | tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "clip": ("models/toy-clip/training_summary.json", (("retrieval_top1_of_256", "retrieval top-1 of 256"),)),
    # a run's final export writes training_summary.json, a checkpoint's export (the shipped AR model) state.json
    "ar": (("models/toy-ar/training_summary.json", "models/toy-ar/state.json"),
           (("token_cos", "held-out token cosine"),)),
    "analyser": ("eval/frame_analyser/config.json",
                 (("val_scene_accuracy", "scene"), ("val_position_accuracy", "cast slots"),
                  ("val_palette_accuracy", "palette"), ("val_trousers_accuracy", "trousers"))),
    "motion_reader": ("eval/motion_reader/config.json",
                      (("val_action_accuracy", "actions"), ("val_slot_accuracy", "slots"),
                       ("val_camera_accuracy", "camera"))),
}

#: The movie scores compared (bench_movie's report keys) and their column titles.
MOVIE_SCORES = (("scene_accuracy", "scene"), ("cast_accuracy", "cast"), ("identity_accuracy", "identity"),
                ("palette_continuity_long_term", "palette kept 20+ apart"), ("motion_agreement", "motion"),
                ("camera_agreement", "camera"))


def read_manifest(run: Path) -> dict:
    path = run / MANIFEST
    if not path.is_file():
        raise SystemExit(f"--run {run}: no {MANIFEST} there (the OUT folder of `mdream train bundle --out OUT`)")
    return _read_manifest(path)  # the bundle's own reader: an unreadable manifest is a clear error


def steps_table(manifest: dict) -> tuple[str, float, float]:
    """The per-step table, the expected minutes of the finished steps and the minutes they took."""
    recorded = {s["name"]: s for s in manifest.get("steps", []) if isinstance(s, dict) and "name" in s}
    lines = ["| step | recipe | expected on 2 cores (min) | took (min) | attempts | status |",
             "|---|---|---:|---:|---:|---|"]
    expected_done = took_done = 0.0
    for step in STEPS:
        entry = recorded.get(step.name, {})
        done = entry.get("status") == "done"
        minutes = entry.get("minutes")
        if done and minutes is not None:
            expected_done += step.expected_minutes
            took_done += minutes
        lines.append(f"| {step.name} | {step.recipe or '(trainer defaults)'} | {step.expected_minutes:.0f} | "
                     f"{f'{minutes:.1f}' if done and minutes is not None else '-'} | "
                     f"{entry.get('attempts', '-') if done else '-'} | {'done' if done else 'not finished'} |")
    total = sum(s.expected_minutes for s in STEPS)
    lines.append(f"| **total** | | {total:.0f} | {took_done:.1f} (finished steps; expected {expected_done:.0f}) | | |")
    return "\n".join(lines), expected_done, took_done


def _numbers(tree: Path, name: str) -> dict[str, float] | None:
    files, keys = CHECKS[name]
    path = next((tree / f for f in ((files,) if isinstance(files, str) else files) if (tree / f).is_file()), None)
    if path is None:
        return None
    data = json.loads(path.read_text())
    return {key: data[key] for key, _ in keys if isinstance(data.get(key), int | float)}


def checks_table(staged: Path, shipped: Path = ASSETS) -> str:
    """Shipped against rebuilt, per component and held-out number (a dash where a side has none)."""
    lines = ["| component | held-out number | shipped | rebuilt |", "|---|---|---:|---:|"]
    for name, (_, keys) in CHECKS.items():
        ours, theirs = _numbers(staged, name), _numbers(shipped, name)
        for key, label in keys:
            a = f"{theirs[key]:.3f}" if theirs and key in theirs else "-"
            b = f"{ours[key]:.3f}" if ours and key in ours else "-"
            lines.append(f"| {name} | {label} | {a} | {b} |")
    return "\n".join(lines)


def movies_table(shipped: list[dict], rebuilt: list[dict]) -> str:
    """bench_movie's report.json rows of both bundles: the generated movie's scores per script."""
    lines = ["| script | bundle | " + " | ".join(title for _, title in MOVIE_SCORES) + " |",
             "|---|---|" + "---:|" * len(MOVIE_SCORES)]
    for label, results in (("shipped", shipped), ("rebuilt", rebuilt)):
        for r in results:
            movie = r["reports"]["movie"]
            cells = " | ".join("-" if movie.get(key) is None else f"{movie[key]:.3f}" for key, _ in MOVIE_SCORES)
            lines.append(f"| {r['name']}.yaml | {label} | {cells} |")
    return "\n".join(lines)


def run_movies(scripts: list[str], bundle: Path | None, out: Path) -> list[dict]:
    from benchmarks import bench_movie

    bench_movie.main(["--scripts", *scripts, "--out", str(out), "--no-write"]
                     + (["--bundle", str(bundle)] if bundle is not None else []))
    return json.loads((out / "report.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="The OUT folder of `mdream train bundle --out OUT`.")
    parser.add_argument("--dest", type=Path, default=None,
                        help="The rebuilt bundle's DEST (for --movies) [default: the manifest's dest].")
    parser.add_argument("--movies", nargs="*", default=None, metavar="SCRIPT",
                        help="Also make and score the movies of these example scripts with both bundles.")
    parser.add_argument("--no-write", action="store_true", help="Print the tables, leave RESULTS.md as it is.")
    args = parser.parse_args(argv)

    manifest = read_manifest(args.run)
    table, expected_done, took_done = steps_table(manifest)
    body = (f"`mdream train bundle --out OUT` (git {str(manifest.get('git_commit'))[:7]}; "
            f"{'smoke settings' if manifest.get('smoke') else 'full recipes'}): each step's expected minutes on 2 "
            "cores (the shipped runs' times) and the minutes it took, summed over its attempts (a killed and "
            f"resumed step counts every attempt).\n\n{table}\n\nHeld-out numbers each trainer wrote beside the "
            "weights, shipped (`mdream/assets`) and rebuilt (the run's staged `OUT/bundle`):\n\n"
            + checks_table(args.run / STAGED))
    if args.movies is not None:
        dest = args.dest or (Path(manifest["dest"]) if manifest.get("dest") else None)
        if dest is None or not (dest / "bundles" / "toy" / "bundle.yaml").is_file():
            raise SystemExit(f"--movies: no rebuilt bundle at {dest}/bundles/toy (pass --dest, or let the bundle "
                             "run finish: it writes DEST last)")
        scripts = args.movies or ["short", "long"]
        with tempfile.TemporaryDirectory(prefix="mdream-bench-bundle-") as tmp:
            shipped = run_movies(scripts, None, Path(tmp) / "shipped")
            rebuilt = run_movies(scripts, dest / "bundles" / "toy", Path(tmp) / "rebuilt")
        body += ("\n\nThe generated movies of both bundles (`python -m benchmarks.bench_movie --scripts "
                 f"{' '.join(scripts)} [--bundle DEST/bundles/toy]`), scored by the shipped evaluator:\n\n"
                 + movies_table(shipped, rebuilt))
    print(body)
    if args.no_write:
        return
    from benchmarks.results import update_section

    command = "python -m benchmarks.bench_toy_bundle --run OUT" + (
        f" --movies {' '.join(args.movies)}" if args.movies else " --movies" if args.movies is not None else "")
    update_section(TITLE, body, command)


if __name__ == "__main__":
    main()
