"""Training data of the keyframe AR model: toy-world episodes encoded once, as the encode stage encodes a script.

For every shot of an episode this holds what ``mdream.stages.definitions.EncodeStage`` writes at inference and
the keyframe stage's target:

- ``descriptor_embeds`` / ``identifier_embeds`` ``[M, D]``: the shot's descriptor and identifier through the text
  encoder (the toy CLIP's text tower by default), and ``identifiers``: the identifier text itself (the AR model
  embeds it with its own tokenizer);
- ``chars`` ``[M, 3]``: the world character at left / centre / right (-1 empty). Face embeddings are drawn when a
  training window is sampled, one photo of ``face_bank`` ``[C, P, 512]`` per cast member and use
  (face-embedding randomisation), and ``character_text`` ``[C, D]`` gives each slot's description embedding;
- ``tokens`` ``[M, N, d]``: the ground-truth keyframe, rendered at ``frame_size`` px and encoded by the keyframe
  encoder (``KeyframeEncoder.encode``, as the keyframes stage encodes a given keyframe).

With ``flip`` (the horizontal-flip augmentation) the mirror image of every shot is encoded too, once:
``flipped_tokens`` (the frame flipped left to right, then encoded), ``flipped_identifiers`` and
``flipped_descriptor_embeds`` (the texts with the words left and right swapped, :func:`swap_left_right`). The
flipped cast is ``chars`` with its left and right columns swapped (:meth:`EncodedEpisodes.flipped_chars`).

Episodes come from ``make_episode`` with the seeds ``mdream toyworld dataset`` uses (``episode_seed(seed, e)``,
each frame rendered from ``rng([seed, world_seed, e, s])``), so episode ``e`` here is row block ``e`` of a
dataset written with the same world, seed and episode length. A held-out split is other episodes of the same seed
(numbers after the training ones) with face photos of another draw.

On disk (a folder of the run): ``index.json`` (the cache key, the episode offsets, the identifier texts, the
shard files) written last, ``common.safetensors`` (face bank, character text embeddings) and
``shard-XXXXX.safetensors`` (per-shot tensors of a block of episodes). The key covers the world, seeds, episode
count and length, frame size, photos per character and the identities (file contents) of the keyframe encoder,
text encoder and face embedder, so a cache made from other inputs is rebuilt, never reused.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mdream.cache import atomic_write_bytes
from mdream.training.common import console, content_key, model_key

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOY_KEYFRAME_ENCODER = ASSETS / "models" / "toy-tokenizer" / "encoder"
TOY_TEXT_ENCODER = ASSETS / "models" / "toy-clip"
DEFAULT_FACE_EMBEDDER = ASSETS / "eval" / "toy_face_recognition.onnx"
INDEX = "index.json"
FORMAT = 2


@dataclass
class EncodedEpisodes:
    """Encoded shots of consecutive episodes, row-aligned (M shots in all, episodes back to back)."""

    tokens: torch.Tensor
    """float32 ``[M, N, d]``: the keyframe encoder's tokens of each shot's ground-truth frame."""
    descriptor_embeds: torch.Tensor
    """float32 ``[M, D]``: each descriptor through the text encoder."""
    identifier_embeds: torch.Tensor
    """float32 ``[M, D]``: each identifier through the text encoder (the encode stage's ``identifier_embed``)."""
    chars: torch.Tensor
    """int64 ``[M, 3]``: world character index at left / centre / right, -1 where empty."""
    identifiers: list[str]
    """Each shot's identifier text."""
    episode_starts: torch.Tensor
    """int64 ``[E + 1]``: episode ``e`` is rows ``episode_starts[e]:episode_starts[e + 1]``."""
    face_bank: torch.Tensor
    """float32 ``[C, P, 512]``: P face-photo embeddings per world character (L2-normalised)."""
    character_text: torch.Tensor
    """float32 ``[C, D]``: each world character's description through the text encoder."""
    key: str = ""
    """The cache key of what the set was made from."""
    info: dict = field(default_factory=dict)
    """How it was made (world seed, seeds, sizes, encoders, encode seconds)."""
    flipped_tokens: torch.Tensor | None = None
    """float32 ``[M, N, d]``: the tokens of each frame flipped left to right (None: the set has no flips)."""
    flipped_descriptor_embeds: torch.Tensor | None = None
    """float32 ``[M, D]``: each descriptor with left and right swapped, through the text encoder."""
    flipped_identifiers: list[str] | None = None
    """Each identifier with left and right swapped."""
    scenes: torch.Tensor | None = None
    """int64 ``[M]``: each shot's scene (the toy world's scene index; -1 where unknown; None: all unknown)."""

    def __post_init__(self) -> None:
        if self.scenes is None:
            self.scenes = torch.full((len(self),), -1, dtype=torch.long)

    @property
    def has_flips(self) -> bool:
        return self.flipped_tokens is not None

    @property
    def flipped_chars(self) -> torch.Tensor:
        """int64 ``[M, 3]``: the cast of each flipped frame (left and right swapped)."""
        return self.chars.flip(1)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_starts.shape[0]) - 1

    def episode_rows(self, e: int) -> tuple[int, int]:
        return int(self.episode_starts[e]), int(self.episode_starts[e + 1])

    @property
    def face_identities(self) -> torch.Tensor:
        """float32 ``[C, 512]``: each character's mean photo embedding, renormalised (the encode stage's identity)."""
        mean = self.face_bank.mean(1)
        return mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-12)


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """The text of a horizontally flipped frame: every whole word left becomes right and back, capitals kept.

    >>> swap_left_right("On the left, Ana waves. Right of her, Bo.")
    'On the right, Ana waves. Left of her, Bo.'
    """
    def swap(match: re.Match) -> str:
        word = match.group()
        other = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, text)


