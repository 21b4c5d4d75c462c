"""Saving and loading the evaluator's small readers (frame analyser, motion reader) the diffusers way.

One folder: ``config.json`` (the reader's config dataclass, plus the training facts a run records beside it: steps,
held-out accuracy) and ``model.safetensors``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

from safetensors.torch import load_file, save_file

from mdream.errors import CorruptArtifactError, InputError


class SavedReader:
    """Mixin for an ``nn.Module`` built from one config dataclass (``self.config``)."""

    config_class: ClassVar[type]
    """The config dataclass (with a ``from_dict``)."""
    display_name: ClassVar[str]
    """What the reader is called in messages ("frame analyser")."""
    train_command: ClassVar[str]
    """The ``mdream train`` command that makes one ("analyser")."""

    def save_pretrained(self, folder: str | Path, **extra: object) -> None:
        """Write ``config.json`` (+ training facts in ``extra``) and ``model.safetensors``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({**asdict(self.config), **extra}, indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path):
        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise InputError(
                f"No {cls.display_name} in {folder} (need config.json and model.safetensors).",
                hint=f"Train one with `mdream train {cls.train_command} --out DIR`.",
            )
        try:
            saved = json.loads((folder / "config.json").read_text())
            model = cls(cls.config_class.from_dict(saved))
            model.load_state_dict(load_file(str(folder / "model.safetensors")))
        except Exception as exc:
            raise CorruptArtifactError(f"Could not load the {cls.display_name} in {folder}: {exc}") from exc
        # what save_pretrained's ``extra`` recorded (steps, held-out accuracy): which reader scored a report
        model.training_facts = {k: v for k, v in saved.items() if k not in cls.config_class.__dataclass_fields__}
        return model.eval()
