"""Keyframe encoder (frozen CLIP vision + token compressor) and descriptor text encoder.

Both load from a folder (``from_pretrained``) and work the same for a real CLIP ViT-L/14 /
LongCLIP and for the toy CLIP shipped with mdream: there is one code path, only configs differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionModel

from mdream.errors import InputError
from mdream.models.compressor import TokenCompressor
from mdream.models.loading import load_pretrained, read_json, resolve_reference, write_json
from mdream.models.offload import execution_device
from mdream.models.registry import register_model

# OpenAI CLIP's preprocessing constants; used when the folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ENCODER_CONFIG = "keyframe_encoder.json"
TEXT_ENCODER_CONFIG = "text_encoder.json"


def images_to_float(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Any accepted image batch -> float ``[B, 3, H, W]`` in [-1, 1].

    Accepts uint8 ``[B, H, W, 3]`` or ``[B, 3, H, W]`` (numpy or torch) and float ``[B, 3, H, W]``
    already in [-1, 1].
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4:
        raise InputError(f"Expected a batch of images [B, H, W, 3] or [B, 3, H, W], got shape {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        if images.shape[-1] == 3 and images.shape[1] != 3:
            images = images.permute(0, 3, 1, 2)
        return images.float() / 127.5 - 1.0
    if images.shape[1] != 3:
        raise InputError(f"Float images must be [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}.")
    return images.float()


def read_clip_preprocessing(folder: str, image_size: int) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Mean, std and input size from the folder's preprocessor_config.json, else CLIP's defaults."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return CLIP_MEAN, CLIP_STD, image_size
    cfg = json.loads(path.read_text())
    crop = cfg.get("crop_size", image_size)
    if isinstance(crop, dict):
        crop = crop.get("height", image_size)
    return tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD)), int(crop)


class ClipImagePreprocessor(torch.nn.Module):
    """CLIP's resize (shortest side) + centre crop + normalise, batched in torch."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], size: int):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images float [B, 3, H, W] in [-1, 1] -> normalised [B, 3, size, size]
        x = (images + 1.0) / 2.0
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size):
            scale = self.size / min(h, w)
            new_h, new_w = max(self.size, round(h * scale)), max(self.size, round(w * scale))
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
            top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
            x = x[:, :, top : top + self.size, left : left + self.size]
        return (x.clamp(0, 1) - self.mean) / self.std


