"""What every CLI verb shares: the shared options, error display and exit codes.

Errors are shown in one place (:func:`run_cli`): an :class:`~mdream.errors.MdreamError` becomes a
one-paragraph message with a hint and its exit code; Ctrl-C exits 130. A traceback reaching the
user is a bug.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mdream.errors import EXIT_FAILURE, EXIT_INTERRUPTED, MdreamError, ScriptError
from mdream.stages.registry import names_text

T = TypeVar("T")

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)

# Shared options (spaCy-style: declared once, reused by every verb).
CacheDirOpt = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Artifact cache folder \\[default: .mdream/ beside the script, or $MDREAM_CACHE]."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Override the script's seed \\[default: the script's `seed`].", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute even when a valid cached artifact exists.")]
FromStageOpt = Annotated[
    str | None,
    typer.Option("--from-stage", show_default=False,
                 help=f"Recompute from this stage on: {names_text()} \\[default: reuse every valid artifact]."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
OffloadOpt = Annotated[bool, typer.Option("--offload", help="Keep models in CPU memory and move their large parts to the GPU one at a time, while they run (for smaller GPUs; slower; same outputs).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries.")]
ScriptArg = Annotated[Path, typer.Argument(help="The movie script (YAML or JSON).", show_default=False)]


# Control characters (C0 but newline, DEL, C1) and the bidirectional overrides: shown as escapes, so
# that no text from a script or a file name can move the cursor, recolour or reorder the terminal.
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def safe(text: object) -> str:
    """``text`` ready to print through rich: control characters escaped, rich markup neutralised."""
    shown = _UNSAFE.sub(lambda m: repr(m.group())[1:-1], str(text))
    return escape(shown)


def error_to_dict(err: MdreamError) -> dict[str, Any]:
    out: dict[str, Any] = {"error": type(err).__name__, "message": err.message, "hint": err.hint, "exit_code": err.exit_code}
    if isinstance(err, ScriptError):
        out["message"] = err.message.splitlines()[0]
        out["problems"] = [
            {"file": p.file, "line": p.line, "column": p.column, "field": p.field, "message": p.message, "hint": p.hint}
            for p in err.problems
        ]
    return out


def print_error(err: MdreamError, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(error_to_dict(err), indent=2))
        return
    if isinstance(err, ScriptError):
        stderr.print(f"[bold red]error:[/] {safe(err.message.splitlines()[0])}", highlight=False)
        for p in err.problems:
            line = f"  [bold]{safe(p.location())}[/]: [cyan]{safe(p.field or '<root>')}[/]: {safe(p.message)}"
            if p.hint:
                line += f" [dim](hint: {safe(p.hint)})[/]"
            stderr.print(line, highlight=False, markup=True)
        return
    stderr.print(f"[bold red]error:[/] {safe(err.message)}", highlight=False, markup=True)
    if err.hint:
        stderr.print(f"[dim]hint: {safe(err.hint)}[/]", highlight=False)


def redeliver_swallowed_interrupt(unraisable: Any) -> None:
    """``sys.unraisablehook`` while a stage runs: a Ctrl-C whose KeyboardInterrupt landed where Python cannot raise it
    (a weakref callback, a ``__del__``: "Exception ignored in ...") is delivered again, so that it still stops the
    stage instead of being printed and lost; anything else goes to Python's own hook. The signal is sent again from
    a timer thread a moment later: raised here, it would land in this hook and be swallowed once more."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        import os
        import threading

        timer = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
        return
    sys.__unraisablehook__(unraisable)


def run_cli(fn: Callable[..., T], *args: Any, as_json: bool = False, **kwargs: Any) -> T:
    """Call a stage function; turn known errors into a message and an exit code.

    Under :func:`mdream.cli.main` Ctrl-C exits at once (one line, 130) everywhere but here: while
    ``fn`` runs it raises KeyboardInterrupt, so that writers remove their temp files and release
    their locks before the same exit.
    """
    from mdream.cli import exit_on_interrupt

    orderly = signal.getsignal(signal.SIGINT) is exit_on_interrupt
    unraisable_hook = sys.unraisablehook
    if orderly:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = redeliver_swallowed_interrupt
    try:
        return fn(*args, **kwargs)
    except MdreamError as err:
        print_error(err, as_json=as_json)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        if orderly:  # a second Ctrl-C while we say goodbye still exits 130
            signal.signal(signal.SIGINT, exit_on_interrupt)
        stderr.print("[yellow]interrupted[/]: finished artifacts are kept in the cache; rerun to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except OSError as exc:  # disk full, permission denied, ...: the machine's fault, not a bug
        where = f": {exc.filename}" if exc.filename else ""
        stderr.print(f"[bold red]error:[/] {safe(exc.strerror or exc)}{safe(where)}", highlight=False)
        stderr.print("[dim]hint: check free space and permissions; finished artifacts are kept, rerun to resume.[/]")
        raise typer.Exit(EXIT_FAILURE) from None
    except Exception as exc:  # pragma: no cover - a bug; still no bare traceback for users
        if "--debug" in sys.argv or __import__("os").environ.get("MDREAM_DEBUG"):
            raise
        stderr.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {safe(exc)}\n"
            "[dim]This is a bug in mdream; rerun with MDREAM_DEBUG=1 for the traceback and report it.[/]",
            highlight=False,
        )
        raise typer.Exit(EXIT_FAILURE) from None
    finally:
        if orderly:
            signal.signal(signal.SIGINT, exit_on_interrupt)
            sys.unraisablehook = unraisable_hook


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))
