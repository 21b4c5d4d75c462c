"""The one training loop: ``fit(task, config, out, accelerator)``.

A trainer builds its model and data, describes one micro-batch as a :class:`TrainingTask` (``sample`` draws a
batch, ``loss`` returns its losses) and calls :func:`fit`, which owns everything else: the AdamW optimizer and its
learning-rate schedule (linear warmup, cosine decay over whichever of ``--steps`` and ``--max-minutes`` runs out
first), gradient accumulation, clipping, mixed precision and several processes (accelerate), the EMA of the
weights, the progress bar and log lines, periodic checkpoints (``accelerator.save_state``; the EMA and the
loop's own counters through ``register_for_checkpointing``), keeping the last N, and resuming from one.

Checkpoint layout of a run folder ``OUT/``::

    OUT/train_config.json                the resolved settings
    OUT/checkpoints/step-0000500/train/  accelerate's state (model.safetensors, optimizer, RNGs, EMA, counters)
    OUT/checkpoints/step-0000500/...     what the task exports (e.g. encoder/, decoder/ with the EMA weights)
    OUT/checkpoints/step-0000500/state.json   written last: the step, the last losses and metrics, elapsed_s
    OUT/checkpoints/latest               the name of the newest complete checkpoint
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from mdream.errors import InputError
from mdream.training.common import (
    Throughput,
    TimeBudget,
    checkpoint_dir,
    console,
    finish_checkpoint,
    lr_at,
    make_accelerator,
    resolve_resume,
    set_threads_from_env,
    training_progress,
)
from mdream.training.config import ConfigValueError, Settings, check_config, resumed_config, save_config

MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")


@dataclasses.dataclass
class LoopConfig(Settings):
    """Settings of the training loop every trainer shares; a trainer's config subclasses it, redeclaring a field
    only to change its default."""

    help_panel: ClassVar[str] = "Training loop"

    steps: int = 500
    """Optimizer steps."""
    batch_size: int = 32
    """Training examples per optimizer step, per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; each holds batch_size / grad_accum examples."""
    lr: float = 1e-3
    """Peak learning rate (AdamW), cosine-decayed after warmup."""
    warmup: int = 50
    """Linear warmup steps."""
    min_lr_ratio: float = 0.1
    """The learning rate at the end of the cosine decay, as a share of --lr."""
    lr_restart_at: int = 0
    """A warm restart (SGDR, Loshchilov & Hutter 2017): the cosine first decays over this many steps; from this step
    on the learning rate jumps back to where a cosine over all --steps stands and decays with it, as a run stopped
    by its budget and resumed with a larger one does (0: one cosine)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 0.0
    """Clip the gradients' global norm to this (0: no clipping)."""
    ema_decay: float = 0.0
    """EMA decay of the exported weights, with EMA warm-up (0: no EMA)."""
    seed: int = 0
    """Seed for initialisation, data order and held-out data."""
    mixed_precision: str = "auto"
    """accelerate mixed precision: auto (bf16 on CUDA, none on CPU), no, bf16, fp16."""
    checkpoint_every: int = 100
    """Steps between checkpoints (one is also written at the last step)."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep."""
    max_minutes: float = 0.0
    """Training-time budget in minutes (0 = none): stop at --steps or when it is spent, whichever comes first; the learning rate decays over whichever runs out first."""
    log_every: int = 50
    """Steps between log lines (mean losses, throughput)."""
    eval_every: int = 0
    """Steps between the trainer's held-out measurements, if it has any (0: only at the end)."""

    def check(self) -> None:
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "checkpoint_every": self.checkpoint_every, "keep_checkpoints": self.keep_checkpoints,
                    "log_every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise ConfigValueError(name, f"--{name.replace('_', '-')} must be >= 1, got {value}.")
        for name in ("steps", "warmup", "eval_every", "lr_restart_at"):
            if getattr(self, name) < 0:
                raise ConfigValueError(name, f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}.")
        for name in ("lr", "weight_decay", "max_grad_norm", "max_minutes"):
            if not getattr(self, name) >= 0:
                raise ConfigValueError(name, f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}.")
        if self.batch_size % self.grad_accum:
            raise ConfigValueError("grad_accum", f"--grad-accum {self.grad_accum} must divide --batch-size {self.batch_size}.")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigValueError("min_lr_ratio", f"--min-lr-ratio must be in [0, 1], got {self.min_lr_ratio}.")
        if not 0 <= self.ema_decay < 1:
            raise ConfigValueError("ema_decay", f"--ema-decay must be in [0, 1) (0: no EMA), got {self.ema_decay}.")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ConfigValueError("mixed_precision", f"--mixed-precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}, "
                                                      f"got '{self.mixed_precision}'.")


