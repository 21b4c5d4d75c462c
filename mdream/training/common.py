"""Shared training helpers: field docstrings, run-folder caches, checkpoint folders, schedule, budget, progress.

The loop itself is :mod:`mdream.training.loop`; settings and recipes are :mod:`mdream.training.config`.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import json
import math
import os
import shutil
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mdream.cache import atomic_write, atomic_write_bytes
from mdream.errors import InputError
from mdream.models.bundle import hash_tree

T = TypeVar("T")

console = Console(stderr=True)


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstring written under each dataclass field (litgpt style), by field name.

    Base classes are read first, so a subclass that only changes a field's default keeps its docstring.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def load_cache(path: Path, load: Callable[[Path], T]) -> T | None:
    """``load(path)`` of a run-folder cache; None when it is missing or unreadable, so the caller rebuilds it.

    These caches (frames, embeddings, CLIP features) are derived data, never the only copy of
    anything: a damaged one is rebuilt with a warning instead of stopping the run.
    """
    if not path.is_file():
        return None
    try:
        return load(path)
    except Exception as exc:  # numpy raises many types (OSError, ValueError, BadZipFile, EOFError...) for a damaged file
        console.print(f"[yellow]{path} is unreadable ({type(exc).__name__}: {exc}); rebuilding it[/]", highlight=False)
        return None


def rendered_pool(path: Path, size: int, name: str, labels: tuple[str, ...],
                  render: Callable[[int], tuple[np.ndarray, dict[str, np.ndarray]]], chunk: int,
                  fits: Callable[[np.ndarray], bool]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A pool of ``size`` rendered samples and their integer labels, cached at ``path`` (npz: the samples as
    ``name``, each label by its name). A cache that is damaged, or whose samples do not ``fit`` the run's settings,
    is rendered again: ``render(n)`` -> (samples [n, ...], labels), ``chunk`` at a time under a progress bar."""
    from rich.progress import Progress

    def load_pool(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with np.load(path) as data:
            return data[name], {label: data[label] for label in labels}

    pool = load_cache(path, load_pool)
    if pool is not None and fits(pool[0]):
        return pool
    samples: np.ndarray | None = None
    values: dict[str, np.ndarray] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("rendering pool", total=size)
        for start in range(0, size, chunk):
            n = min(chunk, size - start)
            part, fresh = render(n)
            if samples is None:
                samples = np.empty((size, *part.shape[1:]), part.dtype)
            samples[start:start + n] = part
            for label, value in fresh.items():
                values.setdefault(label, np.empty((size, *value.shape[1:]), np.int64))[start:start + n] = value
            progress.update(task, completed=start + n)
    atomic_write(path, lambda f: np.savez(f, **{name: samples}, **values))
    return samples, values


def check_same_shapes(fresh: torch.nn.Module, trained: torch.nn.Module, source: str, what: str) -> None:
    """Refuse --init weights (``what``: the part, e.g. "decoder") whose shapes differ from the model the config
    builds."""
    ours = {k: v.shape for k, v in fresh.state_dict().items()}
    theirs = {k: v.shape for k, v in trained.state_dict().items()}
    if ours != theirs:
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))[:3]
        raise InputError(f"--init {source}: its {what} does not match this config's ({', '.join(differ)} differ).",
                         hint="Fine-tune with the settings the model was trained with (its train_config.json).")


def content_key(*parts: Any) -> str:
    """A sha256 over what a cache is made from: arrays by dtype, shape and bytes, anything else by its repr."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(repr((part.dtype.str, part.shape)).encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def model_key(source: str | Path) -> str:
    """What identifies a model a cache was computed with: a local folder or file by its contents (so a CLIP
    retrained in place gives another key); a hub id only by its name, so new weights pushed under the same id are
    not noticed (use a local folder where that matters)."""
    path = Path(source)
    return f"files:{hash_tree(path)}" if path.exists() else f"hub:{source}"


def load_keyed_cache(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays of an npz cache written by ``save_keyed_cache`` with this key; None when it is missing, unreadable
    or made from other inputs (a cache copied from another run, a resume with other frames), so the caller rebuilds it.
    """
    def read(path: Path) -> dict[str, np.ndarray]:
        with np.load(path) as z:
            return {name: z[name] for name in z.files}

    arrays = load_cache(path, read)
    if arrays is None:
        return None
    if str(arrays.pop("key", "")) != key:
        console.print(f"[yellow]{path} was made from other inputs; rebuilding it[/]", highlight=False)
        return None
    return arrays


def save_keyed_cache(path: Path, key: str, **arrays: np.ndarray) -> None:
    """np.savez of ``arrays`` with the key of their inputs, atomically."""
    atomic_write(path, lambda f: np.savez(f, key=np.array(key), **arrays))


