"""Options shared by every stage (the CLI's shared flags map 1:1 onto :class:`RunOptions`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mdream.errors import InputError

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class RunOptions:
    """How to run stages; every field is a shared CLI flag."""

    cache_dir: Path | None = None
    """Artifact cache folder (default: `.mdream/` beside the script, or $MDREAM_CACHE)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps."""
    seed: int | None = None
    """Overrides the script's seed."""
    force: bool = False
    """Recompute artifacts even when a valid cached copy exists."""
    from_stage: str | None = None
    """Recompute from this stage on (earlier stages are reused from the cache); a name from the pipeline."""
    quiet: bool = False
    """No progress bars or summaries (errors are still printed)."""
    offload: bool = False
    """Keep each stage's models in CPU memory and move their large parts (UNet, VAE, image or text tower,
    transformer backbone) to the device one at a time, while they run: for a GPU with less memory than a stage's
    models need; slower. The outputs are the same."""

    def __post_init__(self) -> None:
        check_device(self.device)
        if self.from_stage is not None:
            from mdream.stages.registry import check_name

            check_name(self.from_stage, "--from-stage")

    def forces(self, stage: str) -> bool:
        """Whether artifacts of ``stage`` must be recomputed (``--force`` or ``--from-stage``)."""
        if self.force:
            return True
        if self.from_stage is None:
            return False
        from mdream.stages.registry import stage_names

        names = stage_names()  # the pipeline's order (mdream/stages/registry.py)
        return stage in names and names.index(stage) >= names.index(self.from_stage)


def check_device(device: str) -> str:
    if not _DEVICE_RE.match(device):
        raise InputError(f"Unknown device {device!r}.", hint="use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_device(device: str) -> str:
    """Turn ``auto`` into the best available device; refuse devices that are not there."""
    import torch

    check_device(device)
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"Device {device!r} was asked for but no CUDA GPU is available.", hint="use --device cpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"Device {device!r} does not exist ({torch.cuda.device_count()} GPU(s) found).")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("Device 'mps' was asked for but is not available.", hint="use --device cpu")
    return device


def resolve_cache_dir(script_path: Path, cache_dir: Path | None) -> Path:
    """``--cache-dir`` if given, else ``$MDREAM_CACHE``, else ``.mdream/`` beside the script."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    env = os.environ.get("MDREAM_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    return Path(script_path).resolve().parent / ".mdream"
