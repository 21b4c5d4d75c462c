"""``mdream eval MOVIE_DIR --script script.yaml``: score a generated movie against its script."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mdream.cli._apps import mdream_app
from mdream.cli._common import print_json, run_cli, stdout


def _format(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def show_eval_report(report) -> None:
    """A rich table of the headline metrics, then the notes."""
    table = Table(title=f"mdream eval ({report.backend} backend): {report.n_shots} shots, {report.n_faces} faces")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("better", justify="center")
    for name, label, direction in report.METRICS:
        table.add_row(label, _format(getattr(report, name)), "higher" if direction == "higher" else "lower")
    stdout.print(table)
    stdout.print(
        f"identity pairs: {report.n_short_term_pairs} short-term, {report.n_long_term_pairs} long-term",
        highlight=False,
    )
    if report.continuity_unavailable:
        stdout.print(f"continuity: unavailable ({report.continuity_unavailable})", highlight=False)
    else:
        pairs = ", ".join(f"{name} {getattr(report, short)} short-term / {getattr(report, long)} long-term"
                          for name, short, long in report.CONTINUITY_PAIRS)
        stdout.print(f"continuity pairs: {pairs}", highlight=False)
    if report.frames == "clips":
        stdout.print(f"frames: clips from {report.clips_source}; motion pairs: {report.n_motion_pairs} "
                     f"({report.n_motion_skipped} skipped), camera pairs: {report.n_camera_pairs}", highlight=False)
        if report.motion_agreement_by_action:
            by_action = ", ".join(f"{a} {v:.2f}" for a, v in report.motion_agreement_by_action.items())
            stdout.print(f"motion agreement by action: {by_action}", highlight=False)
    for note in report.notes:
        stdout.print(f"[dim]note: {note}[/]", highlight=False)


def eval_cli(
    movie_dir: Annotated[Path, typer.Argument(help="The movie folder (keyframes/0000.png ...).", show_default=False)],
    script: Annotated[Path, typer.Option("--script", "-s", help="The script the movie was generated from.")],
    backend: Annotated[str, typer.Option("--backend", help="toy (shipped evaluator) or real (CLIP + insightface).")] = "toy",
    clip_model: Annotated[
        str | None, typer.Option("--clip-model", help="Real backend: CLIP model, hub id or folder.")
    ] = None,
    face_model: Annotated[
        Path | None, typer.Option("--face-model", help="An insightface recognition .onnx (default on toy: shipped).")
    ] = None,
    analyser: Annotated[
        Path | None, typer.Option("--analyser", help="Toy backend: a frame analyser folder (default: shipped).")
    ] = None,
    frames: Annotated[
        str, typer.Option("--frames", help="keyframes (keyframes/NNNN.png) or clips (sampled frames of every shot's "
                                           "clip, and the motion of the whole clip).")
    ] = "keyframes",
    movie: Annotated[
        Path | None, typer.Option("--movie", help="With --frames clips: the mp4 to score (default: clips/ in the "
                                                  "folder, else the mp4 beside it, MOVIE_DIR.mp4).")
    ] = None,
    motion_reader: Annotated[
        Path | None, typer.Option("--motion-reader", help="Toy backend: a motion reader folder (default: shipped).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
) -> None:
    """Score a generated movie against its script: adherence, identity consistency, continuity, toy-FID, diversity;
    with --frames clips also the motion of every shot (its cast's actions, its camera)."""
    from mdream.eval.evaluate import evaluate_movie

    report = run_cli(
        evaluate_movie, movie_dir, script, backend=backend, clip_model=clip_model, face_model=face_model,
        analyser_dir=analyser, frames=frames, movie=movie, motion_reader_dir=motion_reader, as_json=json_out,
    )
    if json_out:
        print_json(report.to_dict())
    else:
        show_eval_report(report)


app = mdream_app("eval", no_args_is_help=False)
app.command("eval")(eval_cli)