def render_episodes(world_seed: int, seed: int, first: int, count: int, length: int, size: int,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[str], list[str], np.ndarray]:
    """Episodes ``first .. first + count - 1`` of ``length`` shots: frames uint8 ``[M, size, size, 3]``, chars
    ``[M, 3]``, identifiers, descriptors (the rows ``mdream toyworld dataset`` writes for the same seeds) and each
    shot's world scene index ``[M]``."""
    from mdream.toyworld import make_world, render_keyframe, shot_labels, shot_text
    from mdream.toyworld.episode import episode_seed, make_episode

    world = make_world(world_seed)
    m = count * length
    frames = np.empty((m, size, size, 3), np.uint8)
    chars = np.empty((m, 3), np.int64)
    scenes = np.empty(m, np.int64)
    identifiers, descriptors = [], []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"rendering {count} episodes x {length} shots", total=count)
        for i, e in enumerate(range(first, first + count)):
            episode = make_episode(world, seed=episode_seed(seed, e), n_shots=length)
            for s, shot in enumerate(episode.shots):
                row = i * length + s
                frames[row] = render_keyframe(world, shot, size, np.random.default_rng([seed, world_seed, e, s]))
                labels = shot_labels(world, shot)
                chars[row], scenes[row] = labels["chars"], labels["scene"]
                identifier, descriptor = shot_text(world, shot)
                identifiers.append(identifier)
                descriptors.append(descriptor)
            bar.update(task, completed=i + 1)
    return frames, chars, identifiers, descriptors, scenes


def episode_set_key(world_seed: int, seed: int, first: int, count: int, length: int, frame_size: int,
                    photos_per_character: int, photo_seed: int, keyframe_encoder: str | Path, text_encoder: str | Path,
                    face_embedder: str | Path, flip: bool = False) -> str:
    """The cache key: every input of :func:`encode_episodes`, models by their file contents."""
    extra = ("flip",) if flip else ()  # a set without flips keeps the key it always had
    return content_key("keyframe AR episodes", FORMAT, world_seed, seed, first, count, length, frame_size,
                       photos_per_character, photo_seed, model_key(keyframe_encoder), model_key(text_encoder),
                       model_key(face_embedder), *extra)


