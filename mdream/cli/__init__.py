"""The ``mdream`` command. :func:`main` is the entry point; it imports nothing heavy before it has
made Ctrl-C an orderly exit (one line, exit code 130), so an interrupt during start-up (importing
torch, ...) never prints a traceback.
"""

from __future__ import annotations

import os
import signal
import sys

EXIT_INTERRUPTED = 130  # mdream.errors.EXIT_INTERRUPTED, repeated to keep this module import-free


def exit_on_interrupt(signum: int = signal.SIGINT, frame: object = None) -> None:
    """SIGINT handler outside a stage's work: say so in one line and exit 130 at once."""
    try:
        os.write(2, b"\ninterrupted\n")
    finally:
        os._exit(EXIT_INTERRUPTED)


def install_interrupt_handler() -> None:
    """Make Ctrl-C exit 130 with one line from here on (stages switch to KeyboardInterrupt in run_cli)."""
    try:
        signal.signal(signal.SIGINT, exit_on_interrupt)
    except ValueError:  # not the main thread (embedded use): leave Python's default
        pass


def main() -> None:
    """Entry point of ``mdream`` and ``python -m mdream``."""
    install_interrupt_handler()
    try:
        from mdream.cli.main import main as run
    except KeyboardInterrupt:  # a handler installed by someone else raised it
        sys.stderr.write("\ninterrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    try:
        run()
    finally:
        # The command is done. Python restores SIGINT's default action while it shuts down, so a Ctrl-C
        # arriving then would kill the process by the signal (exit -2, after the work finished): ignore it.
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
