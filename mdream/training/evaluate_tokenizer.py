"""Measure a keyframe tokenizer on held-out toy frames.

Reconstruction: frame -> N tokens -> render (given a choice of context groups) -> the shipped frame
analyser reads scene and cast; identity: the face embedder's cosine similarity between faces cut
from the render and the character's reference photos. The same numbers on the ground-truth frames
are the ceiling, the all-null context the floor. A linear probe on the tokens tells what the tokens
carry even when the renderer does not yet draw it.

The toy world's hidden state (the scene's palette, each figure's trousers: never in a script, so a
movie keeps it only through its keyframes' tokens) is measured the same way: probed from the tokens,
and read back from the renders by an analyser with hidden-state heads (trousers only where they show:
an occupied position outside close-ups).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mdream.errors import InputError
from mdream.models.decoder import KeyframeDecoder
from mdream.models.encoders import KeyframeEncoder, TextEncoder
from mdream.training.common import console
from mdream.training.data import (
    FrameSet,
    character_references,
    character_text_embeddings,
    character_text_for_batch,
    face_embedding_bank,
    faces_for_batch,
    render_random_frames,
)

EVAL_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "eval"
# Context groups given to the renderer in each measured condition.
CONDITIONS = {
    "tokens": ("tokens",),
    "tokens+faces": ("tokens", "faces"),
    "tokens+faces+text": ("tokens", "faces", "text"),
    "faces+text": ("faces", "text"),
    "null": (),
}


@dataclass
class TokenizerEval:
    """Per condition: scene accuracy, per-position character accuracy, whole-cast accuracy, identity similarity."""

    frames: int
    steps: int
    guidance_scale: float
    identity_guidance_scale: float = 0.0
    scheduler: str = ""
    results: dict[str, dict[str, float | None]] = field(default_factory=dict)
    probe: dict[str, float] = field(default_factory=dict)
    token_identity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    analyser: dict = field(default_factory=dict)
    """Which frame analyser scored the frames (folder and training steps): scores compare only within one."""
    errors: dict[str, dict] = field(default_factory=dict)
    """Per condition: cast accuracy by camera and by cast size, and the most frequent misread characters."""

    def to_dict(self) -> dict:
        return {"frames": self.frames, "steps": self.steps, "guidance_scale": self.guidance_scale,
                "identity_guidance_scale": self.identity_guidance_scale, "scheduler": self.scheduler,
                "results": self.results, "probe": self.probe, "token_identity": self.token_identity,
                "analyser": self.analyser, "errors": self.errors, "seconds": round(self.seconds, 1)}


def hidden_labels(shots: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hidden state of toy shots: palette ``[M]``, trousers ``[M, 3]`` (-1 empty) and ``visible`` ``[M, 3]``
    (bool: someone stands there and the camera shows the legs, i.e. not a close-up)."""
    from mdream.toyworld.world import POSITIONS

    palette = np.array([shot.palette for shot in shots], np.int64)
    trousers = np.full((len(shots), len(POSITIONS)), -1, np.int64)
    for i, shot in enumerate(shots):
        for member in shot.cast:
            trousers[i, POSITIONS.index(member.position)] = member.trousers
    visible = (trousers >= 0) & np.array([shot.camera != "close-up" for shot in shots])[:, None]
    return palette, trousers, visible


