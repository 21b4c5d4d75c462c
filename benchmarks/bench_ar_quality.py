"""The keyframe AR model's movies against ground truth and against the same model with its history masked.

    python -m benchmarks.bench_ar_quality --seed 7 --shots 60

Writes the evaluator's toy script (world 0, the episode seed, 64x64, as `benchmarks.eval_baselines` does) with its
ground-truth movie, generates the movie from the script alone with the shipped toy bundle (every keyframe predicted
by the AR model, rendered by the toy renderer), and scores each against the script with `mdream eval`'s toy
backend:

* ground truth: the toy world's own keyframes (the ceiling);
* AR, temperature T: `mdream generate` as a user runs it (`output.sampling.temperature: T`);
* AR without history: the same model and seeds, its context reset before every shot (each keyframe planned from
  its own shot's script alone: the per-shot baseline).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.eval_baselines import markdown_table
from benchmarks.results import update_section
from mdream.eval.evaluate import evaluate_movie
from mdream.models.bundle import BUNDLES_DIR
from mdream.stages import definitions
from mdream.stages.options import RunOptions
from mdream.stages.run import generate, movie_dir_for
from mdream.toyworld.commands import toy_script

TITLE = "Keyframe AR model: movies from a script (toy)"


def bundle_with_ar(folder: Path, ar: Path) -> Path:
    """The toy bundle with another keyframe AR model (e.g. a training run's checkpoint), written to ``folder``."""
    toy = BUNDLES_DIR / "toy"
    spec = yaml.safe_load((toy / "bundle.yaml").read_text())
    components = {name: {"path": str((toy / c["path"]).resolve())} for name, c in spec["components"].items()}
    components["keyframe_ar"] = {"path": str(ar.resolve())}
    folder.mkdir(parents=True)
    (folder / "bundle.yaml").write_text(yaml.safe_dump({"name": "toy-with-ar", "components": components}))
    return folder


def with_temperature(script: Path, temperature: float, bundle: Path | None = None) -> Path:
    data = yaml.safe_load(script.read_text())
    data["output"]["sampling"] = {"temperature": temperature}
    if bundle is not None:
        data["output"]["model_bundle"] = str(bundle)
    out = script.with_name(f"{script.stem}-t{temperature:g}.yaml")
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


class NoHistory:
    """Patch the keyframes stage so every shot starts a fresh context (the history masked)."""

    def __enter__(self):
        self.original = definitions.KeyframesStage.produce

        def produce(stage, project, shot, upstream, writer):
            if stage.ar is not None:
                stage.session, stage.fed = stage.ar.start_movie(), shot.index
            return self.original(stage, project, shot, upstream, writer)

        definitions.KeyframesStage.produce = produce
        return self

    def __exit__(self, *exc):
        definitions.KeyframesStage.produce = self.original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="Episode seed of the toy script.")
    parser.add_argument("--shots", type=int, default=60)
    parser.add_argument("--ar", type=Path, action="append", default=[], metavar="NAME=FOLDER",
                        help="Also score the movie of another keyframe AR model folder (e.g. an ablation's "
                             "RUN/checkpoints/step-N/keyframe_ar), at temperature 1; repeatable. Not written to "
                             "RESULTS.md.")
    args = parser.parse_args()
    reports, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        script = toy_script(tmp / "script", seed=args.seed, shots=args.shots, size=64)
        reports["ground truth"] = evaluate_movie(script.parent / "groundtruth", script)
        runs = [("AR, temperature 1", 1.0, False, None), ("AR, temperature 0", 0.0, False, None),
                ("AR without history, temperature 1", 1.0, True, None)]
        if args.ar:
            runs = [("AR, temperature 1", 1.0, False, None)]
            for i, spec in enumerate(args.ar):
                name, _, folder = str(spec).partition("=")
                runs.append((name, 1.0, False, bundle_with_ar(tmp / f"bundle-{i}", Path(folder))))
        for name, temperature, masked, bundle in runs:
            variant = with_temperature(script, temperature, bundle)
            variant = variant.rename(variant.with_name(f"{variant.stem}-{len(seconds)}.yaml"))
            movie = tmp / name.replace(" ", "-").replace(",", "") / "movie.mp4"
            options = RunOptions(cache_dir=tmp / f"cache-{len(seconds)}", device="cpu", quiet=True)
            t0 = time.perf_counter()
            if masked:
                with NoHistory():
                    generate(variant, movie, options)
            else:
                generate(variant, movie, options)
            seconds[name] = time.perf_counter() - t0
            reports[name] = evaluate_movie(movie_dir_for(movie), variant)
    timing = "; ".join(f"{name}: {s:.0f} s" for name, s in seconds.items())
    body = (
        f"{args.shots} shots at 64x64, episode seed {args.seed} (the evaluator's baseline script); each AR movie made "
        f"from the script alone by `generate` with the shipped toy bundle, from an empty cache ({timing}).\n\n"
        + markdown_table(reports)
    )
    if not args.ar:
        update_section(TITLE, body, f"python -m benchmarks.bench_ar_quality --seed {args.seed} --shots {args.shots}")
    print(body)


if __name__ == "__main__":
    main()
