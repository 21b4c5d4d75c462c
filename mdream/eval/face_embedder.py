"""The toy face-identity network: aligned 112x112 face crop -> 512-d L2-normalised embedding.

A small CNN trained on toy-world faces with an ArcFace additive-angular-margin loss and exported to
ONNX *as an insightface recognition model* (input ``N x 3 x 112 x 112``, one output, no normalisation
inside the graph). Toy and real insightface models are then loaded by the same
:class:`mdream.models.face_embedder.FaceIdentityEmbedder`, so the real insightface path runs in every test.

Preprocessing contract (insightface's ``ArcFaceONNX.get_feat``): the crop is resized to the model's
input size, converted BGR->RGB and normalised as ``(x - 127.5) / 127.5``. The toy network is trained on
exactly that input (RGB, ``[-1, 1]``), see :func:`normalise_faces`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mdream.models.face_embedder import EMBEDDING_DIM, FACE_SIZE

__all__ = ["FACE_SIZE", "ArcMarginHead", "FaceEmbedderConfig", "FaceEmbedderNet", "export_onnx", "normalise_faces", "save_config"]

ONNX_OUTPUT_NAME = "embedding"  # non-numeric, so insightface and onnxruntime name it clearly
ONNX_INPUT_NAME = "face"


@dataclass
class FaceEmbedderConfig:
    """Constructor arguments of :class:`FaceEmbedderNet` (saved beside the weights)."""

    input_pool: int = 2
    """Average-pool the 112x112 input by this factor first (toy faces are flat shapes; 4x cheaper)."""
    widths: tuple[int, ...] = (24, 32, 64, 96)
    """Channels of the stem and of the three stride-2 stages (56 -> 28 -> 14 -> 7 -> 4 after the pool)."""
    head_channels: int = 48
    """Channels of the 1x1 reduction before the spatial flatten (keeps where colours are)."""
    embedding_dim: int = EMBEDDING_DIM
    """Output embedding size (insightface recognition models use 512)."""


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class FaceEmbedderNet(nn.Module):
    """Small ArcFace-style backbone: conv stages, BN, flatten of a 4x4 map, FC, BN, L2 norm.

    Like insightface's ResNets it keeps spatial layout before the embedding FC ("BN-FC-BN" output
    block) instead of global pooling, because identity in the toy world lives in *where* colours
    are (hair above skin above outfit) as much as in which colours appear.
    """

    def __init__(self, config: FaceEmbedderConfig | None = None):
        super().__init__()
        self.config = config or FaceEmbedderConfig()
        w = self.config.widths
        layers: list[nn.Module] = []
        if self.config.input_pool > 1:
            layers.append(nn.AvgPool2d(self.config.input_pool))  # 112 -> 56
        layers.append(_conv_bn_relu(3, w[0], 2))  # -> 28
        for c_in, c_out in zip(w[:-1], w[1:], strict=True):  # -> 14 -> 7 -> 4
            layers += [_conv_bn_relu(c_in, c_out, 2), _conv_bn_relu(c_out, c_out, 1)]
        layers += [
            nn.Conv2d(w[-1], self.config.head_channels, 1, bias=False),
            nn.BatchNorm2d(self.config.head_channels),
            nn.AdaptiveAvgPool2d(4),  # a no-op at 4x4; keeps other input_pool settings working
        ]
        self.features = nn.Sequential(*layers)
        flat = self.config.head_channels * 4 * 4
        self.output = nn.Sequential(
            nn.BatchNorm1d(flat),
            nn.Linear(flat, self.config.embedding_dim),
            nn.BatchNorm1d(self.config.embedding_dim),
        )

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        # faces: [B, 3, 112, 112] RGB in [-1, 1]  ->  [B, 512] unit vectors
        x = self.features(faces).flatten(1)
        return F.normalize(self.output(x), dim=-1)


class ArcMarginHead(nn.Module):
    """ArcFace additive angular margin logits (Deng et al., "ArcFace: Additive Angular Margin Loss
    for Deep Face Recognition", CVPR 2019).

    logits_j = s * cos(theta_j) for j != y and s * cos(theta_y + m) for the true class y, where theta_j
    is the angle between the (unit) embedding and the (unit) class centre W_j. When theta_y + m would
    pass pi the target logit falls back to cos(theta_y) - m * sin(m) (the paper's "easy margin"
    alternative keeps the logit monotonic in theta).
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.4):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # embeddings: [B, D] unit vectors; labels: [B] -> logits [B, C]
        cosine = F.linear(embeddings, F.normalize(self.weight, dim=-1)).clamp(-1 + 1e-7, 1 - 1e-7)
        sine = torch.sqrt(1.0 - cosine**2)
        cos_m, sin_m = math.cos(self.margin), math.sin(self.margin)
        target = cosine * cos_m - sine * sin_m  # cos(theta + m)
        threshold = math.cos(math.pi - self.margin)
        target = torch.where(cosine > threshold, target, cosine - self.margin * sin_m)
        one_hot = F.one_hot(labels, cosine.shape[1]).bool()
        return self.scale * torch.where(one_hot, target, cosine)


def normalise_faces(faces_rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]: exactly insightface's (x-127.5)/127.5."""
    x = torch.as_tensor(faces_rgb).float()
    return ((x - 127.5) / 127.5).permute(0, 3, 1, 2).contiguous()


def export_onnx(net: FaceEmbedderNet, path: str | Path) -> Path:
    """Export as an insightface recognition model: input ``face`` [N,3,112,112], output ``embedding``.

    Uses the TorchScript exporter (``dynamo=False``; the dynamo exporter needs onnxscript and is ~40x
    slower here). Normalisation stays outside the graph: insightface applies it in ``get_feat``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    dummy = torch.zeros(1, 3, FACE_SIZE, FACE_SIZE)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but right for this job
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (dummy,),
            str(path),
            dynamo=False,
            input_names=[ONNX_INPUT_NAME],
            output_names=[ONNX_OUTPUT_NAME],
            dynamic_axes={ONNX_INPUT_NAME: {0: "batch"}, ONNX_OUTPUT_NAME: {0: "batch"}},
            opset_version=17,
        )
    return path


def save_config(config: FaceEmbedderConfig, path: str | Path, **extra: object) -> None:
    """Write the constructor arguments (and training facts in ``extra``) as JSON."""
    Path(path).write_text(json.dumps({**asdict(config), **extra}, indent=2) + "\n")