def parse_int_tuple(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError as exc:
        raise InputError(f"{what} must be comma-separated integers, got '{text}'.") from exc
    if not values:
        raise InputError(f"{what} must list at least one integer.")
    return values


# ---- checkpoints -------------------------------------------------------------------------------


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:07d}"


def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / "checkpoints" / "latest"
    if pointer.is_file():
        candidate = out / "checkpoints" / pointer.read_text().strip()
        if (candidate / "state.json").is_file():
            return candidate
    complete = sorted(p for p in (out / "checkpoints").glob("step-*") if (p / "state.json").is_file())
    return complete[-1] if complete else None


def resolve_resume(resume: str, out: Path) -> Path | None:
    """``auto``: the newest complete checkpoint under OUT (or none); ``never``: start fresh; else a checkpoint folder."""
    if resume in ("never", "no", "none", ""):
        return None
    if resume == "auto":
        return latest_checkpoint(out)
    path = Path(resume)
    if path.is_dir() and not (path / "state.json").is_file():
        found = latest_checkpoint(path)
        if found is not None:
            return found
    if not (path / "state.json").is_file():
        raise InputError(
            f"--resume {resume}: no complete checkpoint there (a checkpoint folder holds state.json).",
            hint="Use --resume auto to continue from the newest checkpoint under --out, or --resume never.",
        )
    return path


def finish_checkpoint(out: Path, folder: Path, state: dict[str, Any], keep: int) -> None:
    """Write state.json last (it marks the checkpoint complete), move the pointer, prune old ones."""
    atomic_write_bytes(folder / "state.json", (json.dumps(state, indent=2) + "\n").encode())
    atomic_write_bytes(out / "checkpoints" / "latest", (folder.name + "\n").encode())
    complete = sorted(p for p in (out / "checkpoints").glob("step-*") if (p / "state.json").is_file())
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# ---- schedules and progress ----------------------------------------------------------------------


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float = 0.1, time_fraction: float = 0.0,
          restart_at: int = 0) -> float:
    """Linear warmup, then cosine decay to ``min_ratio * peak`` at ``total``.

    ``time_fraction`` (elapsed / budget of a time-limited run) moves the decay forward when the time
    runs out before the steps do, so a run stopped by its budget still ends at the low learning rate.
    ``restart_at`` > 0: a warm restart (SGDR, Loshchilov & Hutter 2017): before that step the cosine decays over
    ``restart_at`` steps, from it on the learning rate is the cosine over ``total``'s.
    """
    if step < restart_at:
        total = restart_at
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def resolve_mixed_precision(setting: str) -> str:
    if setting == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return setting


def make_accelerator(mixed_precision: str, grad_accum: int, **kwargs: Any):
    """The run's ``accelerate.Accelerator``: one process, or one per GPU under ``accelerate launch``.

    Under ``torchrun`` on a machine without CUDA (several CPU processes, gloo) accelerate only takes
    the multi-process CPU path when asked for the CPU, so ask for it there.
    """
    from accelerate import Accelerator

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(mixed_precision=resolve_mixed_precision(mixed_precision), gradient_accumulation_steps=grad_accum,
                       cpu=distributed and not torch.cuda.is_available(), **kwargs)


class TimeBudget:
    """A run's training-time budget (``--max-minutes``), counting the time spent before a resume too."""

    def __init__(self, minutes: float, before: float = 0.0):
        self.seconds = minutes * 60.0
        # the spent time travels in each checkpoint, so a resumed run keeps counting
        self.before = before
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.start

    def fraction(self) -> float:
        """Share of the budget spent (0 without a budget): feeds ``lr_at(time_fraction=...)``."""
        return self.elapsed() / self.seconds if self.seconds else 0.0

    def spent(self) -> bool:
        return bool(self.seconds) and self.elapsed() >= self.seconds

    def spent_before_start(self, step: int) -> bool:
        """A resumed run whose budget was already spent takes no step (and says so once)."""
        spent = bool(self.seconds) and self.before >= self.seconds
        if spent:
            console.print(f"training-time budget of {self.seconds / 60:g} min already spent at step {step}")
        return spent


def training_progress(description: str, disable: bool = False) -> Progress:
    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )


class Throughput:
    """Samples per second over a sliding window of steps."""

    def __init__(self, window: int = 20):
        self.window = window
        self.marks: list[tuple[float, int]] = []

    def update(self, samples_done: int) -> float:
        self.marks.append((time.perf_counter(), samples_done))
        self.marks = self.marks[-self.window :]
        if len(self.marks) < 2:
            return 0.0
        (t0, s0), (t1, s1) = self.marks[0], self.marks[-1]
        return (s1 - s0) / max(t1 - t0, 1e-9)


def set_threads_from_env() -> None:
    """Respect OMP_NUM_THREADS/MDREAM_THREADS on shared CPU machines."""
    threads = os.environ.get("MDREAM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if threads and not torch.cuda.is_available():
        torch.set_num_threads(int(threads))
