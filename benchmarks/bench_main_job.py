"""The main job: `mdream generate SCRIPT -o movie.mp4` on the examples with the shipped toy bundle.

    python -m benchmarks.bench_main_job [--scripts short long] [--no-write]

Per script, in a fresh copy of the examples folder and an empty cache, each run a child process of its own:

1. the first run: wall time of the process, the run report's seconds per stage and in all, peak memory (the
   child's maximum resident set, ``os.wait4``);
2. the same command again (everything cached): wall and report seconds, their ratio to the first run's, and what it
   made (should be nothing);
3. one shot's descriptor edited (the shot nearest the middle), the same command again: wall, report seconds and
   what each stage made (the edited shot's encode, its keyframe and every keyframe after it, their renders).

Writes the "The main job: a movie from a script" section of ``benchmarks/RESULTS.md`` unless ``--no-write``.
Time the main job alone: other work on the machine's cores changes the numbers several-fold.
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
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.results import update_section

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "scripts"
TITLE = "The main job: a movie from a script"


@dataclass
class Run:
    """One `mdream generate` child process."""

    wall: float
    peak_rss_mb: float
    report: dict

    @property
    def seconds(self) -> float:
        """Inside `generate` (the run report's total): no interpreter start-up or imports."""
        return float(self.report["seconds"])

    def stage_seconds(self) -> dict[str, float]:
        return {r["stage"]: float(r["seconds"]) for r in self.report["stages"]}

    def made(self) -> dict[str, int]:
        return {r["stage"]: len(r["produced"]) for r in self.report["stages"]}

    def reused(self) -> dict[str, int]:
        return {r["stage"]: len(r["reused"]) for r in self.report["stages"]}


def run_generate(script: Path, movie: Path, cache: Path) -> Run:
    """`mdream generate` in a child process; its wall time, peak memory and run report."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryFile() as err:
        clock = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mdream", "generate", str(script), "-o", str(movie), "--cache-dir", str(cache),
             "--device", "cpu", "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - clock
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"mdream generate {script} failed ({proc.returncode}):\n{err.read().decode(errors='replace')}")
    report = json.loads(movie.with_suffix(".report.json").read_text())
    return Run(wall, usage.ru_maxrss / 1024, report)  # ru_maxrss: KiB on Linux


def edit_middle_shot(script: Path) -> str:
    """Change the descriptor of the shot nearest the middle of the movie; return its id."""
    data = yaml.safe_load(script.read_text())
    shots = [shot for arc in data["arcs"] for shot in arc["shots"]]
    shot = shots[len(shots) // 2]
    text = shot.get("descriptor") or ""
    edited = text.replace("Wide shot", "Close-up shot", 1)
    shot["descriptor"] = edited if edited != text else f"Close-up shot. {text}"
    script.write_text(yaml.safe_dump(data, sort_keys=False))
    return shot["id"]


def bench_script(name: str, work: Path) -> dict:
    from mdream.script import load_script, plan_script
    from mdream.stages.preview import read_video_info

    folder = work / name
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns(".mdream", "*.movie", "*.mp4", "*.report.json"))
    script, movie, cache = folder / f"{name}.yaml", work / f"{name}-out" / "movie.mp4", work / f"{name}-cache"
    plan = plan_script(load_script(script))
    print(f"{name}: first run ({len(plan.shots)} shots)", flush=True)
    first = run_generate(script, movie, cache)
    info = read_video_info(movie)
    print(f"{name}: rerun", flush=True)
    rerun = run_generate(script, movie, cache)
    edited = edit_middle_shot(script)
    print(f"{name}: edited {edited}, rerun", flush=True)
    edit = run_generate(script, movie, cache)
    return {"name": name, "shots": len(plan.shots), "duration": plan.total_duration, "fps": plan.output.fps,
            "frames": info.frames, "size": (info.width, info.height), "kind": first.report["movie_kind"],
            "first": first, "rerun": rerun, "edit": edit, "edited": edited,
            "edited_index": next(s.index for s in plan.shots if s.id == edited)}


def _made_text(run: Run) -> str:
    """What each stage made, with its seconds."""
    seconds = run.stage_seconds()
    return ", ".join(f"{stage} {n} ({seconds[stage]:.1f} s)" for stage, n in run.made().items() if n) or "nothing"


def table(results: list[dict]) -> str:
    stages: list[str] = []
    for r in results:
        stages += [s for s in r["first"].stage_seconds() if s not in stages]
    head = ("| script | shots | running time | movie | wall | in `generate` | "
            + " | ".join(stages) + " | peak memory |")
    lines = [head, "|" + "---|" * (7 + len(stages))]
    for r in results:
        first, per_stage = r["first"], r["first"].stage_seconds()
        lines.append(
            f"| `examples/scripts/{r['name']}.yaml` | {r['shots']} | {r['duration']:g} s ({r['frames']:,} frames at "
            f"{r['fps']} fps) | {r['kind']}, {r['size'][0]}x{r['size'][1]} | {first.wall:.1f} s | {first.seconds:.1f} s | "
            + " | ".join(f"{per_stage[s]:.1f} s" if s in per_stage else "-" for s in stages)
            + f" | {first.peak_rss_mb / 1024:.2f} GB |"
        )
    again = ["| script | rerun: wall (of the first run's) | rerun: in `generate` (of the first run's) | rerun made | "
             "edited shot | edit: wall | edit: in `generate` | edit made |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        first, rerun, edit = r["first"], r["rerun"], r["edit"]
        again.append(
            f"| `{r['name']}.yaml` | {rerun.wall:.1f} s ({100 * rerun.wall / first.wall:.0f}%) | {rerun.seconds:.2f} s "
            f"({100 * rerun.seconds / first.seconds:.1f}%) | {_made_text(rerun)} | {r['edited']} "
            f"({r['edited_index'] + 1} of {r['shots']}) | {edit.wall:.1f} s | {edit.seconds:.1f} s | {_made_text(edit)} |"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(again)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scripts", nargs="+", default=["short", "long"], help="example scripts (names in examples/scripts)")
    parser.add_argument("--no-write", action="store_true", help="print the tables, leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    for name in args.scripts:
        if not (EXAMPLES / f"{name}.yaml").is_file():
            parser.error(f"no example script {EXAMPLES / name}.yaml")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mdream-bench-main-") as tmp:
        results = [bench_script(name, Path(tmp)) for name in args.scripts]
    threads = os.environ.get("OMP_NUM_THREADS", "torch's default")
    body = (
        "`mdream generate SCRIPT -o movie.mp4 --device cpu` with the shipped toy bundle, each run a process of its own, "
        f"the first from an empty cache (OMP_NUM_THREADS={threads}; load average {load:.1f} when it started). "
        "*Wall*: the whole process (interpreter start-up and imports included); *in `generate`*: the run report's "
        "total, split by stage in the next columns (`export`: keyframes, storyboard and animatic to the movie "
        "folder); *peak memory*: the process's maximum resident set. Every keyframe is predicted by the keyframe AR "
        "model; without a video model in the bundle the movie is the animatic.\n\n"
        + table(results)
        + "\n\n*Rerun*: the same command again, everything cached. *Edit*: then the descriptor of the shot nearest "
        "the middle changed (`Wide shot` -> `Close-up shot`) and the command run again; *made* counts what each "
        "stage produced (the keyframe AR model conditions each shot on the ones before it, so the edited shot's "
        "keyframe, every keyframe after it and their renders are made again; the export step rewrites the movie "
        "folder)."
    )
    print(body)
    if not args.no_write:
        update_section(TITLE, body, "python -m benchmarks.bench_main_job")


if __name__ == "__main__":
    main()
