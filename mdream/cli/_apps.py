"""How mdream's Typer apps are built: one set of app settings, and sub-commands loaded by module
name on first use (click's "lazy loading of subcommands" pattern, through Typer's ``cls=``).

``mdream train``, ``toyworld``, ``eval`` and ``cache`` live beside their packages; the top-level group
names them by ``"module:attribute"`` strings, so ``import mdream.cli.main`` imports none of those
packages (nor torch). The listing in ``mdream --help`` shows each one's registered one-line help
without importing it; running the sub-command (or its ``--help``) imports it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup


def mdream_app(name: str | None = None, help: str | None = None, **settings: Any) -> typer.Typer:
    """A Typer app with mdream's settings: errors shown by ``run_cli`` (no pretty tracebacks), no shell
    completion options, rich markup, and the help when run without arguments; ``settings`` override."""
    options: dict[str, Any] = dict(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                                   rich_markup_mode="rich")
    return typer.Typer(name=name, help=help, **{**options, **settings})


@dataclass(frozen=True)
class LazySubcommand:
    """Where a sub-command lives and what ``mdream --help`` says about it."""

    target: str
    """``"package.module:attribute"``: a ``typer.Typer`` app (a group, or a single command) or a click command."""
    help: str
    """The one-line help listed by ``mdream --help``; equals the loaded command's first help paragraph."""


def load_command(name: str, target: str) -> Any:
    """Import ``target`` (``"module:attribute"``) and return it as a click command named ``name``."""
    module_name, _, attribute = target.partition(":")
    obj = getattr(importlib.import_module(module_name), attribute)
    command = typer.main.get_command(obj) if isinstance(obj, typer.Typer) else obj
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """A Typer group whose ``lazy_subcommands`` are imported only when one is run (use via ``cls=``)."""

    lazy_subcommands: ClassVar[dict[str, LazySubcommand]] = {}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # stand-ins keep the listing's order and "Did you mean ...?" suggestions without an import
        for name, entry in self.lazy_subcommands.items():
            self.commands[name] = TyperCommand(name, help=entry.help)
        self._loaded: dict[str, Any] = {}
        self._listing = False

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = self.lazy_subcommands.get(cmd_name)
        if entry is None:
            return super().get_command(ctx, cmd_name)
        if self._listing:  # the help listing needs only a name and a line: keep the import for later
            return self._loaded.get(cmd_name) or self.commands[cmd_name]
        if cmd_name not in self._loaded:
            self._loaded[cmd_name] = load_command(cmd_name, entry.target)
        return self._loaded[cmd_name]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


def lazy_group(subcommands: dict[str, LazySubcommand]) -> type[LazyGroup]:
    """A :class:`LazyGroup` class with these sub-commands, for ``typer.Typer(cls=...)``."""
    return type("MdreamLazyGroup", (LazyGroup,), {"lazy_subcommands": dict(subcommands)})
