"""Rich rendering of stage results (kept apart from the commands so they stay thin)."""

from __future__ import annotations

from rich.table import Table

from mdream.cli._common import print_error, safe, stdout


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}:{s:02d}"


def show_validation(results, quiet: bool = False) -> None:
    for r in results:
        if not r.ok:
            stdout.print(f"[bold red]✗[/] {safe(r.path)}", highlight=False)
            print_error(r.error)
            continue
        if quiet:
            continue
        stdout.print(f"[bold green]✓[/] {safe(r.path)}: [bold]{safe(r.title)}[/]", highlight=False)
        table = Table(show_header=False, box=None, padding=(0, 2))
        table.add_row("cast", safe(", ".join(r.characters) or "-"))
        table.add_row("scenes", safe(", ".join(r.scenes)))
        table.add_row("shots", f"{r.shots} in {r.arcs} arc{'s' if r.arcs != 1 else ''}")
        table.add_row("running time", _duration(r.total_seconds))
        stdout.print(table)


def show_reports(reports) -> None:
    table = Table(title="stages")
    for col in ("stage", "produced", "reused", "by other process", "seconds"):
        table.add_column(col)
    for r in reports:
        table.add_row(r.stage, str(len(r.produced)), str(len(r.reused)), str(len(r.by_other_process)), f"{r.seconds:.1f}")
    stdout.print(table)


def show_generate(result) -> None:
    """The final table of ``mdream generate``: per stage its time, artifacts made / reused, outputs."""
    from mdream.models.inventory import human_size

    title = f"{result.info.get('title') or ''}  ({result.script})" if result.script else "stages"
    table = Table(title=safe(title))
    gpu = any(r.peak_gpu_bytes is not None for r in result.reports)  # a CUDA run: each stage's peak GPU memory
    for col in ("stage", "time", "made", "reused", "by other process", *(["peak GPU"] if gpu else []), "outputs"):
        table.add_column(col)
    for r in result.reports:
        outputs = "-" if not r.outputs else safe(r.outputs[0]) if len(r.outputs) == 1 else \
            f"{len(r.outputs)} files in {safe(result.movie_dir)}/"
        peak = [human_size(r.peak_gpu_bytes) if r.peak_gpu_bytes is not None else ""] if gpu else []
        table.add_row(r.stage, f"{r.seconds:.1f} s", str(len(r.produced)), str(len(r.reused)),
                      str(len(r.by_other_process)), *peak, outputs)
    if result.output is not None and result.output.is_file():
        table.add_row("movie", "", "", "", "", *([""] if gpu else []),
                      f"{safe(result.output)} ({human_size(result.output.stat().st_size)})")
    stdout.print(table)
    if result.movie_dir is not None:
        stdout.print(f"[green]wrote[/] {safe(result.movie_dir)}/ (keyframes, storyboard.png, animatic.mp4)")
    if result.movie_kind == "animatic":
        stdout.print(f"[green]wrote[/] {safe(result.output)}: the animatic (each keyframe held for its shot; "
                     "the model bundle has no video model yet)")
    elif result.movie_kind == "video":
        stdout.print(f"[green]wrote[/] {safe(result.output)}: every shot's clip from the video model")
    if result.report_path is not None:
        stdout.print(f"[green]wrote[/] {safe(result.report_path)} (the run report: stages, keys, bundle, seed)")


_STYLE = {"done": "green", "stale": "yellow", "missing": "dim", "running": "cyan", "corrupt": "bold red"}


def show_status(report) -> None:
    stdout.print(f"[bold]{safe(report.title)}[/]  cache: {safe(report.cache_dir)}", highlight=False)
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("shot")
    for stage in report.stages:
        table.add_column(stage)
    for row in report.rows:
        cells = [f"[{_STYLE.get(row.states[s], '')}]{row.states[s]}[/]" for s in report.stages]
        table.add_row(str(row.index), row.shot_id, *cells)
    stdout.print(table)
    totals = report.totals()
    stdout.print(
        "  ".join(f"{stage}: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) for stage, counts in totals.items())
    )
    if not report.verified:
        stdout.print(
            "[dim]checked: file sizes, and the checksums of files under 1 MiB; "
            "`mdream status --verify` checks every file's checksum.[/]", highlight=False
        )
    for step in getattr(report, "steps", []):  # per-movie steps, one line per target folder
        stdout.print(f"{step.step} -> {safe(step.target)}: [{_STYLE.get(step.state, '')}]{step.state}[/]")
