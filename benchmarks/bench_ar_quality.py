"""The keyframe AR model's movies against ground truth and against the same model with its history masked.

    python -m benchmarks.bench_ar_quality --shots 60
    python -m benchmarks.bench_ar_quality --shots 60 --references 4

Writes the evaluator's toy script (world 0, the episode seed, 64x64, as `benchmarks.eval_baselines` does) with its
ground-truth movie, generates the movie from the script alone with the shipped toy bundle (every keyframe predicted
by the AR model, rendered by the toy renderer), and scores each against the script with `mdream eval`'s toy
backend:

* ground truth: the toy world's own keyframes (the ceiling);
* AR, temperature T: `mdream generate` as a user runs it (`output.sampling.temperature: T`);
* AR without history: the same model and seeds, its context reset before every shot (each keyframe planned from
  its own shot's script alone: the per-shot baseline).

Few-shot (``--references K``): the episode is made ``--pool`` shots longer, the script keeps its first ``--shots``
shots, and the ground-truth keyframes of K of the shots after them (never generated), picked to show as many of the
script's scenes and characters as they can, become the script's ``style.reference_frames``. The same script is then generated zero-shot (no references) and few-shot (with them),
by each AR model. With ``--out DIR`` every movie folder is kept (``DIR/<run>/movie/keyframes/NNNN.png``, the
ground truth in ``DIR/script/groundtruth``) beside ``DIR/script/hidden_state.json``: per generated shot the episode's hidden
variants it should show (its scene's palette, each cast member's trousers) and whether the references show that
scene / character, so an evaluator that reads palettes and trousers from frames can score how often each run
follows the references (``DIR/runs.json`` lists the runs and their movie folders).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.eval_baselines import markdown_table
from benchmarks.results import update_section
from mdream.eval.evaluate import evaluate_movie
from mdream.models.bundle import BUNDLES_DIR
from mdream.stages import definitions
from mdream.stages.options import RunOptions
from mdream.stages.run import generate, movie_dir_for
from mdream.toyworld import CAMERAS
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
                stage.session, stage.fed = stage.new_session(), shot.index
            return self.original(stage, project, shot, upstream, writer)

        definitions.KeyframesStage.produce = produce
        return self

    def __exit__(self, *exc):
        definitions.KeyframesStage.produce = self.original


def keyframe_movie(source: Path, temperature: float, tag: str, movie: Path, cache: Path, device: str = "cpu",
                   bundle: Path | None = None, masked: bool = False) -> tuple[Path, Path]:
    """`generate` the script ``source`` at ``temperature`` (with ``bundle``'s models; ``masked``: the history masked)
    into ``movie``, up to its movie folder: keyframes, render and export, no clips (these benchmarks score keyframes).
    The script variant is written beside ``source`` (its face photos), named by ``tag``. Returns (movie folder,
    variant)."""
    variant = with_temperature(source, temperature, bundle)
    variant = variant.rename(variant.with_name(f"{variant.stem}-{tag}.yaml"))
    options = RunOptions(cache_dir=cache, device=device, quiet=True)
    with NoHistory() if masked else contextlib.nullcontext():
        generate(variant, movie, options, until="export")
    return movie_dir_for(movie), variant


def trained_references(bundle: Path | None) -> int:
    """``max_references`` of a bundle's keyframe AR model (None: the shipped toy bundle)."""
    from mdream.models.bundle import ModelBundle

    ar = ModelBundle.load(str(bundle) if bundle is not None else "toy").component("keyframe_ar").location
    return int(json.loads((Path(ar) / "keyframe_ar.json").read_text()).get("max_references", 0))


#: The toy world's camera index of a close-up (it crops the trousers).
CLOSE_UP = CAMERAS.index("close-up")


def pick_references(labelled: list[dict], shots: int, references: int) -> list[int]:
    """Indices of ``references`` shots after the first ``shots`` (the pool) that show as much of the script as they
    can: greedily, each pick adds the most scenes of the script not yet shown (counted twice: a scene's palette is
    what the tokens carry best), then characters of the script whose trousers are not yet shown (not in a close-up).
    """
    script_scenes = {s["scene"] for s in labelled[:shots]}
    script_chars = {c for s in labelled[:shots] for c in s["chars"] if c >= 0}
    pool = list(range(shots, len(labelled)))
    picked, scenes, chars = [], set(), set()  # the picks, and the scenes and trousers they show so far

    def trousers_shown(i: int) -> set[int]:
        s = labelled[i]
        return {c for c in s["chars"] if c >= 0} if s["camera"] != CLOSE_UP else set()

    def gain(i: int) -> tuple[int, int]:
        new_scene = int(labelled[i]["scene"] in script_scenes - scenes)
        return 2 * new_scene + len((trousers_shown(i) & script_chars) - chars), -i  # ties: the earliest shot

    for _ in range(min(references, len(pool))):
        best = max((i for i in pool if i not in picked), key=gain)
        picked.append(best)
        scenes.add(labelled[best]["scene"])
        chars |= trousers_shown(best)
    return sorted(picked)


def few_shot_script(folder: Path, seed: int, shots: int, references: int, pool: int) -> tuple[Path, Path]:
    """A toy script of the first ``shots`` shots of a ``shots + pool``-shot episode, and the same script with the
    ground truth of ``references`` of the other shots (:func:`pick_references`) as its ``style.reference_frames``;
    writes ``hidden_state.json`` beside them.

    Returns (zero-shot script, few-shot script); the ground truth of the kept shots is in ``folder/groundtruth``.
    """
    long = toy_script(folder / "episode", seed=seed, shots=shots + pool, size=64)
    chosen = pick_references(json.loads((long.parent / "toyworld.json").read_text())["shots"], shots, references)
    data = yaml.safe_load(long.read_text())
    kept, arcs = 0, []
    for arc in data["arcs"]:
        take = arc["shots"][: max(0, shots - kept)]
        kept += len(take)
        if take:
            arcs.append({**arc, "shots": take})
    data["arcs"] = arcs
    for sub in ("faces",):
        shutil.copytree(long.parent / sub, folder / sub)
    truth_in, truth = long.parent / "groundtruth", folder / "groundtruth"
    (truth / "keyframes").mkdir(parents=True)
    listed = json.loads((truth_in / "shots.json").read_text())["shots"]
    for i in range(shots):
        shutil.copy(truth_in / "keyframes" / f"{i:04d}.png", truth / "keyframes" / f"{i:04d}.png")
    (truth / "shots.json").write_text(json.dumps({"shots": listed[:shots]}, indent=1))
    (folder / "refs").mkdir()
    frames = []
    for i in chosen:
        shutil.copy(truth_in / "keyframes" / f"{i:04d}.png", folder / "refs" / f"{i:04d}.png")
        frames.append(f"refs/{i:04d}.png")
    zero = folder / "script.yaml"
    zero.write_text(yaml.safe_dump(data, sort_keys=False))
    few = folder / "script-references.yaml"
    few.write_text(yaml.safe_dump({**data, "style": {**(data.get("style") or {"text": "toy"}),
                                                     "reference_frames": frames}}, sort_keys=False))
    (folder / "hidden_state.json").write_text(json.dumps(hidden_state(long.parent / "toyworld.json", shots, chosen),
                                                         indent=1))
    return zero, few


def hidden_state(toyworld_json: Path, shots: int, chosen: list[int]) -> dict:
    """Per generated shot (the first ``shots``): the hidden variants its frame should show and whether the reference
    frames (the shots ``chosen`` after them) show its scene / each cast member; the references' own readings too."""
    from mdream.toyworld import make_world

    meta = json.loads(toyworld_json.read_text())
    world = make_world(meta["world_seed"])
    labelled = meta["shots"]

    def reading(s: dict) -> dict:
        cast = [{"id": world.characters[c].id, "position": p, "trousers": int(t)}
                for p, c, t in zip(("left", "center", "right"), s["chars"], s["trousers"], strict=True) if c >= 0]
        return {"index": s["index"], "id": s["id"], "scene": world.scenes[s["scene"]].id, "palette": int(s["palette"]),
                "camera": CAMERAS[s["camera"]], "cast": cast}

    references = [reading(labelled[i]) for i in chosen]
    seen_scenes = {r["scene"] for r in references}
    seen_characters = {m["id"] for r in references for m in r["cast"]}
    # trousers show in wide and medium shots; a close-up crops them
    seen_trousers = {m["id"] for r in references if r["camera"] != "close-up" for m in r["cast"]}
    out = []
    for s in labelled[:shots]:
        row = reading(s)
        row["scene_in_references"] = row["scene"] in seen_scenes
        for member in row["cast"]:
            member["in_references"] = member["id"] in seen_characters
            member["trousers_in_references"] = member["id"] in seen_trousers
            member["trousers_visible"] = row["camera"] != "close-up"
        out.append(row)
    return {"world_seed": meta["world_seed"], "episode_seed": meta["episode_seed"], "shots": out,
            "references": references}


FEW_SHOT_TITLE = "Keyframe AR model: few-shot reference frames (toy)"


def reference_following(movies: list[tuple[object, dict]]) -> dict[str, tuple[float | None, int]]:
    """How often movies' frames show the hidden variants the reference frames show, as the analyser reads them,
    pooled over ``movies`` (each an evaluation report and its script's ``hidden_state.json``).

    palette: over the shots whose scene a reference shows, the share read with the episode's palette; trousers: over
    the (shot, cast member) pairs whose trousers a reference shows and the shot shows too (not a close-up), the share
    read with the episode's trousers. Returns {attribute: (share or None, pairs)}.
    """
    palette, trousers = [], []
    for report, hidden in movies:
        by_index = {shot.index: shot for shot in report.shots}
        for row in hidden["shots"]:
            shot = by_index.get(row["index"])
            if shot is None:
                continue
            if row["scene_in_references"] and shot.predicted_palette is not None:
                palette.append(shot.predicted_palette == row["palette"])
            for member in row["cast"]:
                read = shot.predicted_trousers.get(member["id"])
                if member["trousers_in_references"] and member["trousers_visible"] and read is not None:
                    trousers.append(read == member["trousers"])
    return {name: (float(np.mean(values)) if values else None, len(values))
            for name, values in (("palette", palette), ("trousers", trousers))}


def following_table(reports: dict[str, list], hiddens: list[dict]) -> str:
    """One row per movie name: its reports (one per script) against the scripts' hidden states, pooled."""
    lines = ["| movie | palette as the references show it | trousers as the references show them |", "|---|---:|---:|"]
    for name, per_script in reports.items():
        cells = []
        for share, pairs in reference_following(list(zip(per_script, hiddens, strict=True))).values():
            cells.append("-" if share is None else f"{share:.3f} ({pairs})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, action="append", default=None,
                        help="Episode seed of the toy script (default 900007, far from the AR model's training "
                             "episodes); repeatable with --references, whose shares are then pooled over the scripts.")
    parser.add_argument("--shots", type=int, default=60)
    parser.add_argument("--ar", type=Path, action="append", default=[], metavar="NAME=FOLDER",
                        help="Also score the movie of another keyframe AR model folder (e.g. an ablation's "
                             "RUN/checkpoints/step-N/keyframe_ar), at temperature 1; repeatable. Not written to "
                             "RESULTS.md.")
    parser.add_argument("--bundle", type=Path, action="append", default=[], metavar="NAME=FOLDER",
                        help="Also score the movie of another whole model bundle (e.g. a retrained tokenizer with the "
                             "AR model trained on its tokens), at temperature 1; repeatable. Not written to RESULTS.md.")
    parser.add_argument("--references", type=int, default=0, metavar="K",
                        help="Few-shot: give the AR model K ground-truth frames of the same episode (shots after the "
                             "generated ones) as reference frames, beside the same movie zero-shot, and score how often "
                             "the movies show the hidden variants the references show (its own RESULTS.md section).")
    parser.add_argument("--pool", type=int, default=40, metavar="P",
                        help="Few-shot: the references are picked among the P shots of the episode after the generated "
                             "ones, to show as many of the script's scenes and characters as they can.")
    parser.add_argument("--out", type=Path, default=None,
                        help="Keep the scripts, movies, ground truth and (with --references) hidden_state.json here.")
    args = parser.parse_args()
    seeds = args.seed or [900007]
    if args.references < 0:
        parser.error("--references must be >= 0")
    if args.references and args.pool < args.references:
        parser.error("--pool must be at least --references")
    if len(seeds) > 1 and not args.references:
        parser.error("several --seed need --references (the quality table is one script's)")
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out}: the folder is not empty")
    per_seed, hiddens, picked = [], [], []
    for seed in seeds:
        out = args.out / f"seed-{seed}" if args.out is not None and len(seeds) > 1 else args.out
        reports, seconds, hidden, chosen = score_script(args, seed, out)
        per_seed.append(reports)
        if hidden is not None:
            hiddens.append(hidden)
            picked.append(chosen)
    if hiddens:
        pooled = {name: [reports[name] for reports in per_seed] for name in per_seed[0]}
        shown = "; ".join(f"seed {seed}: shots {', '.join(str(i) for i in chosen)}"
                          for seed, chosen in zip(seeds, picked, strict=True))
        scenes = sum(len({r["scene"] for r in h["references"]}) for h in hiddens)
        follow = (
            f"{len(seeds)} toy script{'s' if len(seeds) > 1 else ''} of {args.shots} shots at 64x64 (episode seeds "
            f"{', '.join(map(str, seeds))}); each script's references are the ground-truth keyframes of "
            f"{args.references} of the {args.pool} shots after it in its episode (never generated), picked to show as "
            f"many of the script's scenes and characters as they can ({shown}; {scenes} scenes in all). Share of "
            "readings (pairs in brackets, pooled over the scripts) that show the episode's hidden variant where a "
            "reference shows it: chance is 1/3.\n\n" + following_table(pooled, hiddens)
        )
        if not (args.ar or args.bundle):
            update_section(FEW_SHOT_TITLE, follow, "python -m benchmarks.bench_ar_quality "
                                                   + " ".join(f"--seed {s}" for s in seeds)
                                                   + f" --shots {args.shots} --references {args.references} "
                                                   f"--pool {args.pool}")
        print(follow)
    if len(seeds) == 1:
        timing = "; ".join(f"{name}: {s:.0f} s" for name, s in seconds.items())
        body = (
            f"{args.shots} shots at 64x64, held-out episode seed {seeds[0]}; each AR movie made "
            f"from the script alone by `generate` with the shipped toy bundle, from an empty cache ({timing}).\n\n"
            + markdown_table(per_seed[0])
        )
        if not (args.ar or args.bundle or args.references):
            update_section(TITLE, body, f"python -m benchmarks.bench_ar_quality --seed {seeds[0]} --shots {args.shots}")
        print(body)