@runtime_checkable
class TrainingTask(Protocol):
    """What a trainer tells :func:`fit`: its model and how one micro-batch trains it.

    Optional hooks, called when the task defines them:

    - ``trainable() -> list[nn.Parameter]``: what the optimizer and EMA update (default: every parameter of
      ``model`` that requires grad);
    - ``evaluate(model, step) -> dict[str, float]``: held-out measurements (every ``eval_every`` steps and at the
      end), printed and written into each checkpoint's state.json;
    - ``save(folder, model)``: write the raw training weights' extras into a checkpoint folder;
    - ``export(folder, model)``: write the exportable models into a checkpoint folder, with the EMA weights applied
      when the run keeps an EMA.
    """

    model: nn.Module
    """Everything that trains, behind one ``forward`` (accelerate/DDP wraps it)."""
    unit: str
    """What a batch counts, for the throughput (frames, pairs, faces)."""

    def sample(self, rng: np.random.Generator, size: int) -> Any:
        """A micro-batch of ``size`` examples (on the accelerator's device)."""

    def loss(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """The micro-batch's losses: ``"loss"`` is back-propagated, the others are logged."""


class LoopState:
    """The loop's counters, saved with each checkpoint through ``register_for_checkpointing``."""

    def __init__(self) -> None:
        self.step = 0
        self.elapsed_s = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"step": torch.tensor(self.step), "elapsed_s": torch.tensor(self.elapsed_s, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.elapsed_s = float(state["elapsed_s"])


@dataclasses.dataclass
class FitResult:
    step: int
    """The step training stopped at."""
    checkpoint: Path
    """The newest checkpoint (written at ``step``)."""
    model: nn.Module
    """The trained model, unwrapped, holding the raw (not EMA) weights."""
    metrics: dict[str, Any]
    """The last held-out measurements (empty when the task has none)."""


def check_resumable(checkpoint: Path) -> None:
    """Refuse a checkpoint without accelerate's state (one from a trainer that saved its own state.pt)."""
    if not (checkpoint / "train" / "model.safetensors").is_file():
        raise InputError(
            f"{checkpoint}: no training state to resume from (train/model.safetensors); this checkpoint was "
            "written in another layout.",
            hint="Its exported models still load; start a new run for training (--resume never, or another --out).")


def start_run(config: LoopConfig, cls: type, out: str | Path, resume: str, given,
              export: str | Path | None = None, export_marker: str | None = None):
    """What every trainer does before its data: check the settings, refuse an ``export`` folder that holds something
    other than an earlier export (``export_marker`` names its config file), resolve the checkpoint to resume from and
    merge the saved settings, save them, seed torch, make the accelerator.

    Returns (config, out, start_from, accelerator).
    """
    check_config(config)
    out = Path(out)
    if (export and export_marker and Path(export).is_dir() and any(Path(export).iterdir())
            and not (Path(export) / export_marker).is_file()):
        raise InputError(f"--export {export}: the folder holds other files; it would be replaced by the model.",
                         hint=f"Name a new or empty folder, or an earlier export (it holds {export_marker}).")
    out.mkdir(parents=True, exist_ok=True)
    set_threads_from_env()
    start_from = resolve_resume(resume, out)
    if start_from is not None:
        config = resumed_config(cls, out / "train_config.json", config, given)
        check_config(config)
    accelerator = make_accelerator(config.mixed_precision, config.grad_accum)
    if accelerator.is_main_process:
        save_config(config, out / "train_config.json")
    torch.manual_seed(config.seed)
    return config, out, start_from, accelerator


def publish_final(result, accelerator, out: Path, subfolder: str, export: str | Path | None, name: str) -> Path:
    """Copy the newest checkpoint's exported model (``CKPT/subfolder``: the EMA weights when the run keeps an EMA) to
    ``OUT/final`` and ``export``, each with a ``training_summary.json``; returns ``export`` or ``OUT/final``."""
    import json

    final = out / "final"
    if accelerator.is_main_process:
        summary = {"steps": result.step, **{k: round(v, 5) for k, v in result.metrics.items()}}
        for dest in [final, *([Path(export)] if export else [])]:
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(result.checkpoint / subfolder, dest)
            (dest / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    accelerator.wait_for_everyone()
    console.print(f"{name}: {result.step} steps -> {final}")
    return Path(export) if export else final


def fit(task: TrainingTask, config: LoopConfig, out: Path, accelerator, *, resume_from: Path | None = None,
        name: str = "train") -> FitResult:
    """Train ``task.model`` for ``config.steps`` steps (or its time budget), checkpointing into ``out``."""
    model = task.model
    trainable = task.trainable() if hasattr(task, "trainable") else [p for p in model.parameters() if p.requires_grad]
    # foreach: one fused update over all tensors, not a Python loop over hundreds of them (the same arithmetic)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    ema = None
    if config.ema_decay > 0:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(trainable, decay=config.ema_decay, use_ema_warmup=True, power=2 / 3, foreach=True)
    state = LoopState()
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(state, *([ema] if ema is not None else []))
    if resume_from is not None:
        check_resumable(resume_from)
        accelerator.load_state(str(resume_from / "train"))
        console.print(f"resumed from {resume_from} at step {state.step}")
    if ema is not None:
        ema.to(accelerator.device)
    step = state.step
    n_params = sum(p.numel() for p in trainable)
    console.print(f"training {n_params / 1e6:.2f} M parameters ({accelerator.device}, {accelerator.num_processes} "
                  f"process{'es' if accelerator.num_processes > 1 else ''})", highlight=False)
    rng = np.random.default_rng([config.seed, step, accelerator.process_index])
    micro = config.batch_size // config.grad_accum
    budget = TimeBudget(config.max_minutes, state.elapsed_s)
    meter = Throughput()
    metrics: dict[str, Any] = {}
    running: dict[str, float] = {}
    count = 0
    losses: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def ema_weights() -> Iterator[None]:
        if ema is None:
            yield
            return
        ema.store(trainable)
        ema.copy_to(trainable)
        try:
            yield
        finally:
            ema.restore(trainable)

    def evaluate() -> None:
        nonlocal metrics
        if hasattr(task, "evaluate"):
            metrics = task.evaluate(accelerator.unwrap_model(model), step)
            if metrics and accelerator.is_main_process:
                shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
                console.print(f"step {step}: held-out {shown}", highlight=False)

    def save() -> Path:
        folder = checkpoint_dir(out, step)
        state.step, state.elapsed_s = step, budget.elapsed()
        accelerator.save_state(str(folder / "train"))  # every process (each saves its RNG state)
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            if hasattr(task, "save"):
                task.save(folder, unwrapped)
            if hasattr(task, "export"):
                with ema_weights():
                    task.export(folder, unwrapped)
            if (out / "train_config.json").is_file():
                # the settings travel with the checkpoint, so a copied-out checkpoint still says how it was made
                shutil.copy(out / "train_config.json", folder / "train_config.json")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            last = {k: round(float(v.item()), 5) for k, v in losses.items()}
            finish_checkpoint(out, folder, {"step": step, **last, **metrics, "elapsed_s": round(budget.elapsed(), 3)},
                              config.keep_checkpoints)
        return folder

    with training_progress(name, disable=not accelerator.is_main_process) as bar:
        task_bar = bar.add_task(name, total=config.steps, completed=step, status="")
        spent_already = budget.spent_before_start(step)
        model.train()
        while step < config.steps and not spent_already:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config.steps, config.lr, config.warmup, config.min_lr_ratio,
                                    time_fraction=budget.fraction(), restart_at=config.lr_restart_at)
            for _ in range(config.grad_accum):
                batch = task.sample(rng, micro)
                with accelerator.accumulate(model), accelerator.autocast():
                    losses = task.loss(model, batch)
                    accelerator.backward(losses["loss"])
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
            if ema is not None:
                ema.step(trainable)
            step += 1
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + float(v.item())
            count += 1
            rate = meter.update(step * config.batch_size * accelerator.num_processes)
            bar.update(task_bar, completed=step, status=f"loss {losses['loss'].item():.4f} | {rate:.1f} {task.unit}/s")
            if step % config.log_every == 0 and accelerator.is_main_process:
                means = ", ".join(f"{k} {v / count:.4f}" for k, v in running.items())
                console.print(f"step {step}: {means}, {rate:.1f} {task.unit}/s", highlight=False)
                running, count = {}, 0
            out_of_time = budget.spent()
            last = step == config.steps or out_of_time
            if (config.eval_every and step % config.eval_every == 0) or last:
                evaluate()
            if step % config.checkpoint_every == 0 or last:
                save()
            if out_of_time:
                console.print(f"training-time budget of {config.max_minutes:g} min spent at step {step}")
                break
    accelerator.wait_for_everyone()
    return FitResult(step, checkpoint_dir(out, step), accelerator.unwrap_model(model), metrics)
