"""Motion reader: a shot's clip -> the action each cast slot performs and the camera's motion.

A small (2+1)D CNN trained on toy-world ground-truth clips (``toyworld.render_clip``) and on *held* clips (the
keyframe repeated): it reads what moves, not what a single frame shows. A held clip reads "stand" at every occupied
slot and "still" for the camera, so an animatic scores low on motion agreement for every moving action.

Input: any clip uint8 [T', H, W, 3]; :meth:`MotionReader.preprocess` resamples it to ``num_frames`` frames by index
(first and last kept) and area-averages each frame down to ``frame_size``. The network sees frame 0 and, per time
step, the step's frame difference and its difference to frame 0.

Outputs, per clip: for each position slot (left, center, right) one of ``actions`` or "nobody there", and one of
``cameras``: the script's camera names (wide shots pan, medium and close-up shots zoom in) or ``still``.

Saved the diffusers way: ``config.json`` (constructor arguments + training facts) and ``model.safetensors`` in one
folder (the shipped one is ``mdream/assets/eval/motion_reader/``, next to the frame analyser).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdream.eval.saved_model import SavedReader

POSITIONS = ("left", "center", "right")
NOBODY = -1  # "nobody at this slot" in labels and readings; class index len(actions) in the head
STILL = "still"
"""The camera reading of a clip whose camera does not move (a held keyframe)."""


@dataclass
class MotionReaderConfig:
    """Constructor arguments of :class:`MotionReader` and the vocabularies its classes come from."""

    num_frames: int = 8
    """Frames every clip is resampled to (by index, first and last kept)."""
    frame_size: int = 32
    """Frames are area-averaged to frame_size x frame_size."""
    widths: tuple[int, ...] = (24, 48, 48)
    """Channels of the three stride-2 stages (32 -> 16 -> 8 -> 4); the first two are (2+1)D."""
    feature_dim: int = 128
    """Size of the feature vector the heads read."""
    actions: list[str] = field(default_factory=lambda: ["stand", "walk", "wave", "jump", "sit"])
    """Action classes per slot (the toy world's ACTIONS); the head has one more class for "nobody there"."""
    cameras: list[str] = field(default_factory=lambda: ["wide", "medium", "close-up", STILL])
    """Camera classes: the script's cameras (read from their motion) and ``still``."""
    world_seed: int = 0
    """Seed of the toy world it was trained on."""

    @classmethod
    def from_dict(cls, data: dict) -> MotionReaderConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "widths" in known:
            known["widths"] = tuple(known["widths"])
        return cls(**known)


def _conv_bn(conv: nn.Module, channels: int, dims: int) -> list[nn.Module]:
    norm = nn.BatchNorm3d(channels) if dims == 3 else nn.BatchNorm2d(channels)
    return [conv, norm, nn.ReLU(inplace=True)]


class MotionReader(SavedReader, nn.Module):
    """Clip [B, T, 3, S, S] in [-1, 1] -> per-slot action logits [B, 3, A+1], camera logits [B, K], features."""

    config_class = MotionReaderConfig
    display_name = "motion reader"
    train_command = "motion-reader"

    def __init__(self, config: MotionReaderConfig):
        super().__init__()
        if config.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {config.num_frames}")
        if config.frame_size % 8:
            raise ValueError(f"frame_size must be a multiple of 8, got {config.frame_size}")
        self.config = config
        self.training_facts: dict = {}
        w0, w1, w2 = config.widths
        layers: list[nn.Module] = []
        # (2+1)D: a spatial conv (1x3x3, stride 2) then a temporal conv (3x1x1), twice
        for c_in, c_out in ((9, w0), (w0, w1)):
            layers += _conv_bn(nn.Conv3d(c_in, c_out, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False), c_out, 3)
            layers += _conv_bn(nn.Conv3d(c_out, c_out, (3, 1, 1), padding=(1, 0, 0), bias=False), c_out, 3)
        self.motion = nn.Sequential(*layers)
        # time pooled (mean and max); where in the frame something moves stays: which slot is it
        self.spatial = nn.Sequential(
            *_conv_bn(nn.Conv2d(2 * w1, w2, 3, stride=2, padding=1, bias=False), w2, 2),
        )
        side = config.frame_size // 8
        self.to_features = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(w2 * side * side, config.feature_dim),
                                         nn.ReLU())
        self.action_head = nn.Linear(config.feature_dim, len(POSITIONS) * (len(config.actions) + 1))
        self.camera_head = nn.Linear(config.feature_dim, len(config.cameras))

    @property
    def nobody_class(self) -> int:
        return len(self.config.actions)

    @staticmethod
    def frame_indices(length: int, num_frames: int) -> np.ndarray:
        """Indices that resample a clip of ``length`` frames to ``num_frames`` (first and last kept; repeats when
        the clip is shorter)."""
        if length < 1:
            raise ValueError("a clip needs at least one frame")
        return np.rint(np.linspace(0, length - 1, num_frames)).astype(np.int64)

    def preprocess(self, clips: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        """Clips uint8 [T', H, W, 3] (any T', H, W; a list or an array [B, T', H, W, 3]) -> float [B, T, 3, S, S]
        in [-1, 1]: ``num_frames`` frames by index, each area-averaged to ``frame_size``."""
        c = self.config
        out = []
        for clip in clips:
            clip = np.asarray(clip)
            if clip.ndim != 4 or clip.shape[-1] != 3:
                raise ValueError(f"a clip is uint8 [T, H, W, 3], got shape {clip.shape}")
            x = torch.from_numpy(np.ascontiguousarray(clip[self.frame_indices(len(clip), c.num_frames)]))
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [T, 3, H, W]
            if x.shape[-2:] != (c.frame_size, c.frame_size):
                if x.shape[-2] % c.frame_size == 0 and x.shape[-1] % c.frame_size == 0:
                    x = F.interpolate(x, size=(c.frame_size, c.frame_size), mode="area")
                else:
                    x = F.interpolate(x, size=(c.frame_size, c.frame_size), mode="bilinear", antialias=True)
            out.append(x)
        if not out:
            return torch.zeros(0, c.num_frames, 3, c.frame_size, c.frame_size)
        return torch.stack(out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, 3, S, S]
        first = x[:, :1]  # [B, 1, 3, S, S]
        steps = x[:, 1:] - x[:, :-1]  # [B, T-1, 3, S, S]
        since = x[:, 1:] - first  # [B, T-1, 3, S, S]
        h = torch.cat([first.expand_as(steps), 4 * steps, 4 * since], dim=2)  # [B, T-1, 9, S, S]
        h = self.motion(h.transpose(1, 2))  # [B, w1, T-1, S/4, S/4]
        h = torch.cat([h.mean(2), h.amax(2)], dim=1)  # [B, 2 w1, S/4, S/4]
        return self.to_features(self.spatial(h))  # [B, feature_dim]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        actions = self.action_head(feats).view(len(x), len(POSITIONS), -1)  # [B, 3, A+1]
        return actions, self.camera_head(feats), feats  # [B, 3, A+1], [B, K], [B, F]

    @torch.no_grad()
    def read(self, clips: list[np.ndarray] | np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Read uint8 clips (each [T', H, W, 3]).

        Returns ``actions`` [B, 3] (per slot: index into ``config.actions``, or -1 nobody there) and ``camera`` [B]
        (index into ``config.cameras``).
        """
        self.eval()
        actions, cameras = [], []
        for start in range(0, len(clips), batch_size):
            a, k, _ = self(self.preprocess(clips[start:start + batch_size]))
            a = a.argmax(-1)
            actions.append(torch.where(a == self.nobody_class, NOBODY, a))
            cameras.append(k.argmax(-1))
        if not actions:
            return {"actions": np.zeros((0, 3), np.int64), "camera": np.zeros(0, np.int64)}
        return {"actions": torch.cat(actions).numpy(), "camera": torch.cat(cameras).numpy()}