@register_model()
class KeyframeEncoder(torch.nn.Module):
    """Frozen CLIP vision tower + trainable ``TokenCompressor``: images -> ``[B, N, d]`` keyframe tokens.

    Folder layout (``save_pretrained``): ``keyframe_encoder.json`` (``vision_model``: a folder
    relative to this one, an absolute folder or a hub id; ``vision_feature_layer``) and
    ``compressor/`` (config.json + safetensors); ``vision/`` when the vision tower is saved here.
    """

    #: large sub-models that ``--offload`` moves to the device one at a time (mdream.models.offload)
    offload_units = ("vision_model",)

    def __init__(
        self,
        vision_model: CLIPVisionModel,
        compressor: TokenCompressor,
        preprocessor: ClipImagePreprocessor,
        vision_feature_layer: int = -1,
        vision_reference: str | None = None,
    ):
        super().__init__()
        if compressor.config.vision_dim != vision_model.config.hidden_size:
            raise InputError(
                f"The token compressor expects {compressor.config.vision_dim}-d patch tokens but the vision "
                f"model gives {vision_model.config.hidden_size}-d ones."
            )
        self.vision_model = vision_model.eval().requires_grad_(False)
        self.compressor = compressor
        self.preprocessor = preprocessor
        self.vision_feature_layer = vision_feature_layer
        self.vision_reference = vision_reference

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_vision_model(
        cls, vision_source: str, compressor: TokenCompressor | None = None, vision_feature_layer: int = -1, **compressor_kwargs
    ) -> KeyframeEncoder:
        """A fresh encoder around a pretrained vision tower (folder or hub id); compressor newly built if not given."""
        vision = load_pretrained(CLIPVisionModel, vision_source, "CLIP vision model")
        if compressor is None:
            compressor = TokenCompressor(vision_dim=vision.config.hidden_size, **compressor_kwargs)
        mean, std, size = read_clip_preprocessing(vision_source, vision.config.image_size)
        return cls(vision, compressor, ClipImagePreprocessor(mean, std, size), vision_feature_layer, vision_source)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> KeyframeEncoder:
        folder = Path(folder)
        cfg = read_json(folder / ENCODER_CONFIG, "keyframe encoder")
        vision_source = resolve_reference(folder, cfg["vision_model"])
        compressor = load_pretrained(TokenCompressor, str(folder / "compressor"), "token compressor")
        encoder = cls.from_vision_model(vision_source, compressor, cfg.get("vision_feature_layer", -1))
        encoder.vision_reference = cfg["vision_model"]
        return encoder

    def save_pretrained(self, folder: str | Path, vision_reference: str | None = None) -> None:
        """Save the compressor; the vision tower is saved to ``vision/`` unless a reference is given."""
        folder = Path(folder)
        reference = vision_reference or self.vision_reference
        if reference is None:
            self.vision_model.save_pretrained(folder / "vision")
            reference = "vision"
        self.compressor.save_pretrained(folder / "compressor")
        write_json(
            folder / ENCODER_CONFIG,
            {"_class_name": "KeyframeEncoder", "vision_model": reference, "vision_feature_layer": self.vision_feature_layer},
        )

    # ---- properties ---------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return self.compressor.config.num_tokens

    @property
    def token_dim(self) -> int:
        return self.compressor.config.token_dim

    @property
    def device(self) -> torch.device:
        return execution_device(self, self.compressor.proj_out.weight.device)

    # ---- encoding -----------------------------------------------------------------------------
    def vision_features(self, images: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen CLIP features: patch tokens ``[B, P, Dv]`` (the chosen layer) and image embedding ``[B, Dv]``.

        The image embedding is the post-layernormed CLS state (``pooler_output``).
        """
        # on the vision tower's device, which training sets apart from the compressor's (accelerate moves that later)
        vision = next(self.vision_model.parameters())
        device = execution_device(self, vision.device)
        pixels = self.preprocessor.to(device)(images_to_float(images).to(device))
        dtype = vision.dtype
        with torch.no_grad():
            out = self.vision_model(pixel_values=pixels.to(dtype), output_hidden_states=self.vision_feature_layer != -1)
        hidden = out.last_hidden_state if self.vision_feature_layer == -1 else out.hidden_states[self.vision_feature_layer]
        return hidden, out.pooler_output

    def forward(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Images -> tokens ``[B, N, d]`` with gradients through the compressor (training)."""
        patches, _ = self.vision_features(images)
        return self.compressor(patches.to(self.device, self.compressor.dtype))

    @torch.no_grad()
    def encode(self, images: torch.Tensor | np.ndarray, batch_size: int = 64) -> torch.Tensor:
        """Images (uint8 ``[B, H, W, 3]``/``[B, 3, H, W]`` or float ``[B, 3, H, W]`` in [-1, 1]) -> float32 tokens ``[B, N, d]`` on CPU."""
        images = images_to_float(images)
        chunks = [self.forward(images[i : i + batch_size]).float().cpu() for i in range(0, images.shape[0], batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.num_tokens, self.token_dim)


@register_model()
class TextEncoder(torch.nn.Module):
    """Descriptor text -> pooled embedding ``[B, D]`` (L2-normalised), any CLIP-style text tower.

    ``from_pretrained(folder)`` accepts a CLIP/LongCLIP folder (``CLIPModel``,
    ``CLIPTextModelWithProjection`` or ``CLIPTextModel`` weights + tokenizer files), or a folder with
    ``text_encoder.json`` whose ``model`` names such a folder (relative) or a hub id.
    """

    #: large sub-models that ``--offload`` moves to the device one at a time (mdream.models.offload)
    offload_units = ("text_model",)

    def __init__(self, tokenizer, text_model: CLIPTextModel | CLIPTextModelWithProjection, source: str | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        self.text_model = text_model.eval().requires_grad_(False)
        self.source = source
        positions = text_model.config.max_position_embeddings
        self.max_length = min(positions, getattr(tokenizer, "model_max_length", positions) or positions)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> TextEncoder:
        source = str(folder)
        redirect = Path(folder) / TEXT_ENCODER_CONFIG
        if redirect.is_file():
            source = resolve_reference(folder, read_json(redirect, "text encoder")["model"])
        config_path = Path(source) / "config.json"
        model_cls: type = CLIPTextModelWithProjection
        if config_path.is_file():
            cfg = json.loads(config_path.read_text())
            archs = cfg.get("architectures") or []
            if cfg.get("model_type") == "clip_text_model" and "CLIPTextModelWithProjection" not in archs:
                model_cls = CLIPTextModel  # no projection weights saved: use the pooled output as is
        tokenizer = load_pretrained(AutoTokenizer, source, "text tokenizer")
        model = load_pretrained(model_cls, source, "CLIP text model")
        return cls(tokenizer, model, source)

    @property
    def embed_dim(self) -> int:
        cfg = self.text_model.config
        return cfg.projection_dim if isinstance(self.text_model, CLIPTextModelWithProjection) else cfg.hidden_size

    @property
    def device(self) -> torch.device:
        return execution_device(self, next(self.text_model.parameters()).device)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Texts -> float32 ``[B, D]`` pooled, L2-normalised embeddings on CPU."""
        if isinstance(texts, str):
            raise InputError("TextEncoder.encode takes a list of strings, not one string.")
        chunks = []
        for i in range(0, len(texts), batch_size):
            batch = {k: v.to(self.device) for k, v in self.tokenize(texts[i : i + batch_size]).items()}
            batch.pop("token_type_ids", None)
            out = self.text_model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
            pooled = out.text_embeds if isinstance(self.text_model, CLIPTextModelWithProjection) else out.pooler_output
            chunks.append(F.normalize(pooled.float(), dim=-1).cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.embed_dim)