def score_script(args, seed: int, out: Path | None) -> tuple[dict, dict, dict | None, list[int]]:
    """One toy script's movies scored: (reports by movie name, seconds by run, the few-shot hidden state or None,
    the reference shots picked)."""
    reports, seconds, folders = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp) if out is None else out
        tmp.mkdir(parents=True, exist_ok=True)
        few = None
        if args.references:
            script, few = few_shot_script(tmp / "script", seed, args.shots, args.references, args.pool)
        else:
            script = toy_script(tmp / "script", seed=seed, shots=args.shots, size=64)
        reports["ground truth"] = evaluate_movie(script.parent / "groundtruth", script)
        folders["ground truth"] = str(script.parent / "groundtruth")
        runs = [("AR, temperature 1", 1.0, False, None, script), ("AR, temperature 0", 0.0, False, None, script),
                ("AR without history, temperature 1", 1.0, True, None, script)]
        if args.ar or args.bundle or few is not None:
            runs = [("AR, temperature 1", 1.0, False, None, script)]
            if few is not None:
                runs.append((f"AR, temperature 1, {args.references} references", 1.0, False, None, few))
            others = [(spec, True) for spec in args.ar] + [(spec, False) for spec in args.bundle]
            for i, (spec, ar_only) in enumerate(others):
                name, _, folder = str(spec).partition("=")
                bundle = bundle_with_ar(tmp / f"bundle-{i}", Path(folder)) if ar_only else Path(folder).resolve()
                runs.append((name, 1.0, False, bundle, script))
                if few is not None:
                    runs.append((f"{name}, {args.references} references", 1.0, False, bundle, few))
        for name, temperature, masked, bundle, source in runs:
            if source == few and trained_references(bundle) == 0:
                print(f"note: {name}: the AR model was trained without reference frames and leaves them out")
            movie = tmp / name.replace(" ", "-").replace(",", "") / "movie.mp4"
            t0 = time.perf_counter()
            folder, variant = keyframe_movie(source, temperature, str(len(seconds)), movie,
                                             tmp / f"cache-{len(seconds)}", bundle=bundle, masked=masked)
            seconds[name] = time.perf_counter() - t0
            reports[name] = evaluate_movie(folder, variant)
            folders[name] = str(folder)
        if out is not None:
            (tmp / "runs.json").write_text(json.dumps(
                {"references": args.references, "hidden_state": str(tmp / "script" / "hidden_state.json")
                 if few is not None else None, "movies": folders,
                 "reports": {k: r.to_dict() for k, r in reports.items()}}, indent=1))
        hidden = json.loads((tmp / "script" / "hidden_state.json").read_text()) if few is not None else None
    chosen = [r["index"] for r in hidden["references"]] if hidden is not None else []
    return reports, seconds, hidden, chosen


if __name__ == "__main__":
    main()
