"""Continuity of the toy world's hidden state (each scene's palette, each character's trousers) in movies of
held-out toy scripts, between its ceiling and its floor.

    python -m benchmarks.bench_continuity                         # ground truth and independent shots
    python -m benchmarks.bench_continuity --generate --device cuda  # + the AR model, with and without history
    python -m benchmarks.bench_continuity --generate --bundle DIR   # the same with another model bundle (not written)

For each episode seed (defaults are far beyond the episode numbers of the training sets, whose episodes are
``episode_seed(seed, e)``) writes the toy script of ``--shots`` shots (world 0, 64x64) and scores with
`mdream eval`'s toy backend:

* ground truth: the toy world's keyframes, hidden state constant over the episode (the ceiling: 1 up to the
  analyser's misreadings);
* independent shots: the same keyframes with every shot's hidden variants drawn anew
  (`mdream toyworld script --independent-hidden`): what shots made one by one keep (the floor: about 1/3);
* with ``--generate``: the ground truth through the tokens (the same episode as a storyboard script, every
  keyframe given: encoded and rendered by the toy tokenizer; what a keyframe model that keeps its history perfectly
  would reach), and `mdream generate` with the toy bundle (the keyframe AR model at temperature 1), and the
  same with its history masked (every shot planned from its own script alone, `bench_ar_quality.NoHistory`).
  The hidden state is in no script, so only a model that carries it over from earlier keyframes keeps it.

Agreement is pooled over the scripts: the fraction of all pairs (short-term: a scene's next shot / a character's
next appearance, close-ups skipped; long-term: 20+ shots apart) whose two readings are the same variant. A second
table corrects it for chance (Cohen's kappa against the pooled readings' variant shares), since a model that favours
one variant agrees more often than 1/3 without any history.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mdream.eval.evaluate import EvalReport, evaluate_movie
from mdream.eval.metrics import chance_agreement, chance_corrected
from mdream.toyworld.commands import toy_script

TITLE = "Continuity of the hidden state (toy)"
SEEDS = (900_001, 900_002, 900_003)
COLUMNS = tuple((name, term) for name in ("palette", "trousers") for term in ("short_term", "long_term"))
CHANCE_NOTE = (
    "Chance-corrected (Cohen's kappa: (agreement - chance) / (1 - chance), 1 continuous, 0 no better than chance; "
    "chance in brackets: the agreement of two independent draws from the movie's pooled readings, the sum of the "
    "squared variant shares). A model that draws one variant more often than the others, or one variant per "
    "character whatever the history, agrees above 1/3 without carrying anything over; kappa discounts the first."
)


def readings(reports: list[EvalReport], name: str) -> list[int]:
    """Every variant of ``name`` ("palette" or "trousers") the analyser read in the reports' shots: the readings
    that the continuity pairs are made of."""
    if name == "palette":
        return [s.predicted_palette for r in reports for s in r.shots if s.predicted_palette is not None]
    return [v for r in reports for s in r.shots for v in s.predicted_trousers.values()]


def pooled(reports: list[EvalReport]) -> dict[str, dict[str, float | int | None]]:
    """Per (attribute, term): agreement over the pairs of all the reports together, the number of pairs, the
    agreement expected by chance from the pooled readings' variant shares, and the chance-corrected agreement."""
    out = {}
    for name, term in COLUMNS:
        pairs = [getattr(r, f"n_{name}_{term}_pairs") for r in reports]
        values = [getattr(r, f"{name}_continuity_{term}") for r in reports]
        agreeing = sum(v * n for v, n in zip(values, pairs, strict=True) if v is not None)
        total = sum(n for v, n in zip(values, pairs, strict=True) if v is not None)
        agreement = agreeing / total if total else None
        chance = chance_agreement(readings(reports, name))
        out[f"{name}_{term}"] = {"agreement": agreement, "pairs": total, "chance": chance,
                                 "kappa": chance_corrected(agreement, chance)}
    return out


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(rows: dict[str, dict]) -> str:
    """The agreement table (pairs in brackets), then the chance-corrected table (chance in brackets)."""
    tables = []
    for key, extra, label in (("agreement", "pairs", "pairs"), ("kappa", "chance", "chance")):
        head = "| movie | " + " | ".join(f"{name} {term.replace('_', '-')} ({label})" for name, term in COLUMNS) + " |"
        lines = [head, "|---|" + "---:|" * len(COLUMNS)]
        for movie, row in rows.items():
            cells = []
            for name, term in COLUMNS:
                cell = row[f"{name}_{term}"]
                bracket = cell[extra] if key == "agreement" else _number(cell[extra])
                cells.append(f"{_number(cell[key])} ({bracket})")
            lines.append(f"| {movie} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return tables[0] + "\n\n" + CHANCE_NOTE + "\n\n" + tables[1]


def generated_movies(script: Path, work: Path, device: str, seed: int, shots: int, size: int,
                     bundle: Path | None = None) -> dict[str, Path]:
    """The ground truth through the tokens (every keyframe given: encoded and rendered, the ceiling of what a keyframe
    model that copies its history perfectly can keep), the AR model's movie of ``script`` at temperature 1, and the
    same with its history masked; with ``bundle``'s models (None: the shipped toy bundle)."""
    from benchmarks.bench_ar_quality import keyframe_movie, with_temperature
    from mdream.stages.options import RunOptions
    from mdream.stages.run import generate, movie_dir_for

    movies = {}
    storyboard = toy_script(work / "storyboard", seed=seed, shots=shots, size=size, given_keyframes=True)
    if bundle is not None:
        storyboard = with_temperature(storyboard, 1.0, bundle)  # (given keyframes: the temperature is unused)
    movie = work / "tokens" / "movie.mp4"
    generate(storyboard, movie, RunOptions(cache_dir=work / "cache-tokens", device=device, quiet=True), until="export")
    movies["ground truth through the tokens (ceiling of a keyframe model)"] = (movie_dir_for(movie), storyboard)
    for name, masked in (("AR, temperature 1", False), ("AR without history, temperature 1", True)):
        tag = "masked" if masked else "ar"
        movies[name] = keyframe_movie(script, 1.0, tag, work / tag / "movie.mp4", work / f"cache-{tag}", device,
                                      bundle=bundle, masked=masked)
    return movies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="Episode seeds of the scripts.")
    parser.add_argument("--shots", type=int, default=80, help="Shots per script (60+ so that 20+ gaps exist).")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--analyser", type=Path, default=None, help="A frame analyser folder (default: shipped).")
    parser.add_argument("--generate", action="store_true", help="Also score the AR model's movies (slow on CPU).")
    parser.add_argument("--device", default="cpu", help="Device of `generate` (with --generate).")
    parser.add_argument("--out", type=Path, default=None, help="Keep the scripts and movies here (default: a temp folder).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the pooled numbers and reports here.")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="With --generate: another model bundle (a folder with bundle.yaml) makes the generated "
                             "movies; its numbers are printed, not written into RESULTS.md.")
    args = parser.parse_args()
    if args.bundle is not None and not args.generate:
        parser.error("--bundle needs --generate (the ground truth and the independent shots use no model)")
    if args.bundle is not None and not (args.bundle / "bundle.yaml").is_file():
        parser.error(f"--bundle {args.bundle}: no bundle.yaml there")
    bundle = args.bundle.resolve() if args.bundle is not None else None
    t0 = time.perf_counter()
    reports: dict[str, list[EvalReport]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for seed in args.seeds:
            work = root / f"seed-{seed}"
            script = toy_script(work / "script", seed=seed, shots=args.shots, size=args.size, independent_hidden=True)
            movies = {"ground truth (ceiling)": (script.parent / "groundtruth", script),
                      "independent shots (floor)": (script.parent / "independent", script)}
            if args.generate:
                movies.update(generated_movies(script, work, args.device, seed, args.shots, args.size, bundle))
            for name, (movie, movie_script) in movies.items():
                report = evaluate_movie(movie, movie_script, analyser_dir=args.analyser)
                if report.continuity_unavailable:
                    raise SystemExit(f"continuity unavailable: {report.continuity_unavailable}")
                reports.setdefault(name, []).append(report)
    rows = {name: pooled(rs) for name, rs in reports.items()}
    seconds = time.perf_counter() - t0
    body = (
        f"{len(args.seeds)} held-out toy scripts of {args.shots} shots at {args.size}x{args.size} (episode seeds "
        f"{', '.join(map(str, args.seeds))}); agreement of the hidden variant read by the frame analyser, pooled over "
        "the scripts (pairs in brackets)" + (f"; generated with the bundle {args.bundle}" if args.bundle else "")
        + f"; {seconds:.0f} s.\n\n" + markdown(rows)
    )
    print(body)
    if args.json:
        args.json.write_text(json.dumps(
            {"pooled": rows, "reports": {n: [r.to_dict() for r in rs] for n, rs in reports.items()}}, indent=1) + "\n")
    if args.analyser is None and args.bundle is None:  # RESULTS.md holds the shipped models' numbers
        from benchmarks.results import update_section

        command = (f"python -m benchmarks.bench_continuity --seeds {' '.join(map(str, args.seeds))} --shots {args.shots}"
                   + (f" --generate --device {args.device}" if args.generate else ""))
        update_section(TITLE, body, command)


if __name__ == "__main__":
    main()
