"""``mdream train clip``: the toy CLIP, trained contrastively on toy-world frames and their descriptors."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from mdream.models.encoders import CLIP_MEAN, CLIP_STD, ClipImagePreprocessor, images_to_float
from mdream.models.loading import quiet_loading
from mdream.models.toy_clip import build_toy_clip, build_word_tokenizer, save_clip_folder
from mdream.training.common import console
from mdream.training.config import check_config
from mdream.training.data import FrameSet, RunConfig, open_frame_source
from mdream.training.loop import fit, start_run


@dataclass
class ClipTrainingConfig(RunConfig):
    """Settings of a toy CLIP run (saved as train_config.json beside its checkpoints)."""

    help_panel: ClassVar[str] = "CLIP"

    # RunConfig's fields, with this run's defaults (their docstrings are RunConfig's)
    num_frames: int = 30000
    steps: int = 600
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    checkpoint_every: int = 50
    eval_every: int = 50

    val_frames: int = 1024
    """Held-out frames (other random shots) for retrieval accuracy."""
    image_size: int = 32
    """Frame and CLIP input size in pixels."""
    patch_size: int = 4
    """ViT patch size."""
    hidden_size: int = 64
    """Width of both towers."""
    num_layers: int = 4
    """Transformer layers per tower."""
    num_heads: int = 4
    """Attention heads per layer."""
    projection_dim: int = 64
    """Joint embedding size."""
    max_text_length: int = 128
    """Text positions (toy descriptors are at most about 115 words)."""


def retrieval_accuracy(model, tokenizer, frames: FrameSet, preprocess, device, max_length: int, chunk: int = 256) -> float:
    """Top-1 image->text retrieval within chunks of ``chunk`` held-out pairs."""
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for i in range(0, len(frames), chunk):
            pix = preprocess(images_to_float(frames.frames[i : i + chunk]).to(device))
            text = tokenizer(frames.descriptors[i : i + chunk], padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
            out = model(input_ids=text.input_ids.to(device), attention_mask=text.attention_mask.to(device), pixel_values=pix)
            pred = out.logits_per_image.argmax(dim=1).cpu()
            hits += int((pred == torch.arange(len(pred))).sum())
            total += len(pred)
    model.train()
    return hits / max(total, 1)


class ClipTask:
    """One step: a batch of frames and their descriptors, CLIP's contrastive loss."""

    unit = "pairs"

    def __init__(self, model: nn.Module, tokenizer, train: FrameSet, val: FrameSet, preprocess, config: ClipTrainingConfig,
                 device: torch.device):
        self.model, self.tokenizer, self.train, self.val = model, tokenizer, train, val
        self.preprocess, self.config, self.device = preprocess, config, device

    def sample(self, rng: np.random.Generator, size: int):
        idx = rng.integers(len(self.train), size=size)
        pix = self.preprocess(images_to_float(self.train.frames[idx]).to(self.device))
        text = self.tokenizer([self.train.descriptors[i] for i in idx], padding="max_length", truncation=True,
                              max_length=self.config.max_text_length, return_tensors="pt")
        return pix, text.input_ids.to(self.device), text.attention_mask.to(self.device)

    def loss(self, model: nn.Module, batch) -> dict[str, torch.Tensor]:
        pix, input_ids, attention_mask = batch
        return {"loss": model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pix, return_loss=True).loss}

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        return {"retrieval_top1": retrieval_accuracy(model, self.tokenizer, self.val, self.preprocess, self.device,
                                                     self.config.max_text_length)}


def train_clip(config: ClipTrainingConfig, out: str | Path, resume: str = "auto", export: str | Path | None = None,
               given: Collection[str] | None = None) -> Path:
    """Train (or resume) a toy CLIP; returns the exported CLIP folder (``OUT/final`` and ``export``).

    On resume the saved settings hold, except the fields named in ``given`` (by default: those not at their defaults).
    """
    check_config(config)
    # a bad --data fails before anything is written to the run folder
    source = open_frame_source(config.data, config.world_seed, config.seed, holdout=config.val_frames)
    config, out, start_from, accelerator = start_run(config, ClipTrainingConfig, out, resume, given)
    if start_from is not None:  # resumed with the saved settings: their data
        source = open_frame_source(config.data, config.world_seed, config.seed, holdout=config.val_frames)
    device = accelerator.device

    # the main process renders the frames and writes the caches; under `accelerate launch` the others read them
    with accelerator.main_process_first():
        train = source.load(config.num_frames, config.image_size, out / "frames.npz")
        val = source.held_out(config.val_frames, config.image_size, out / "val_frames.npz")
    if (out / "tokenizer" / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    else:
        extra = []
        if source.toy:
            from mdream.toyworld import make_world

            world = make_world(train.world_seed)
            extra = [c.name + " " + c.describe() for c in world.characters] + [s.name + " " + s.describe() for s in world.scenes]
        tokenizer = build_word_tokenizer(train.descriptors + val.descriptors + extra, max_length=config.max_text_length)
        if accelerator.is_main_process:
            tokenizer.save_pretrained(out / "tokenizer")
    model = build_toy_clip(tokenizer, image_size=config.image_size, patch_size=config.patch_size, hidden_size=config.hidden_size,
                           num_layers=config.num_layers, num_heads=config.num_heads, projection_dim=config.projection_dim)
    preprocess = ClipImagePreprocessor(CLIP_MEAN, CLIP_STD, config.image_size).to(device)
    task = ClipTask(model, tokenizer, train, val, preprocess, config, device)
    result = fit(task, config, out, accelerator, resume_from=start_from, name="train clip")
    last_acc = result.metrics.get("retrieval_top1")

    final = out / "final"
    if accelerator.is_main_process:
        save_clip_folder(result.model, tokenizer, final)
        (final / "training_summary.json").write_text(json.dumps({"steps": result.step, "retrieval_top1_of_256": last_acc}, indent=2) + "\n")
        if export:
            from mdream.training.export import export_model

            export_model(final, export)
    accelerator.wait_for_everyone()
    console.print(f"clip: {result.step} steps -> {final}")
    return Path(export) if export else final