def encode_episodes(world_seed: int, seed: int, first: int, count: int, length: int, frame_size: int,
                    photos_per_character: int, photo_seed: int, keyframe_encoder: str | Path,
                    text_encoder: str | Path, face_embedder: str | Path, progress: bool = True,
                    flip: bool = False) -> EncodedEpisodes:
    """Render and encode episodes ``first .. first + count - 1`` (see the module docstring); with ``flip`` also
    their mirror images."""
    from mdream.models.encoders import KeyframeEncoder, TextEncoder
    from mdream.models.loading import quiet_loading
    from mdream.training.data import character_text_embeddings, face_embedding_bank

    start = time.perf_counter()
    frames, chars, identifiers, descriptors, scenes = render_episodes(world_seed, seed, first, count, length,
                                                                      frame_size, progress)
    rendered = time.perf_counter()
    with quiet_loading():
        encoder = KeyframeEncoder.from_pretrained(keyframe_encoder).eval()
        text = TextEncoder.from_pretrained(text_encoder)
    tokens = encoder.encode(frames, batch_size=256)  # [M, N, d]
    flipped_tokens = flipped_descriptors = flipped_identifiers = None
    if flip:
        flipped_tokens = encoder.encode(np.ascontiguousarray(frames[:, :, ::-1]), batch_size=256)  # [M, N, d]
        flipped_descriptors = [swap_left_right(t) for t in descriptors]
        flipped_identifiers = [swap_left_right(t) for t in identifiers]
    # each distinct text once (an arc repeats its identifier; the encoder sees one text at a time anyway)
    unique = sorted(set(descriptors) | set(identifiers) | set(flipped_descriptors or ()))
    table = text.encode(unique, batch_size=256).float()  # [U, D]
    row = {t: i for i, t in enumerate(unique)}
    embeds = table[torch.tensor([row[t] for t in descriptors + identifiers])]  # [2M, D]
    bank = face_embedding_bank(world_seed, face_embedder, photos_per_character, photo_seed)  # [C, P, 512]
    described = character_text_embeddings(world_seed, text)  # [C, D]
    m = len(identifiers)
    starts = torch.arange(0, (count + 1) * length, length, dtype=torch.long)
    info = {"world_seed": world_seed, "seed": seed, "first_episode": first, "episodes": count, "length": length,
            "frame_size": frame_size, "photos_per_character": photos_per_character, "photo_seed": photo_seed,
            "keyframe_encoder": str(keyframe_encoder), "text_encoder": str(text_encoder),
            "face_embedder": str(face_embedder), "flip": flip, "render_s": round(rendered - start, 2),
            "encode_s": round(time.perf_counter() - rendered, 2)}
    data = EncodedEpisodes(tokens.float().contiguous(), embeds[:m].contiguous(), embeds[m:].contiguous(),
                           torch.from_numpy(chars), identifiers, starts, torch.from_numpy(bank).contiguous(),
                           torch.as_tensor(described, dtype=torch.float32).contiguous(), info=info,
                           scenes=torch.from_numpy(scenes))
    if flip:
        data.flipped_tokens = flipped_tokens.float().contiguous()
        data.flipped_descriptor_embeds = table[torch.tensor([row[t] for t in flipped_descriptors])].contiguous()
        data.flipped_identifiers = flipped_identifiers
    return data


PER_SHOT = ("tokens", "descriptor_embeds", "identifier_embeds", "chars", "scenes")
FLIPPED_PER_SHOT = ("flipped_tokens", "flipped_descriptor_embeds")


