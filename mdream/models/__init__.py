"""Model components, one code path for both sizes (real backbones by folder/hub id, and the toy size).

- :class:`KeyframeEncoder` (``encoders``): frozen CLIP vision + :class:`TokenCompressor` -> ``[B, N, d]`` tokens.
- :class:`TextEncoder` (``encoders``): descriptor text -> pooled ``[B, D]`` embedding.
- :class:`KeyframeDecoder` (``decoder``): tokens + face embeddings + descriptor -> keyframe images.
- ``toy_clip``: the toy CLIP and its word-level tokenizer.

Names resolve lazily so ``import mdream.models`` does not pull in torch/diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TokenCompressor": "mdream.models.compressor",
    "TokenReconstructionHead": "mdream.models.compressor",
    "KeyframeEncoder": "mdream.models.encoders",
    "TextEncoder": "mdream.models.encoders",
    "KeyframeDecoder": "mdream.models.decoder",
    "ContextProjector": "mdream.models.decoder",
    "DecoderOutput": "mdream.models.decoder",
    "SCHEDULERS": "mdream.models.decoder",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mdream.models' has no attribute {name!r}")
