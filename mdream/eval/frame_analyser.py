"""Frame analyser: a keyframe -> its scene, which character stands at each position, and the toy
world's hidden state it shows (the scene's palette, each figure's trousers).

A small CNN trained on toy-world ground truth (with jitter, blur, noise and colour augmentation so it
also reads imperfect generated frames). Every frame is resized to 64x64 first, whatever its size.
Its penultimate activations are the feature vector of the toy-FID and of the diversity metric.

Saved the diffusers way: ``config.json`` (constructor arguments + the world it was trained on) and
``model.safetensors`` in one folder (the shipped one is ``mdream/assets/eval/frame_analyser/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdream.eval.saved_model import SavedReader

ANALYSER_SIZE = 64
POSITIONS = ("left", "center", "right")
EMPTY = -1  # "no character at this position" in labels; class index num_characters in the head


@dataclass
class FrameAnalyserConfig:
    """Constructor arguments of :class:`FrameAnalyser` and the world its classes come from."""

    num_scenes: int = 10
    """Number of scene classes (the world's scenes, in ``world.scenes`` order)."""
    num_characters: int = 24
    """Number of character classes per position; the head has one more class for "empty"."""
    widths: tuple[int, ...] = (24, 48, 64, 96)
    """Channels of the four stride-2 stages (64 -> 32 -> 16 -> 8 -> 4)."""
    feature_dim: int = 128
    """Size of the penultimate feature vector (toy-FID and diversity features)."""
    world_seed: int = 0
    """Seed of the toy world whose scenes and characters are the classes."""
    scene_ids: list[str] = field(default_factory=list)
    """Scene id of each scene class."""
    character_ids: list[str] = field(default_factory=list)
    """Character id of each character class."""
    num_palettes: int = 0
    """Classes of the scene's hidden palette (0: no palette head, an analyser trained before the world had one)."""
    num_trousers: int = 0
    """Classes of each position's hidden trouser colour (0: no trousers head)."""

    @classmethod
    def from_dict(cls, data: dict) -> FrameAnalyserConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "widths" in known:
            known["widths"] = tuple(known["widths"])
        return cls(**known)


class FrameAnalyser(SavedReader, nn.Module):
    """64x64 RGB frame -> scene logits [B, S], per-position character logits [B, 3, C+1], features."""

    config_class = FrameAnalyserConfig
    display_name = "frame analyser"
    train_command = "analyser"

    def __init__(self, config: FrameAnalyserConfig):
        super().__init__()
        self.config = config
        self.training_facts: dict = {}
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in config.widths:
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.backbone = nn.Sequential(*layers)
        # Flatten the 4x4 map (not a global pool): which character is *where* is the question.
        self.to_features = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in * 4 * 4, config.feature_dim), nn.ReLU()
        )
        self.scene_head = nn.Linear(config.feature_dim, config.num_scenes)
        self.cast_head = nn.Linear(config.feature_dim, len(POSITIONS) * (config.num_characters + 1))
        self.palette_head = nn.Linear(config.feature_dim, config.num_palettes) if config.num_palettes else None
        self.trousers_head = (nn.Linear(config.feature_dim, len(POSITIONS) * config.num_trousers)
                              if config.num_trousers else None)

    @property
    def reads_hidden_state(self) -> bool:
        """Whether this analyser reads the hidden palette and trousers."""
        return self.palette_head is not None and self.trousers_head is not None

    @staticmethod
    def preprocess(frames_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] (any H, W) -> float [B, 3, 64, 64] in [-1, 1]."""
        x = torch.as_tensor(np.asarray(frames_uint8)).float().permute(0, 3, 1, 2) / 127.5 - 1.0
        if x.shape[-2:] != (ANALYSER_SIZE, ANALYSER_SIZE):
            x = F.interpolate(x, size=(ANALYSER_SIZE, ANALYSER_SIZE), mode="bilinear", antialias=True)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 3, 64, 64] -> [B, feature_dim]
        return self.to_features(self.backbone(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        scene_logits = self.scene_head(feats)  # [B, S]
        cast_logits = self.cast_head(feats).view(len(x), len(POSITIONS), -1)  # [B, 3, C+1]
        return scene_logits, cast_logits, feats

    def hidden(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Hidden-state logits from features [B, F]: palette [B, P], trousers [B, 3, T] (empty without heads)."""
        out = {}
        if self.palette_head is not None:
            out["palette"] = self.palette_head(feats)
        if self.trousers_head is not None:
            out["trousers"] = self.trousers_head(feats).view(len(feats), len(POSITIONS), -1)
        return out

    @torch.no_grad()
    def analyse(self, frames_uint8: np.ndarray, batch_size: int = 128) -> dict[str, np.ndarray]:
        """Predict on uint8 frames [B, H, W, 3].

        Returns ``scene`` [B] (scene class), ``chars`` [B, 3] (character class or -1 empty) and
        ``features`` [B, feature_dim]; with the hidden-state heads also ``palette`` [B] and
        ``trousers`` [B, 3] (the trouser class read at each position, whoever stands there).
        """
        self.eval()
        out: dict[str, list[torch.Tensor]] = {"scene": [], "chars": [], "features": []}
        for start in range(0, len(frames_uint8), batch_size):
            s, c, f = self(self.preprocess(frames_uint8[start : start + batch_size]))
            out["scene"].append(s.argmax(-1))
            c = c.argmax(-1)
            out["chars"].append(torch.where(c == self.config.num_characters, EMPTY, c))
            out["features"].append(f)
            for name, logits in self.hidden(f).items():
                out.setdefault(name, []).append(logits.argmax(-1))
        if not out["scene"]:
            empty = {"scene": np.zeros(0, np.int64), "chars": np.zeros((0, 3), np.int64),
                     "features": np.zeros((0, self.config.feature_dim), np.float32)}
            if self.reads_hidden_state:
                empty.update(palette=np.zeros(0, np.int64), trousers=np.zeros((0, 3), np.int64))
            return empty
        result = {name: torch.cat(parts).numpy() for name, parts in out.items()}
        result["features"] = result["features"].astype(np.float32)
        return result
