"""Face-identity embedder: aligned 112x112 face crop -> 512-d L2-normalised embedding.

Two sizes, one code path. The toy embedder is a small CNN trained here on toy-world faces with
an ArcFace additive-angular-margin loss and exported to ONNX *as an insightface recognition model*
(input ``N x 3 x 112 x 112``, one output, no normalisation inside the graph). Both the toy model and
a real insightface recognition model (e.g. antelopev2's ``glintr100.onnx``) are loaded by
:class:`FaceIdentityEmbedder` through ``insightface.model_zoo.get_model``, so the real insightface
path runs in every test.

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

from mdream.errors import CorruptArtifactError, InputError

FACE_SIZE = 112  # insightface's aligned-crop size
EMBEDDING_DIM = 512
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


class FaceIdentityEmbedder:
    """Any insightface recognition ONNX (toy or real), loaded as insightface loads it.

    ``embed(crops)`` takes aligned RGB crops ``uint8 [n, 112, 112, 3]`` (other square sizes are
    resized by insightface) and returns ``float32 [n, D]`` L2-normalised embeddings.
    """

    def __init__(self, model_path: str | Path):
        import insightface  # heavy import (cv2, onnx, onnxruntime): keep it off module import

        path = Path(model_path)
        if not path.is_file():
            raise InputError(
                f"Face-recognition model not found: {path}",
                hint="Pass the path of an insightface recognition .onnx file (e.g. glintr100.onnx).",
            )
        try:
            model = insightface.model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime/onnx raise many kinds of errors for a bad file
            raise CorruptArtifactError(
                f"Could not load face-recognition model {path}: {exc}",
                hint="Is it a valid ONNX file? Re-export or re-download it.",
            ) from exc
        if model is None or getattr(model, "taskname", None) != "recognition":
            raise InputError(
                f"{path} is not an insightface recognition model (got {type(model).__name__}).",
                hint="A recognition model has one square input of >= 112 px and one output.",
            )
        model.prepare(ctx_id=-1)
        self.model = model
        self.path = path

    @property
    def input_size(self) -> int:
        return int(self.model.input_size[0])

    def identity(self, photo_paths) -> np.ndarray:
        """A character's identity: the mean embedding of its face photos, renormalised, float32 ``[D]``.

        Photos of another size are resized to the model's input (bilinear) before embedding.
        """
        from PIL import Image

        from mdream.images import read_rgb

        size = self.input_size
        photos = []
        for path in photo_paths:
            image = read_rgb(path, "face photo")
            if image.shape[:2] != (size, size):
                image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
            photos.append(image)
        mean = self.embed(np.stack(photos)).mean(0)
        return mean / max(float(np.linalg.norm(mean)), 1e-12)

    def embed(self, crops_rgb: np.ndarray, batch_size: int = 64) -> np.ndarray:
        crops_rgb = np.asarray(crops_rgb)
        if crops_rgb.ndim != 4 or crops_rgb.shape[-1] != 3:
            raise InputError(f"Face crops must be [n, H, W, 3] uint8, got shape {crops_rgb.shape}.")
        if len(crops_rgb) == 0:
            dim = self.model.output_shape[-1]
            return np.zeros((0, dim if isinstance(dim, int) else EMBEDDING_DIM), np.float32)
        out = []
        for start in range(0, len(crops_rgb), batch_size):
            # insightface expects OpenCV's BGR order and swaps to RGB itself (blobFromImages swapRB).
            bgr = [np.ascontiguousarray(c[:, :, ::-1]) for c in crops_rgb[start : start + batch_size]]
            out.append(np.asarray(self.model.get_feat(bgr), np.float32).reshape(len(bgr), -1))
        feats = np.concatenate(out)
        return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