def hidden_accuracy(pred: dict[str, np.ndarray], shots: list,
                    reference: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Palette / trousers accuracy of an analyser's reading ``pred`` (with hidden-state heads) against the shots'
    hidden state; trousers over the visible slots only. With ``reference`` (the reading of the original frames)
    also ``*_agree``: the reconstruction reads as its original does."""
    palette, trousers, visible = hidden_labels(shots)
    row = {"palette": float((pred["palette"] == palette).mean())}
    if visible.any():
        row["trousers"] = float((pred["trousers"] == trousers)[visible].mean())
    if reference is not None:
        row["palette_agree"] = float((pred["palette"] == reference["palette"]).mean())
        if visible.any():
            row["trousers_agree"] = float((pred["trousers"] == reference["trousers"])[visible].mean())
    return row


def analyse_accuracy(pred: dict[str, np.ndarray], scene: np.ndarray, chars: np.ndarray,
                     reference: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Scene / cast accuracy of the analyser's reading ``pred`` of some frames against the labels; with
    ``reference`` (its reading of the original frames) also ``*_agree``: the reconstruction reads exactly
    as its original does.

    Agreement is the fidelity measure that does not charge a reconstruction for the analyser's own
    mistakes on ground truth (its cast ceiling on random 32 px shots is about 0.98).
    """
    per_position = pred["chars"] == chars
    occupied = chars >= 0
    row = {
        "scene": float((pred["scene"] == scene).mean()),
        "cast": float(per_position.all(axis=1).mean()),
        "scene_and_cast": float(((pred["scene"] == scene) & per_position.all(axis=1)).mean()),
        "character": float(per_position[occupied].mean()) if occupied.any() else None,
    }
    if reference is not None:
        same_scene = pred["scene"] == reference["scene"]
        same_cast = (pred["chars"] == reference["chars"]).all(axis=1)
        row["cast_agree"] = float(same_cast.mean())
        row["scene_and_cast_agree"] = float((same_scene & same_cast).mean())
    return row


def cast_errors(read_chars: np.ndarray, chars: np.ndarray, shots: list, world, top: int = 10) -> dict:
    """Where a cast is misread: whole-cast accuracy by camera and by cast size, and the ``top`` confusions.

    ``read_chars``/``chars``: int ``[M, 3]`` (-1 = empty). A confusion is (true, read, the one attribute in which
    the two differ when they are one of the world's single-attribute pairs, else "") with its count over slots.
    Sibling pairs that differ in a body attribute (height) look the same in a face photo: only the tokens
    can tell them apart, so this breakdown says which context group is failing.
    """
    right = (read_chars == chars).all(axis=1)
    names = [c.id for c in world.characters]
    differs = {frozenset((a, b)): attribute for a, b, attribute in world.single_attribute_pairs}

    def accuracy_by(keys: list) -> dict[str, dict[str, float | int]]:
        out = {}
        for key in sorted(set(keys)):
            rows = np.array([k == key for k in keys])
            out[str(key)] = {"cast": float(right[rows].mean()), "frames": int(rows.sum())}
        return out

    counts: dict[tuple[str, str, str], int] = {}
    for true, read in zip(chars[chars != read_chars], read_chars[chars != read_chars], strict=True):
        pair = ("empty" if true < 0 else names[true], "empty" if read < 0 else names[read])
        key = (*pair, differs.get(frozenset(pair), ""))
        counts[key] = counts.get(key, 0) + 1
    confusions = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {
        "by_camera": accuracy_by([shot.camera for shot in shots]),
        "by_cast_size": accuracy_by([len(shot.cast) for shot in shots]),
        "misread_slots": int((chars != read_chars).sum()),
        "confusions": [{"true": t, "read": r, "differs_in": d, "count": n} for (t, r, d), n in confusions],
    }


def identity_similarity(embedder, frames: np.ndarray, shots: list, world, references: np.ndarray) -> float | None:
    """Mean cosine similarity of each drawn face to its character's mean reference embedding."""
    from mdream.eval.toy_samples import crop_resized, square_box
    from mdream.toyworld import face_boxes

    crops, owners = [], []
    size = frames.shape[1]
    for frame, shot in zip(frames, shots, strict=True):
        for character_id, box in face_boxes(shot, size, world):
            crops.append(crop_resized(frame, square_box(box, size, size)))
            owners.append(world.character_index[character_id])
    if not crops:
        return None
    emb = embedder.embed(np.stack(crops))
    ref = references[np.array(owners)]
    return float((emb * ref).sum(axis=1).mean())


def linear_probe(train_tokens: torch.Tensor, train: FrameSet, test_tokens: torch.Tensor, test: FrameSet, epochs: int = 300) -> dict[str, float]:
    """Held-out accuracy of linear classifiers on the flattened tokens: scene, and character per position.

    When both frame sets carry their shots (rendered here), also the hidden state: ``palette``, and the trousers
    per position (``trousers_left`` ...; fitted and scored on the frames where they show) with ``trousers``
    pooled over those visible slots. Chance is about 1/3 for both.
    """
    from mdream.toyworld.world import PALETTES, TROUSER_COLOURS

    x_train, x_test = train_tokens.flatten(1), test_tokens.flatten(1)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    n_chars = int(max(train.chars.max(), test.chars.max())) + 2  # + "empty"
    every_train, every_test = np.ones(len(train), bool), np.ones(len(test), bool)
    # name -> (train labels, test labels, classes, train rows, test rows)
    targets = {"scene": (train.scene, test.scene, int(max(train.scene.max(), test.scene.max())) + 1, every_train, every_test)}
    for p, name in enumerate(("left", "center", "right")):
        targets[name] = (train.chars[:, p] + 1, test.chars[:, p] + 1, n_chars, every_train, every_test)
    if train.shots is not None and test.shots is not None:
        palette_train, trousers_train, visible_train = hidden_labels(train.shots)
        palette_test, trousers_test, visible_test = hidden_labels(test.shots)
        targets["palette"] = (palette_train, palette_test, len(PALETTES), every_train, every_test)
        for p, name in enumerate(("left", "center", "right")):
            if visible_train[:, p].any() and visible_test[:, p].any():
                targets[f"trousers_{name}"] = (trousers_train[:, p], trousers_test[:, p], len(TROUSER_COLOURS),
                                               visible_train[:, p], visible_test[:, p])
    out, hits = {}, {}
    for name, (y_train, y_test, classes, rows_train, rows_test) in targets.items():
        torch.manual_seed(0)
        xs, ys = x_train[torch.from_numpy(rows_train)], torch.from_numpy(y_train[rows_train])
        head = torch.nn.Linear(x_train.shape[1], classes)
        opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
        for _ in range(epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(xs), ys).backward()
            opt.step()
        with torch.no_grad():
            right = head(x_test[torch.from_numpy(rows_test)]).argmax(1) == torch.from_numpy(y_test[rows_test])
        out[name] = float(right.float().mean())
        hits[name] = (int(right.sum()), len(right))
    trousers = [hits[k] for k in hits if k.startswith("trousers_")]
    if trousers:
        out["trousers"] = sum(h for h, _ in trousers) / sum(n for _, n in trousers)
    return out


def token_identity_readout(compressor, identity_head, encoder: KeyframeEncoder, test: FrameSet,
                           references: np.ndarray) -> dict[str, float]:
    """Who stands where, read off the tokens by a run's own ``TokenIdentityHead`` (no renderer involved).

    Each slot is "empty" where the head's occupancy logit is negative, else the character whose mean
    reference face is nearest the predicted embedding. Chance for an occupied slot is 1 / #characters.
    """
    reader = KeyframeEncoder(encoder.vision_model, compressor, encoder.preprocessor, encoder.vision_feature_layer)
    with torch.no_grad():
        embeds, occupied = identity_head(reader.encode(test.frames))
    nearest = (torch.nn.functional.normalize(embeds.float(), dim=-1).numpy() @ references.T).argmax(-1)  # [B, K]
    pred = np.where(occupied.numpy() > 0, nearest, -1)
    is_occupied = test.chars >= 0
    right = pred == test.chars
    return {
        "occupied_slot_identity": float(right[is_occupied].mean()) if is_occupied.any() else float("nan"),
        "occupancy": float(((occupied.numpy() > 0) == is_occupied).mean()),
        "whole_cast": float(right.all(axis=1).mean()),
    }


def evaluate_tokenizer(
    encoder: KeyframeEncoder,
    decoder: KeyframeDecoder,
    text_encoder: TextEncoder,
    frames: int = 256,
    world_seed: int = 0,
    seed: int = 12345,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.0,
    conditions: tuple[str, ...] = tuple(CONDITIONS),
    identity_guidance_scale: float = 0.0,
    analyser_dir: str | Path | None = None,
    face_model: str | Path | None = None,
    probe_train_frames: int = 2048,
    batch_size: int = 64,
    grid: str | Path | None = None,
    identity_reader: tuple | None = None,
    scheduler: str | None = None,
) -> TokenizerEval:
    """Reconstruct ``frames`` held-out random shots through the tokens and score them (see module doc).

    ``identity_reader``: (compressor, TokenIdentityHead) of a training run, to also read identities off the tokens.
    ``scheduler``: a sampler name (``mdream.models.decoder.SCHEDULERS``) instead of the decoder's own.
    ``analyser_dir``: a frame analyser folder instead of the shipped one (which may be absent: then no
    scene and cast scores); a folder named here must hold one.
    """
    from mdream.eval.frame_analyser import FrameAnalyser
    from mdream.toyworld import make_world

    start = time.perf_counter()
    explicit_analyser = analyser_dir is not None
    analyser_dir = Path(analyser_dir) if analyser_dir else EVAL_ASSETS / "frame_analyser"
    face_model = Path(face_model) if face_model else EVAL_ASSETS / "toy_face_recognition.onnx"
    analyser = None
    if explicit_analyser or (analyser_dir / "config.json").is_file():
        analyser = FrameAnalyser.from_pretrained(analyser_dir)
    embedder = None
    bank = None
    if face_model.is_file():
        from mdream.models.face_embedder import FaceIdentityEmbedder

        embedder = FaceIdentityEmbedder(face_model)
        bank = face_embedding_bank(world_seed, face_model, 8, seed)
    world = make_world(world_seed)
    size = decoder.image_size
    test = render_random_frames(world_seed, frames, size, seed, progress=False)
    tokens = encoder.encode(test.frames)
    text = text_encoder.encode(test.descriptors)
    faces, face_mask = faces_for_batch(test.chars, bank, np.random.default_rng(seed))
    references = character_references(bank) if bank is not None else None
    described = None
    if decoder.context.character_text_proj is not None:
        # a decoder trained with the cast's descriptions in the face slots gets them wherever it gets faces
        described = torch.from_numpy(character_text_for_batch(test.chars, character_text_embeddings(world_seed, text_encoder)))
    report = TokenizerEval(frames=frames, steps=num_inference_steps, guidance_scale=guidance_scale,
                           identity_guidance_scale=identity_guidance_scale, scheduler=scheduler or decoder.scheduler_name)
    if analyser is not None:
        # the shipped one by its place in the package, not this machine's path (reports travel with exported weights)
        where = str(analyser_dir) if explicit_analyser else "mdream/assets/eval/frame_analyser"
        report.analyser = {"path": where, "steps": analyser.training_facts.get("steps")}

    reading = analyser.analyse(test.frames) if analyser else None

    def score(images: np.ndarray, name: str, pred: dict[str, np.ndarray] | None = None) -> dict[str, float | None]:
        """``pred``: the analyser's reading of ``images`` when already made (the ground truth's)."""
        row: dict[str, float | None] = {}
        if analyser:
            pred = pred if pred is not None else analyser.analyse(images)
            row.update(analyse_accuracy(pred, test.scene, test.chars, reading))
            if analyser.reads_hidden_state:  # the round trip of the hidden state: palette / trousers read back
                row.update(hidden_accuracy(pred, test.shots, reading))
            report.errors[name] = cast_errors(pred["chars"], test.chars, test.shots, world)
        if embedder is not None:
            row["identity"] = identity_similarity(embedder, images, test.shots, world, references)
        return row

    report.results["ground_truth"] = score(test.frames, "ground_truth", reading)
    rows = [test.frames[:8]]
    for name in conditions:
        groups = CONDITIONS[name]
        if "faces" in groups and bank is None:
            continue
        images = []
        for i in range(0, frames, batch_size):
            sl = slice(i, i + batch_size)
            out = decoder.generate(
                tokens[sl] if "tokens" in groups else None,
                torch.from_numpy(faces[sl]) if "faces" in groups else None,
                torch.from_numpy(face_mask[sl]) if "faces" in groups else None,
                text[sl] if "text" in groups else None,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                identity_guidance_scale=identity_guidance_scale,
                generator=torch.Generator().manual_seed(seed + i),
                batch_size=len(test.frames[sl]),
                scheduler=scheduler,
                character_text=described[sl] if described is not None and "faces" in groups else None,
            )
            images.append(out.images)
        images = np.concatenate(images)
        rows.append(images[:8])
        report.results[name] = score(images, name)
        console.print(f"  {name}: {report.results[name]}", highlight=False)
    if probe_train_frames:
        probe_train = render_random_frames(world_seed, probe_train_frames, size, seed + 1, progress=False)
        report.probe = linear_probe(encoder.encode(probe_train.frames), probe_train, tokens, test)
    if identity_reader is not None and references is not None:
        report.token_identity = token_identity_readout(*identity_reader, encoder, test, references)
    if grid:
        from PIL import Image

        # one row per context (ground truth first), 8 frames each, upscaled 4x for viewing
        picture = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
        Image.fromarray(picture).resize((picture.shape[1] * 4, picture.shape[0] * 4), Image.Resampling.NEAREST).save(grid)
    report.seconds = time.perf_counter() - start
    return report


def evaluate_checkpoint(
    checkpoint: str | Path,
    clip: str | Path | None = None,
    frames: int = 256,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.0,
    seed: int = 12345,
    conditions: str = ",".join(CONDITIONS),
    out_json: str | Path | None = None,
    probe_train_frames: int = 2048,
    grid: str | Path | None = None,
    identity_guidance_scale: float = 0.0,
    scheduler: str | None = None,
    analyser: str | Path | None = None,
) -> TokenizerEval:
    """Evaluate the ``encoder/`` + ``decoder/`` in a checkpoint (or an exported tokenizer folder)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "encoder").is_dir() or not (checkpoint / "decoder").is_dir():
        raise InputError(f"{checkpoint} holds no encoder/ and decoder/ folders.", hint="Pass a checkpoint folder (OUT/checkpoints/step-...).")
    encoder = KeyframeEncoder.from_pretrained(checkpoint / "encoder")
    decoder = KeyframeDecoder.from_pretrained(checkpoint / "decoder")
    if scheduler:
        KeyframeDecoder.make_scheduler(scheduler, decoder.scheduler.config)  # an unknown name fails before any work
    clip_source = str(clip) if clip else encoder.vision_reference
    from mdream.models.loading import resolve_reference

    text_encoder = TextEncoder.from_pretrained(resolve_reference(checkpoint / "encoder", clip_source))
    wanted = tuple(c for c in conditions.split(",") if c)
    unknown = [c for c in wanted if c not in CONDITIONS]
    if unknown:
        raise InputError(f"Unknown condition(s) {unknown}.", hint=f"Choose from {', '.join(CONDITIONS)}.")
    identity_reader = None
    if (checkpoint / "train" / "identity_head").is_dir():
        # the head was trained on the raw (not EMA) compressor's tokens: read with that pair
        from mdream.models.compressor import TokenCompressor, TokenIdentityHead
        from mdream.models.loading import load_pretrained

        identity_reader = (load_pretrained(TokenCompressor, str(checkpoint / "train" / "compressor"), "compressor"),
                           load_pretrained(TokenIdentityHead, str(checkpoint / "train" / "identity_head"), "identity head"))
    report = evaluate_tokenizer(encoder, decoder, text_encoder, frames=frames, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, identity_guidance_scale=identity_guidance_scale,
                                seed=seed, conditions=wanted,
                                probe_train_frames=probe_train_frames, grid=grid, identity_reader=identity_reader,
                                scheduler=scheduler, analyser_dir=analyser)
    if out_json:
        Path(out_json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report
