"""``mdream models``: the model bundles this machine knows and what each component needs (plain
functions in :mod:`mdream.models.inventory`; nothing is loaded or downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mdream.cli._apps import mdream_app
from mdream.cli._common import JsonOpt, print_json, run_cli, safe, stdout

app = mdream_app(
    "models", "List model bundles and show each one's components: class, source, size, presence, defaults."
)


@app.command("list")
def list_cli(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Your bundles too: folders holding bundle.yaml, or bundle YAML files.", show_default=False),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the built-in bundles (and the ones at PATHS): components present, size on disk."""
    from rich.table import Table

    from mdream.models.inventory import human_size, list_bundles

    bundles = run_cli(list_bundles, list(paths or []), as_json=json_out)
    if json_out:
        print_json([b.to_dict() for b in bundles])
        return
    table = Table(title="model bundles")
    for col in ("name", "kind", "present", "size", "file"):
        table.add_column(col)
    for b in bundles:
        style = "green" if b.present == len(b.components) else "yellow"
        table.add_row(safe(b.name), "built-in" if b.builtin else "yours",
                      f"[{style}]{b.present}/{len(b.components)}[/]", human_size(b.size_bytes), safe(b.file))
    stdout.print(table)
    stdout.print("[dim]`mdream models show NAME` lists a bundle's components.[/]")


@app.command("show")
def show_cli(
    name: Annotated[str, typer.Argument(help="A built-in bundle name (toy, full), a bundle folder or a bundle YAML file.",
                                        show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Show a bundle's components: class, where each loads from, size, presence, dtype and sampling defaults."""
    from rich.table import Table

    from mdream.models.inventory import human_size, show_bundle

    info = run_cli(show_bundle, name, as_json=json_out)
    if json_out:
        print_json(info.to_dict())
        return
    stdout.print(f"[bold]{safe(info.name)}[/]  {safe(info.file)}", highlight=False)
    table = Table()
    for col in ("component", "class", "loads from", "size", "present", "dtype", "defaults"):
        table.add_column(col, overflow="fold")
    for c in info.components:
        where = safe(f"hub {c.location}" if c.source == "hub" else c.location)
        if c.backbone is not None:
            b = c.backbone
            mark = f"[green]present[/], {human_size(b['size_bytes'])}" if b["present"] else "[red]absent[/]"
            where += f"\nbackbone: {safe(('hub ' if b['source'] == 'hub' else '') + b['location'])} ({mark})"
        defaults = ", ".join(f"{k} {v}" for k, v in c.sampling.items()) or "-"
        table.add_row(
            c.name, safe(c.class_name or "(from its files)"), where,
            human_size(c.size_bytes) if c.present else "-",
            "[green]yes[/]" if c.present else "[red]no[/]", c.dtype or "as saved", safe(defaults),
        )
    stdout.print(table)
    absent = [c for c in info.components if not c.present or (c.backbone and not c.backbone["present"])]
    for c in absent:
        if c.train:
            stdout.print(f"[yellow]{c.name}[/]: {safe(c.train)}", highlight=False)
    if absent:
        stdout.print("[dim]mdream never downloads models: fetch a hub id with `huggingface-cli download ID`.[/]")
