"""Shared loading helpers: resolve component references, JSON configs, dtype/device moves.

A component folder may point at another folder (or a hub id) instead of holding a copy, so the
toy bundle ships its CLIP once and both the keyframe encoder and the text encoder refer to it.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mdream.errors import InputError


def resolve_reference(base: str | Path, ref: str) -> str:
    """A path relative to ``base`` when it exists there, an absolute path, or else a hub id as given."""
    candidate = Path(ref)
    if not candidate.is_absolute():
        candidate = Path(base) / ref
    if candidate.exists():
        return str(candidate.resolve())
    return ref


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a component's JSON config with an InputError (not a traceback) when it is missing or broken."""
    if not path.is_file():
        raise InputError(
            f"{what}: {path} does not exist.",
            hint="Point at a folder written by save_pretrained (or a model bundle that contains one).",
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{what}: {path} is not valid JSON ({exc}).") from exc


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def quiet_loading():
    """Silence the libraries' load reports and progress bars (mdream draws its own progress)."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    levels = transformers_logging.get_verbosity(), diffusers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(levels[0])
        diffusers_logging.set_verbosity(levels[1])
        transformers_logging.enable_progress_bar()
        diffusers_logging.enable_progress_bar()


def saved_dtype(source: str | Path) -> Any:
    """The dtype a local transformers folder's ``config.json`` records (``dtype`` / ``torch_dtype``), else None.

    A folder exported with half-precision weights (``mdream train export --fp16``) keeps the dtype the model
    computes in there, so it loads back into that dtype (float32 on CPU) rather than the dtype of its files.
    """
    import torch

    config = Path(source) / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    name = data.get("dtype") or data.get("torch_dtype") if isinstance(data, dict) else None
    value = getattr(torch, name, None) if isinstance(name, str) else None
    return value if isinstance(value, torch.dtype) else None


def _is_transformers_model(cls: Any) -> bool:
    try:
        from transformers import PreTrainedModel
        from transformers.models.auto.auto_factory import _BaseAutoModelClass
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(cls, type) and issubclass(cls, PreTrainedModel | _BaseAutoModelClass)


def load_pretrained(cls: Any, source: str, what: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(source)`` with errors turned into an InputError naming the component.

    A transformers model from a local folder loads in the dtype its config records (see :func:`saved_dtype`)
    unless ``dtype`` is given: its weights may be stored in half precision.
    """
    if "dtype" not in kwargs and _is_transformers_model(cls) and (dtype := saved_dtype(source)) is not None:
        kwargs["dtype"] = dtype
    try:
        with quiet_loading():
            return cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"Could not load the {what} from '{source}': {exc}",
            hint="Use a local folder written by save_pretrained, or a hub id that is cached on this machine.",
        ) from exc
