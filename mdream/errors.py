"""Errors that the CLI turns into a one-paragraph message and an exit code.

Every error a user can cause (bad script, missing file, corrupt artifact) is raised as a
subclass of :class:`MdreamError`; the CLI prints ``message`` (+ ``hint``) and exits with
``exit_code``; never a traceback. Anything else that escapes is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Documented exit codes (README "Exit codes").
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class MdreamError(Exception):
    """A failure we can explain to the user. Exit code 1 (runtime failure)."""

    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nHint: {self.hint}"


class InputError(MdreamError):
    """The user's input is wrong (file missing, bad option, malformed data). Exit code 2."""

    exit_code = EXIT_BAD_INPUT


class NotBuiltError(MdreamError):
    """A stage or component that does not exist yet. Exit code 1, never silent."""


class CorruptArtifactError(MdreamError):
    """A cached artifact failed its checksum or could not be parsed."""


@dataclass(frozen=True)
class Problem:
    """One located problem in a script: ``file:line:column: field: message (hint)``."""

    file: str
    line: int | None
    column: int | None
    field: str
    message: str
    hint: str | None = None

    def location(self) -> str:
        loc = self.file
        if self.line is not None:
            loc += f":{self.line}"
            if self.column is not None:
                loc += f":{self.column}"
        return loc

    def __str__(self) -> str:
        text = f"{self.location()}: {self.field or '<root>'}: {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


@dataclass
class ScriptError(InputError):
    """A script with one or more problems; all of them are reported at once."""

    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in script"
        InputError.__init__(self, head + ":\n" + "\n".join(f"  {p}" for p in self.problems))

    def __hash__(self) -> int:  # dataclass eq=True would make it unhashable; exceptions need hashing
        return id(self)
