"""Face-identity embedder: an insightface recognition ONNX, aligned face crop -> L2-normalised embedding.

Both sizes share this loader: the toy model shipped in ``mdream/assets/eval`` (a small CNN exported as
an insightface recognition model, see :mod:`mdream.eval.face_embedder`) and a real insightface model
(e.g. antelopev2's ``glintr100.onnx``) are loaded through ``insightface.model_zoo.get_model``.

Preprocessing contract (insightface's ``ArcFaceONNX.get_feat``): the crop is resized to the model's
input size, converted BGR->RGB and normalised as ``(x - 127.5) / 127.5``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mdream.errors import CorruptArtifactError, InputError

FACE_SIZE = 112  # insightface's aligned-crop size
EMBEDDING_DIM = 512


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
