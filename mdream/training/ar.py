"""``mdream train ar``: the keyframe AR model, teacher-forced on windows of consecutive toy-world shots.

Data (:mod:`mdream.training.ar_data`): episodes of the toy world, each shot encoded once as the encode stage
encodes a script (descriptor / identifier embeddings, the cast per face slot, character description
embeddings) plus its true keyframe tokens from the shipped keyframe encoder; cached in ``OUT/data/train`` and
``OUT/data/val`` (held-out episodes, other face photos).

A training example is a random window of up to ``--window`` consecutive shots of one episode, fed with its true
tokens (teacher forcing); the token head's loss covers every keyframe token. Switches against over-fitting,
each a setting: face-embedding randomisation (one random photo's embedding per cast member and window, or with
``--mean-face-share`` the mean identity the encode stage computes), attention dropout, token masking (the input
tokens of random earlier shots replaced by a learned mask vector, so the model cannot lean only on copying the
last keyframe), reversed windows, and a horizontal flip (``--flip-prob``: the whole window mirrored, its frames
flipped before encoding, left and right swapped in its texts and cast slots). The flip is off by default: a toy
scene has one fixed layout that its name stands for, so flipped frames teach two layouts per scene; it is there
to measure that trade-off.

Few-shot context (``--reference-prob``, ``--max-references``): a share of the windows get 1..max_references
random frames of the same episode that are not in the window (so they cannot be copied as the answer) as
reference frames in the prefix (``KeyframeAR.prefix_embeds``). The toy world's hidden per-episode state (each
scene's palette, each character's trousers) is never in the script, so a reference that shows it is the only
way, besides earlier shots, to know it. ``--no-faces`` leaves face embeddings out of the sequence (an ablation).

Held-out measurements: the loss on fixed held-out windows, and the mean L2 distance and cosine similarity
between the head's prediction (``--eval-temperature``; 0 = its most likely token) and the true token, next to
two baselines: the training set's mean token and the previous shot's tokens. A run with references also reports
the same on the same windows given ``max_references`` reference frames each (``ref_val_loss``, ``ref_token_l2``,
``ref_token_cos``): the few-shot gain is the difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdream.errors import InputError
from mdream.models.keyframe_ar import KeyframeAR, KeyframeARConfig, MovieSample, ShotCondition
from mdream.models.loading import quiet_loading
from mdream.models.token_heads import TOKEN_HEADS
from mdream.training.ar_data import (
    DEFAULT_FACE_EMBEDDER,
    TOY_KEYFRAME_ENCODER,
    TOY_TEXT_ENCODER,
    EncodedEpisodes,
    encoded_episodes,
)
from mdream.training.common import console
from mdream.training.config import ConfigValueError
from mdream.training.data import character_text_for_batch
from mdream.training.loop import LoopConfig, fit, publish_final, start_run


@dataclass
class ARTrainingConfig(LoopConfig):
    """Settings of a keyframe AR run (saved as train_config.json beside its checkpoints)."""

    help_panel: ClassVar[str] = "Keyframe AR"

    # LoopConfig's fields, with this run's defaults (their docstrings are LoopConfig's)
    steps: int = 3000
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.05
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 200
    eval_every: int = 200

    # ---- data
    world_seed: int = 0
    """Seed of the toy world the episodes are made in."""
    data_seed: int = 0
    """Seed of the episodes (`mdream toyworld dataset --seed`): training episodes are 0..episodes-1, held-out ones follow."""
    episodes: int = 300
    """Training episodes (encoded once and cached in OUT/data/train)."""
    episode_length: int = 40
    """Shots per episode."""
    val_episodes: int = 20
    """Held-out episodes (other episode seeds, other face photos), cached in OUT/data/val."""
    frame_size: int = 32
    """Pixels the true keyframes are rendered at before the keyframe encoder reads them (the toy tokenizer's training size)."""
    photos_per_character: int = 8
    """Face photos embedded per character; a window draws one per cast member."""
    keyframe_encoder: str = "toy"
    """Keyframe encoder folder that makes the target tokens; toy: the shipped toy tokenizer's encoder."""
    text_encoder: str = "toy"
    """Text encoder folder for descriptor, identifier and character embeddings; toy: the shipped toy CLIP."""
    face_embedder: str = "toy"
    """Face-recognition ONNX for the cast's face embeddings; toy: the shipped toy embedder."""
    window: int = 8
    """Shots per training sequence: a random window of consecutive shots of one episode."""

    # ---- model
    backbone: str = "toy"
    """toy: a random Llama of the sizes below over the text encoder's tokenizer; else a pretrained causal LM folder or hub id."""
    hidden_size: int = 256
    """Toy backbone: hidden size."""
    num_layers: int = 4
    """Toy backbone: transformer layers."""
    num_heads: int = 4
    """Toy backbone: attention heads."""
    head: str = "gmm"
    """Token head: gmm (Gaussian mixture, as MovieDreamer) or diffusion (MAR-style)."""
    gmm_components: int = 8
    """GMM head: mixture components."""
    head_width: int = 0
    """Token head hidden width (0: the backbone's hidden size for gmm, 256 for diffusion)."""
    diffusion_depth: int = 3
    """Diffusion head: residual blocks of its denoiser."""
    character_text: bool = True
    """Add each cast member's description embedding to their face slot (the encode stage writes them)."""

    # ---- against over-fitting
    face_randomisation: bool = True
    """Each window draws one random photo embedding per cast member (off: always the mean identity)."""
    mean_face_share: float = 0.25
    """Share of windows whose faces are each character's mean photo embedding, renormalised (what the encode stage gives a character with several photos)."""
    dropout: float = 0.1
    """Attention dropout of the toy backbone."""
    token_mask_prob: float = 0.15
    """Per earlier shot of a window: probability that its input tokens are replaced by a learned mask vector (its later tokens then leave the loss)."""
    reverse_prob: float = 0.0
    """Share of windows fed in reverse shot order."""
    flip_prob: float = 0.0
    """Share of windows mirrored left to right: frames flipped before encoding (encoded once, cached), left and right swapped in the texts and cast slots."""

    # ---- few-shot context and ablations
    reference_prob: float = 0.0
    """Share of windows given reference frames in the prefix: random frames of the same episode outside the window."""
    max_references: int = 4
    """Most reference frames per window (each such window draws 1..max_references); saved in the model as what it was trained with."""
    reference_scene_prob: float = 0.0
    """Share of windows that get references showing the window's scenes (frames outside the window whose scene the window shows), so that the references are where a scene's unscripted look first shows; needs scenes in the encoded set (toy-world sets have them)."""
    reference_scene_start: str = "first"
    """Where those windows start: first (at their episode's first shot, so every reference is from later in the episode) or anywhere (like the other windows; references from before and after them)."""
    init: str = ""
    """A keyframe AR model folder to start from (fine-tuning; its sizes must match this run's); empty: fresh weights."""
    faces: bool = True
    """Face embeddings in the sequence (off: the no-face-embeddings ablation; generation then leaves them out too)."""

    # ---- evaluation
    eval_windows: int = 64
    """Held-out windows for the held-out loss and token distances."""
    eval_temperature: float = 0.0
    """Sampling temperature of the held-out token predictions (0: the head's most likely token)."""

    def check(self) -> None:
        super().check()
        positive = {"episodes": self.episodes, "episode_length": self.episode_length, "val_episodes": self.val_episodes,
                    "frame_size": self.frame_size, "photos_per_character": self.photos_per_character,
                    "window": self.window, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                    "num_heads": self.num_heads, "gmm_components": self.gmm_components,
                    "diffusion_depth": self.diffusion_depth, "eval_windows": self.eval_windows}
        for name, value in positive.items():
            if value < 1:
                raise ConfigValueError(name, f"--{name.replace('_', '-')} must be >= 1, got {value}.")
        if self.frame_size < 8:
            raise ConfigValueError("frame_size", f"--frame-size must be >= 8 px, got {self.frame_size}.")
        if self.hidden_size % self.num_heads:
            raise ConfigValueError("num_heads", f"--num-heads {self.num_heads} must divide --hidden-size {self.hidden_size}.")
        if self.head not in TOKEN_HEADS:
            raise ConfigValueError("head", f"--head must be one of {', '.join(TOKEN_HEADS)}, got '{self.head}'.")
        if self.head_width < 0:
            raise ConfigValueError("head_width", f"--head-width must be >= 0, got {self.head_width}.")
        for name in ("mean_face_share", "dropout", "token_mask_prob", "reverse_prob", "flip_prob", "reference_prob",
                     "reference_scene_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigValueError(name, f"--{name.replace('_', '-')} must be in [0, 1], got {value}.")
        if self.reference_scene_start not in ("first", "anywhere"):
            raise ConfigValueError("reference_scene_start", "--reference-scene-start must be first or anywhere, got "
                                                            f"'{self.reference_scene_start}'.")
        if self.max_references < 0 or (self.reference_prob + self.reference_scene_prob > 0 and self.max_references < 1):
            raise ConfigValueError("max_references", f"--max-references must be >= 1 when --reference-prob or "
                                                     f"--reference-scene-prob is above 0, got {self.max_references}.")
        if self.init and not (Path(self.init) / "keyframe_ar.json").is_file():
            raise ConfigValueError("init", f"--init {self.init}: no keyframe AR model there (no keyframe_ar.json); "
                                           "name a folder `mdream train export` wrote, or a run's final/.")
        if not self.eval_temperature >= 0:
            raise ConfigValueError("eval_temperature", f"--eval-temperature must be >= 0, got {self.eval_temperature}.")

    @property
    def model_references(self) -> int:
        """Reference frames the model is trained with (0 when no window gets any)."""
        return self.max_references if self.reference_prob + self.reference_scene_prob > 0 else 0

    def head_config(self) -> dict:
        """The token head's keyword arguments."""
        if self.head == "gmm":
            return {"num_components": self.gmm_components, **({"width": self.head_width} if self.head_width else {})}
        return {"depth": self.diffusion_depth, **({"width": self.head_width} if self.head_width else {})}


def model_source(setting: str, toy: Path, what: str) -> Path | str:
    """A model setting's location: ``toy`` names the shipped one; a path must exist."""
    if setting == "toy":
        return toy
    path = Path(setting)
    if not path.exists():
        raise InputError(f"--{what} {setting}: no such file or folder.", hint=f"Leave --{what} at toy for the shipped one.")
    return path


@dataclass
class TrainingWindow:
    """One training sequence and which shots' input tokens are masked."""

    sample: MovieSample
    """Consecutive shots and their true tokens ``[S, N, d]`` (and reference tokens ``[R, N, d]`` or None)."""
    masked: torch.Tensor
    """bool ``[S]``: True where the shot's tokens enter the input as the mask vector."""
    rows: np.ndarray | None = None
    """The shots' rows of the encoded set, in sequence order."""
    reference_rows: np.ndarray | None = None
    """The reference frames' rows (same episode, none of ``rows``), or None."""
    flipped: bool = False
    """True when the window is mirrored (flipped frames, left and right swapped)."""


def sample_window(data: EncodedEpisodes, rng: np.random.Generator, window: int, *, randomise_faces: bool = True,
                  mean_face_share: float = 0.0, token_mask_prob: float = 0.0, reverse_prob: float = 0.0,
                  character_text: bool = True, flip_prob: float = 0.0, reference_prob: float = 0.0,
                  max_references: int = 0, reference_scene_prob: float = 0.0,
                  reference_scene_start: str = "first") -> TrainingWindow:
    """A random window of up to ``window`` consecutive shots of a random episode (episodes weighted by length).

    ``flip_prob``: share of windows mirrored as a whole (``data`` must hold its flips). ``reference_prob``: share of
    windows given 1..``max_references`` reference frames: other frames of the same episode, outside the window (as
    many as the episode has when it has fewer), mirrored with the window. ``reference_scene_prob``: share of windows
    that get 1..``max_references`` references drawn from the frames outside the window that show one of the window's
    scenes (any frames outside it when none does); ``reference_scene_start``: those windows start at their episode's
    first shot (``first``) or anywhere (``anywhere``).
    """
    row = int(rng.integers(len(data)))
    e = int(torch.searchsorted(data.episode_starts, torch.tensor(row), right=True)) - 1
    first, end = data.episode_rows(e)
    w = min(window, end - first)
    # drawn only when the option is on: without it, a seed gives the windows the shipped recipes were trained on
    scene_refs = bool(reference_scene_prob and max_references > 0 and rng.random() < reference_scene_prob)
    at_first = scene_refs and reference_scene_start == "first"
    start = first if at_first else int(rng.integers(first, end - w + 1))
    rows = np.arange(start, start + w)
    if reverse_prob and rng.random() < reverse_prob:
        rows = rows[::-1].copy()
    flipped = bool(flip_prob and rng.random() < flip_prob)
    if flipped and not data.has_flips:
        raise ValueError("flip_prob > 0 needs episodes encoded with their flips (encoded_episodes(..., flip=True))")
    all_chars = data.flipped_chars if flipped else data.chars
    chars = all_chars[rows].numpy()  # [S, 3]
    present = chars >= 0
    if randomise_faces and not (mean_face_share and rng.random() < mean_face_share):
        # one photo per character for the whole window: within a movie a character keeps one embedding
        photo = rng.integers(data.face_bank.shape[1], size=data.face_bank.shape[0])  # [C]
        table = data.face_bank[torch.arange(data.face_bank.shape[0]), torch.from_numpy(photo)]  # [C, 512]
    else:
        table = data.face_identities  # [C, 512]
    faces = torch.zeros(w, 3, table.shape[-1])  # [S, 3, 512]
    faces[torch.from_numpy(present)] = table[torch.from_numpy(chars[present])]
    described = torch.from_numpy(character_text_for_batch(chars, data.character_text.numpy()))  # [S, 3, D]
    identifiers = data.flipped_identifiers if flipped else data.identifiers
    descriptors = data.flipped_descriptor_embeds if flipped else data.descriptor_embeds
    tokens = data.flipped_tokens if flipped else data.tokens  # [M, N, d]
    shots = [ShotCondition(identifier=identifiers[r], descriptor_embed=descriptors[r],
                           face_embeds=faces[i], face_mask=torch.from_numpy(present[i]),
                           character_text_embeds=described[i] if character_text else None)
             for i, r in enumerate(rows)]
    masked = torch.from_numpy(rng.random(w) < token_mask_prob) if token_mask_prob else torch.zeros(w, dtype=torch.bool)
    masked[-1] = False  # the last shot's tokens feed no later shot
    reference_rows = references = None
    if scene_refs or (reference_prob and max_references > 0 and rng.random() < reference_prob):
        outside = np.setdiff1d(np.arange(first, end), rows)  # never a frame the window has to predict
        if scene_refs:
            scenes = data.scenes.numpy()
            showing = outside[np.isin(scenes[outside], scenes[rows][scenes[rows] >= 0])]
            outside = showing if len(showing) else outside
        count = min(int(rng.integers(1, max_references + 1)), len(outside))
        if count:
            reference_rows = rng.choice(outside, size=count, replace=False)
            references = tokens[torch.from_numpy(reference_rows)]  # [R, N, d]
    return TrainingWindow(MovieSample(shots, tokens[torch.from_numpy(rows)], references=references), masked,
                          rows, reference_rows, flipped)


class ARTrainingModel(nn.Module):
    """The keyframe AR model plus the training-only mask vector, behind one ``forward`` for accelerate."""

    def __init__(self, model: KeyframeAR):
        super().__init__()
        self.model = model
        self.mask_token = nn.Parameter(torch.zeros(model.config.token_dim))  # [d], through the model's token input MLP

    def forward(self, windows: list[TrainingWindow]) -> dict[str, torch.Tensor]:
        """Teacher-forced head loss over every token, except the later tokens of masked shots.

        Returns ``loss``, the head's parts, and ``hidden`` ``[T, H]`` / ``targets`` ``[T, d]`` of the tokens in the loss.
        """
        model = self.model
        n, d = model.config.num_tokens, model.config.token_dim
        seqs, keep, targets = [], [], []
        for w in windows:
            tokens = w.sample.tokens.to(model.device)  # [S, N, d]
            if bool(w.masked.any()):
                where = w.masked.to(model.device)[:, None, None]
                tokens = torch.where(where, self.mask_token.to(tokens.dtype).expand_as(tokens), tokens)
            seqs.append(model.sequence(dataclasses.replace(w.sample, tokens=tokens)))
            k = torch.ones(len(w.sample.shots), n, dtype=torch.bool)
            k[w.masked, 1:] = False  # their own later tokens would be predicted from the mask vector
            keep.append(k.flatten())
            targets.append(w.sample.tokens.reshape(-1, d))
        b, length = len(seqs), max(e.shape[0] for e, _ in seqs)
        embeds = torch.zeros(b, length, model.hidden_size, device=model.device, dtype=model.embed_dtype)  # [B, L, H]
        mask = torch.zeros(b, length, dtype=torch.long, device=model.device)
        for i, (e, _) in enumerate(seqs):
            embeds[i, : e.shape[0]] = e
            mask[i, : e.shape[0]] = 1
        hidden, _ = model.run_backbone(embeds, attention_mask=None if bool(mask.all()) else mask)  # [B, L, H]
        picked = torch.cat([hidden[i, pos.flatten().to(hidden.device)] for i, (_, pos) in enumerate(seqs)])  # [S*N.., H]
        kept = torch.cat(keep).to(hidden.device)
        hidden, target = picked[kept], torch.cat(targets).to(hidden.device)[kept]  # [T, H], [T, d]
        result = model.head.loss(hidden, target)
        return {"loss": result.loss, **result.parts, "hidden": hidden, "targets": target}


class ARTask:
    """One step: ``batch_size`` random windows, the token head's teacher-forced loss."""

    unit = "windows"

    def __init__(self, model: ARTrainingModel, train: EncodedEpisodes, val: EncodedEpisodes, config: ARTrainingConfig):
        self.model, self.train, self.val, self.config = model, train, val, config
        rng = np.random.default_rng([config.seed, 0xA7E])
        self.val_windows = [sample_window(val, rng, config.window, randomise_faces=config.face_randomisation,
                                          character_text=config.character_text) for _ in range(config.eval_windows)]
        # the same windows, each given max_references other frames of its episode (the few-shot measurement)
        self.ref_val_windows = []
        if config.model_references:
            ref_rng = np.random.default_rng([config.seed, 0xA7E, 1])
            for w in self.val_windows:
                first, end = val.episode_rows(int(torch.searchsorted(val.episode_starts, torch.tensor(int(w.rows[0])),
                                                                     right=True)) - 1)
                outside = np.setdiff1d(np.arange(first, end), w.rows)
                picked = ref_rng.choice(outside, size=min(config.max_references, len(outside)), replace=False)
                refs = val.tokens[torch.from_numpy(picked)] if len(picked) else None
                self.ref_val_windows.append(dataclasses.replace(
                    w, sample=dataclasses.replace(w.sample, references=refs), reference_rows=picked))
        self.baselines = self._baselines()

    def sample(self, rng: np.random.Generator, size: int) -> list[TrainingWindow]:
        c = self.config
        return [sample_window(self.train, rng, c.window, randomise_faces=c.face_randomisation,
                              mean_face_share=c.mean_face_share, token_mask_prob=c.token_mask_prob,
                              reverse_prob=c.reverse_prob, character_text=c.character_text, flip_prob=c.flip_prob,
                              reference_prob=c.reference_prob, max_references=c.max_references,
                              reference_scene_prob=c.reference_scene_prob,
                              reference_scene_start=c.reference_scene_start)
                for _ in range(size)]

    def loss(self, model: nn.Module, batch: list[TrainingWindow]) -> dict[str, torch.Tensor]:
        out = model(batch)
        return {k: v for k, v in out.items() if k not in ("hidden", "targets")}

    def _baselines(self) -> dict[str, float]:
        """Held-out token distances of two predictions that need no model: the training set's mean token (per
        index) and the previous shot's tokens (same episode)."""
        mean = self.train.tokens.mean(0)  # [N, d]
        val = self.val
        prev_pred, prev_true = [], []
        for e in range(val.num_episodes):
            a, b = val.episode_rows(e)
            prev_pred.append(val.tokens[a : b - 1])
            prev_true.append(val.tokens[a + 1 : b])
        prev_pred, prev_true = torch.cat(prev_pred).flatten(0, 1), torch.cat(prev_true).flatten(0, 1)  # [T, d]
        true = val.tokens.flatten(0, 1)  # [M*N, d]
        mean_pred = mean.repeat(len(val), 1)  # [M*N, d]
        return {"mean_token_l2": float((mean_pred - true).norm(dim=-1).mean()),
                "prev_shot_l2": float((prev_pred - prev_true).norm(dim=-1).mean()),
                "prev_shot_cos": float(F.cosine_similarity(prev_pred, prev_true, dim=-1).mean())}

    @torch.no_grad()
    def evaluate(self, model: ARTrainingModel, step: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        metrics = self._measure(model, self.val_windows)
        if self.ref_val_windows:
            metrics.update({f"ref_{k}": v for k, v in self._measure(model, self.ref_val_windows).items()})
        model.train(was_training)
        return {**metrics, **self.baselines}

    def _measure(self, model: ARTrainingModel, windows: list[TrainingWindow]) -> dict[str, float]:
        """Held-out loss and token distances over ``windows`` (the model in eval mode)."""
        generator = torch.Generator().manual_seed(self.config.seed)
        losses, weights, l2, cos, count = 0.0, 0, 0.0, 0.0, 0
        size = self.config.batch_size
        for i in range(0, len(windows), size):
            out = model(windows[i : i + size])
            t = out["targets"].shape[0]
            losses += float(out["loss"]) * t
            weights += t
            pred = model.model.head.sample(out["hidden"], self.config.eval_temperature, generator).float()  # [T, d]
            true = out["targets"].float()
            l2 += float((pred - true).norm(dim=-1).sum())
            cos += float(F.cosine_similarity(pred, true, dim=-1).sum())
            count += t
        return {"val_loss": losses / max(weights, 1), "token_l2": l2 / max(count, 1), "token_cos": cos / max(count, 1)}

    def export(self, folder: Path, model: ARTrainingModel) -> None:
        """The keyframe AR model (EMA weights when the run keeps an EMA), loadable by ``KeyframeAR.from_pretrained``."""
        with quiet_loading():
            model.model.save_pretrained(folder / "keyframe_ar")


def training_context(model: KeyframeAR, data: EncodedEpisodes, window: int) -> int:
    """Positions of the longest training sequence: the prefix (with ``max_references`` reference frames) plus the
    ``window`` longest shots of ``data``.

    Saved as the model's ``context_window``, so generation keeps its context within the lengths (and rotary
    positions) the model was trained on.
    """
    c = model.config
    ids = model.tokenizer(sorted(set(data.identifiers)), add_special_tokens=False)["input_ids"]
    words = max(min(len(i), c.max_identifier_tokens) for i in ids)
    faces = int((data.chars >= 0).sum(1).max()) if c.faces or c.character_text else 0
    per_shot = int(c.shot_marker) + words + 1 + faces + 1 + c.num_tokens  # [SHOT] identifier descriptor faces [FRAME] tokens
    references = torch.zeros(c.max_references, c.num_tokens, c.token_dim) if c.max_references else None
    prefix = model.prefix_embeds(references).shape[0]
    return prefix + window * per_shot


def build_model(config: ARTrainingConfig, train: EncodedEpisodes, text_encoder: Path | str) -> KeyframeAR:
    """A fresh keyframe AR model sized to the encoded data (tokens, text and face widths); its default generation
    window (``context_window``) is the longest training sequence."""
    _, n, d = train.tokens.shape
    ar_config = KeyframeARConfig(num_tokens=n, token_dim=d, text_dim=train.descriptor_embeds.shape[1],
                                 face_dim=train.face_bank.shape[-1], max_faces=train.chars.shape[1],
                                 character_text=config.character_text, head=config.head,
                                 head_config=config.head_config(), faces=config.faces,
                                 max_references=config.model_references)
    with quiet_loading():
        if config.backbone == "toy":
            model = KeyframeAR.build_toy(str(text_encoder), ar_config, hidden_size=config.hidden_size,
                                         num_layers=config.num_layers, num_heads=config.num_heads,
                                         attention_dropout=config.dropout)
        else:
            model = KeyframeAR.from_backbone(config.backbone, config=ar_config)
    model.config.context_window = training_context(model, train, config.window)
    return model


def load_init(model: KeyframeAR, setting: str) -> None:
    """Copy a trained keyframe AR model's weights into ``model`` (refusing other names or shapes); that ``setting``
    names a model folder is :meth:`ARTrainingConfig.check`'s."""
    folder = Path(setting)
    with quiet_loading():
        trained = KeyframeAR.from_pretrained(folder)
    mine, theirs = model.state_dict(), trained.state_dict()
    wrong = sorted(k for k in set(mine) | set(theirs) if k not in mine or k not in theirs
                   or mine[k].shape != theirs[k].shape)
    if wrong:
        raise InputError(f"--init {setting}: the model there does not match this run's sizes ({', '.join(wrong[:4])}).",
                         hint="start from a model trained with the same recipe sizes")
    model.load_state_dict({k: v.float() for k, v in theirs.items()})
    console.print(f"keyframe AR model initialised from {folder}", highlight=False)


def load_data(config: ARTrainingConfig, out: Path, progress: bool = True) -> tuple[EncodedEpisodes, EncodedEpisodes]:
    """The training and held-out episodes, encoded or read from ``OUT/data``."""
    encoder = model_source(config.keyframe_encoder, TOY_KEYFRAME_ENCODER, "keyframe-encoder")
    text = model_source(config.text_encoder, TOY_TEXT_ENCODER, "text-encoder")
    faces = model_source(config.face_embedder, DEFAULT_FACE_EMBEDDER, "face-embedder")
    common = dict(world_seed=config.world_seed, seed=config.data_seed, length=config.episode_length,
                  frame_size=config.frame_size, photos_per_character=config.photos_per_character,
                  keyframe_encoder=encoder, text_encoder=text, face_embedder=faces, progress=progress)
    train = encoded_episodes(out / "data" / "train", first=0, count=config.episodes, photo_seed=config.seed,
                             flip=config.flip_prob > 0, **common)
    val = encoded_episodes(out / "data" / "val", first=config.episodes, count=config.val_episodes,
                           photo_seed=config.seed + 1, **common)
    return train, val


def train_ar(config: ARTrainingConfig, out: str | Path, resume: str = "auto", export: str | Path | None = None,
             given: Collection[str] | None = None) -> Path:
    """Train (or resume) the keyframe AR model; returns the exported model folder (``OUT/final`` and ``export``).

    On resume the saved settings hold, except the fields named in ``given`` (by default: those not at their defaults).
    """
    config, out, start_from, accelerator = start_run(config, ARTrainingConfig, out, resume, given, export,
                                                     "keyframe_ar.json")
    with accelerator.main_process_first():
        train, val = load_data(config, out, progress=accelerator.is_main_process)
    text = model_source(config.text_encoder, TOY_TEXT_ENCODER, "text-encoder")
    ar = build_model(config, train, text)
    if config.init and start_from is None:
        load_init(ar, config.init)
    model = ARTrainingModel(ar)
    task = ARTask(model, train, val, config)
    console.print("held-out baselines: " + ", ".join(f"{k} {v:.3f}" for k, v in task.baselines.items()), highlight=False)
    result = fit(task, config, out, accelerator, resume_from=start_from, name="train ar")

    return publish_final(result, accelerator, out, "keyframe_ar", export, "ar")
