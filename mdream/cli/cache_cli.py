"""``mdream cache``: what an artifact cache holds, and pruning its debris (plain functions in mdream.cache.admin)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mdream.cli._apps import mdream_app
from mdream.cli._common import JsonOpt, print_json, run_cli, stdout
from mdream.errors import InputError

app = mdream_app(
    "cache", "Inspect an artifact cache and prune its debris (quarantined artifacts, dead writers' temp folders)."
)

TargetArg = Annotated[
    Path, typer.Argument(help="A script (its cache: --cache-dir rules, $MDREAM_CACHE or .mdream/ beside it) or a cache folder.",
                         show_default=False)
]


def cache_root(target: Path) -> Path:
    """The cache folder a script uses, or ``target`` itself when it is a folder."""
    from mdream.stages.options import resolve_cache_dir

    if target.is_dir():
        return target.resolve()
    if target.is_file():
        root = resolve_cache_dir(target, None)
        if not root.is_dir():
            raise InputError(f"{target}: its cache {root} does not exist yet.", hint="Run a stage first, e.g. `mdream encode SCRIPT`.")
        return root
    raise InputError(f"{target}: no such script or cache folder.")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command("info")
def info_cli(target: TargetArg, json_out: JsonOpt = False) -> None:
    """Artifacts and bytes per stage, quarantined artifacts, leftover temp folders and lock files."""
    from mdream.cache.admin import cache_usage

    usage = run_cli(lambda: cache_usage(cache_root(target)), as_json=json_out)
    if json_out:
        print_json(usage.to_dict())
        return
    from rich.table import Table

    table = Table(title=f"cache {usage.root}")
    table.add_column("stage")
    table.add_column("artifacts", justify="right")
    table.add_column("size", justify="right")
    for name, stage in sorted(usage.stages.items()):
        table.add_row(name, str(stage.artifacts), _human(stage.bytes))
    quarantined = sum(q.bytes for q in usage.quarantined)
    table.add_row("[dim]quarantined (corrupt)[/]", str(len(usage.quarantined)), _human(quarantined))
    stdout.print(table)
    stdout.print(f"{usage.leftovers} leftover temp folder(s), {usage.lock_files} lock file(s)", highlight=False)
    if usage.quarantined or usage.leftovers:
        stdout.print("[dim]`mdream cache prune` removes the quarantined artifacts and leftover temp folders.[/]")


@app.command("prune")
def prune_cli(
    target: TargetArg,
    keep_days: Annotated[float, typer.Option("--keep-days", help="Keep quarantined artifacts younger than this.")] = 0.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Remove quarantined artifacts and dead writers' temp folders; published artifacts and locks are kept."""
    from mdream.cache.admin import prune_cache

    report = run_cli(lambda: prune_cache(cache_root(target), keep_days=keep_days, dry_run=dry_run), as_json=json_out)
    if json_out:
        print_json(report.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for q in report.removed_quarantined:
        stdout.print(f"{verb} {q.path} ({_human(q.bytes)})", highlight=False)
    stdout.print(f"{verb} {len(report.removed_quarantined)} quarantined artifact(s) ({_human(report.freed_bytes)}) and "
                 f"{report.removed_leftovers} leftover temp folder(s)", highlight=False)