def save_encoded_episodes(folder: Path, data: EncodedEpisodes, key: str, episodes_per_shard: int = 100) -> None:
    """Write ``data`` as safetensors shards + ``index.json`` (last, so a half-written folder never loads)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_file({"face_bank": data.face_bank, "character_text": data.character_text}, str(folder / "common.safetensors"))
    shards = []
    for k, e0 in enumerate(range(0, data.num_episodes, episodes_per_shard)):
        e1 = min(e0 + episodes_per_shard, data.num_episodes)
        r0, r1 = int(data.episode_starts[e0]), int(data.episode_starts[e1])
        name = f"shard-{k:05d}.safetensors"
        names = PER_SHOT + (FLIPPED_PER_SHOT if data.has_flips else ())
        save_file({n: getattr(data, n)[r0:r1].contiguous() for n in names}, str(folder / name))
        shards.append({"file": name, "episodes": [e0, e1], "rows": [r0, r1]})
    index = {"format": FORMAT, "key": key, "shots": len(data), "episode_starts": data.episode_starts.tolist(),
             "shards": shards, "identifiers": data.identifiers, "info": data.info,
             **({"flipped_identifiers": data.flipped_identifiers} if data.has_flips else {})}
    atomic_write_bytes(folder / INDEX, (json.dumps(index) + "\n").encode())


def load_encoded_episodes(folder: Path, key: str) -> EncodedEpisodes | None:
    """The set saved in ``folder`` with this key; None when missing, damaged or made from other inputs."""
    path = folder / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
        if index.get("key") != key:
            console.print(f"[yellow]{folder} was encoded from other inputs; encoding again[/]", highlight=False)
            return None
        common = load_file(str(folder / "common.safetensors"))
        parts = [load_file(str(folder / s["file"])) for s in index["shards"]]
        flips = "flipped_identifiers" in index
        arrays = {n: torch.cat([p[n] for p in parts]) for n in PER_SHOT + (FLIPPED_PER_SHOT if flips else ())}
        starts = torch.tensor(index["episode_starts"], dtype=torch.long)
        if len(index["identifiers"]) != len(arrays["tokens"]) or int(starts[-1]) != len(arrays["tokens"]):
            raise ValueError("the shards do not hold the shots the index lists")
        if flips and len(index["flipped_identifiers"]) != len(arrays["tokens"]):
            raise ValueError("the flipped identifiers do not match the shots")
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        console.print(f"[yellow]{folder} is unreadable ({type(exc).__name__}: {exc}); encoding again[/]",
                      highlight=False)
        return None
    data = EncodedEpisodes(arrays["tokens"], arrays["descriptor_embeds"], arrays["identifier_embeds"],
                           arrays["chars"], list(index["identifiers"]), starts, common["face_bank"],
                           common["character_text"], key, dict(index.get("info", {})), scenes=arrays["scenes"])
    if flips:
        data.flipped_tokens = arrays["flipped_tokens"]
        data.flipped_descriptor_embeds = arrays["flipped_descriptor_embeds"]
        data.flipped_identifiers = list(index["flipped_identifiers"])
    return data


def encoded_episodes(folder: Path, world_seed: int, seed: int, first: int, count: int, length: int,
                     frame_size: int, photos_per_character: int, photo_seed: int,
                     keyframe_encoder: str | Path, text_encoder: str | Path, face_embedder: str | Path,
                     progress: bool = True, flip: bool = False) -> EncodedEpisodes:
    """The encoded episodes cached in ``folder``, encoded (and cached) when missing or stale; ``flip``: with the
    flipped frames and texts too (part of the key: switching flips on encodes the set again)."""
    key = episode_set_key(world_seed, seed, first, count, length, frame_size, photos_per_character, photo_seed,
                          keyframe_encoder, text_encoder, face_embedder, flip)
    cached = load_encoded_episodes(folder, key)
    if cached is not None:
        return cached
    console.print(f"encoding {count} episodes x {length} shots into {folder}", highlight=False)
    data = encode_episodes(world_seed, seed, first, count, length, frame_size, photos_per_character, photo_seed,
                           keyframe_encoder, text_encoder, face_embedder, progress, flip)
    data.key = key
    save_encoded_episodes(folder, data, key)
    console.print(f"encoded {len(data)} shots (render {data.info['render_s']} s, encode {data.info['encode_s']} s)",
                  highlight=False)
    return data
