"""``mdream train clip``: the toy CLIP, trained contrastively on toy-world frames and their descriptors."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mdream.models.encoders import CLIP_MEAN, CLIP_STD, ClipImagePreprocessor, images_to_float
from mdream.models.loading import quiet_loading
from mdream.models.toy_clip import build_toy_clip, build_word_tokenizer, save_clip_folder
from mdream.training.common import (
    RunConfig,
    Throughput,
    TimeBudget,
    checkpoint_dir,
    console,
    finish_checkpoint,
    lr_at,
    make_accelerator,
    resolve_resume,
    resumed_config,
    save_config,
    set_threads_from_env,
    training_progress,
)
from mdream.training.data import FrameSet, frame_set


@dataclass
class ClipTrainingConfig(RunConfig):
    """Settings of a toy CLIP run (saved as train_config.json beside its checkpoints)."""

    # RunConfig's fields, with this run's defaults (their docstrings are RunConfig's)
    steps: int = 500
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05

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
    eval_every: int = 100
    """Steps between held-out retrieval measurements."""


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


def train_clip(config: ClipTrainingConfig, out: str | Path, resume: str = "auto", export: str | Path | None = None,
               given: Collection[str] | None = None) -> Path:
    """Train (or resume) a toy CLIP; returns the exported CLIP folder (``OUT/final`` and ``export``).

    On resume the saved settings hold, except the fields named in ``given`` (by default: those not at their defaults).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    set_threads_from_env()
    start_from = resolve_resume(resume, out)
    if start_from is not None:
        # resume with the saved settings; the options given now override them
        config = resumed_config(ClipTrainingConfig, out / "train_config.json", config, given)
    accelerator = make_accelerator(config.mixed_precision, config.grad_accum)
    if accelerator.is_main_process:
        save_config(config, out / "train_config.json")
    device = accelerator.device
    torch.manual_seed(config.seed)

    # the main process renders the frames and writes the caches; under `accelerate launch` the others read them
    with accelerator.main_process_first():
        train = frame_set(config.data, config.world_seed, config.num_frames, config.image_size, config.seed,
                          out / "frames.npz")
        val = frame_set("", train.world_seed, config.val_frames, config.image_size, config.seed + 1_000_003,
                        out / "val_frames.npz")
    if (out / "tokenizer" / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    else:
        from mdream.toyworld import make_world

        world = make_world(train.world_seed)
        extra = [c.name + " " + c.describe() for c in world.characters] + [s.name + " " + s.describe() for s in world.scenes]
        tokenizer = build_word_tokenizer(train.descriptors + val.descriptors + extra, max_length=config.max_text_length)
        if accelerator.is_main_process:
            tokenizer.save_pretrained(out / "tokenizer")
    model = build_toy_clip(tokenizer, image_size=config.image_size, patch_size=config.patch_size, hidden_size=config.hidden_size,
                           num_layers=config.num_layers, num_heads=config.num_heads, projection_dim=config.projection_dim)
    preprocess = ClipImagePreprocessor(CLIP_MEAN, CLIP_STD, config.image_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    if start_from is not None:
        model.load_state_dict(load_file(start_from / "model.safetensors"))
        state = torch.load(start_from / "state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        step = json.loads((start_from / "state.json").read_text())["step"]
        console.print(f"resumed from {start_from} at step {step}")
    model, optimizer = accelerator.prepare(model, optimizer)
    rng = np.random.default_rng([config.seed, step, accelerator.process_index])
    micro = config.batch_size // config.grad_accum
    meter = Throughput()
    last_acc = None

    def save(step: int) -> None:
        if not accelerator.is_main_process:
            return
        folder = checkpoint_dir(out, step)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}, folder / "model.safetensors")
        torch.save({"optimizer": optimizer.state_dict()}, folder / "state.pt")
        state = {"step": step, "retrieval_top1": last_acc, "elapsed_s": round(budget.elapsed(), 3)}
        finish_checkpoint(out, folder, state, config.keep_checkpoints)

    budget = TimeBudget(config.max_minutes, start_from)

    with training_progress("train clip", disable=not accelerator.is_main_process) as bar:
        task = bar.add_task("clip", total=config.steps, completed=step, status="")
        spent_already = budget.spent_before_start(step)
        while step < config.steps and not spent_already:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config.steps, config.lr, config.warmup, time_fraction=budget.fraction())
            for _ in range(config.grad_accum):
                idx = rng.integers(len(train), size=micro)
                pix = preprocess(images_to_float(train.frames[idx]).to(device))
                text = tokenizer([train.descriptors[i] for i in idx], padding="max_length", truncation=True,
                                 max_length=config.max_text_length, return_tensors="pt")
                with accelerator.accumulate(model), accelerator.autocast():
                    loss = model(input_ids=text.input_ids.to(device), attention_mask=text.attention_mask.to(device),
                                 pixel_values=pix, return_loss=True).loss
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
            step += 1
            rate = meter.update(step * config.batch_size * accelerator.num_processes)
            out_of_time = budget.spent()
            if step % config.eval_every == 0 or step == config.steps or out_of_time:
                last_acc = retrieval_accuracy(accelerator.unwrap_model(model), tokenizer, val, preprocess, device, config.max_text_length)
                console.print(f"step {step}: loss {loss.item():.4f}, held-out retrieval top-1 {last_acc:.3f} (of 256)")
            bar.update(task, completed=step, status=f"loss {loss.item():.4f} | {rate:.0f} pairs/s")
            if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
                save(step)
            if out_of_time:
                console.print(f"training-time budget of {config.max_minutes:g} min spent at step {step}")
                break

    final = out / "final"
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_clip_folder(unwrapped, tokenizer, final)
        (final / "training_summary.json").write_text(json.dumps({"steps": step, "retrieval_top1_of_256": last_acc}, indent=2) + "\n")
        if export:
            from mdream.training.export import export_model

            export_model(final, export)
    accelerator.wait_for_everyone()
    return Path(export) if export else final
