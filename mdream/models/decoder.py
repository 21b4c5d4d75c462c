"""Keyframe decoder (the ID-preserving renderer): context projector + diffusers UNet (+ VAE) + scheduler.

The UNet's cross-attention context is the concatenation of three groups, each projected to the
UNet's ``cross_attention_dim`` and tagged with a learned group embedding:

    [ keyframe tokens (N) ; face embeddings of the shot's cast (K slots, padded + masked) ; descriptor (1) ]

In training whole groups are replaced by learned null embeddings at random, so that at inference
the renderer can lean on the faces and the text when the tokens are weak, and so that the fully
null context is the unconditional branch of classifier-free guidance. A pooled vector of the same
context enters the time embedding: as ``class_labels`` for ``class_embed_type="projection"`` UNets
(the toy) or as SDXL's ``text_embeds`` (+ ``time_ids``) for ``addition_embed_type="text_time"``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    ConfigMixin,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    ModelMixin,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import register_to_config
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from mdream.errors import CorruptArtifactError, InputError
from mdream.models.loading import load_pretrained, read_json, write_json
from mdream.models.offload import execution_device
from mdream.models.registry import register_model

DECODER_CONFIG = "keyframe_decoder.json"

# Scheduler names accepted by ``KeyframeDecoder.set_scheduler`` / ``generate(scheduler=...)``.
SCHEDULERS: dict[str, tuple[type, dict]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "dpmpp": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}

#: Keys of ``keyframe_decoder.json``'s ``sampling`` block: the settings the decoder was measured with.
SAMPLING_KEYS = ("num_inference_steps", "guidance_scale", "identity_guidance_scale", "scheduler")

GROUP_TOKENS, GROUP_FACES, GROUP_TEXT = 0, 1, 2

# ``KeyframeDecoder(position_channels=...)``: none, or x and y coordinate maps
POSITION_CHANNEL_CHOICES = (0, 2)


class ContextProjector(ModelMixin, ConfigMixin):
    """Project [tokens ; faces ; descriptor] to the UNet's context width, with null embeddings per group."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        num_tokens: int = 2,
        token_dim: int = 128,
        face_dim: int = 512,
        max_faces: int = 3,
        text_dim: int = 64,
        cross_attention_dim: int = 64,
        pooled_dim: int | None = None,
        pooled_faces: str = "mean",
        character_text_dim: int | None = None,
    ):
        super().__init__()
        if pooled_faces not in ("mean", "slots"):
            raise InputError(f"pooled_faces must be 'mean' or 'slots', got '{pooled_faces}'.")
        c = cross_attention_dim
        self.token_proj = nn.Sequential(nn.Linear(token_dim, c), nn.GELU(), nn.Linear(c, c))
        self.face_proj = nn.Sequential(nn.Linear(face_dim, c), nn.GELU(), nn.Linear(c, c))
        self.text_proj = nn.Sequential(nn.Linear(text_dim, c), nn.GELU(), nn.Linear(c, c))
        # each cast member's description, added to their face slot: what a face photo cannot show (height, outfit)
        self.character_text_proj = (
            nn.Sequential(nn.Linear(character_text_dim, c), nn.GELU(), nn.Linear(c, c)) if character_text_dim else None
        )
        self.group_embed = nn.Parameter(torch.randn(3, c) * 0.02)
        self.token_pos = nn.Parameter(torch.randn(num_tokens, c) * 0.02)
        self.face_slot = nn.Parameter(torch.randn(max_faces, c) * 0.02)
        self.null_tokens = nn.Parameter(torch.randn(num_tokens, c) * 0.02)
        self.null_face = nn.Parameter(torch.randn(c) * 0.02)
        self.null_text = nn.Parameter(torch.randn(c) * 0.02)
        self.norm = nn.LayerNorm(c)
        # pooled input: all token slots, the faces (their masked mean, or every slot so that the time
        # embedding also knows who stands where), the descriptor
        face_width = max_faces if pooled_faces == "slots" else 1
        self.pooled_proj = nn.Linear((num_tokens + face_width + 1) * c, pooled_dim) if pooled_dim else None

    @property
    def context_length(self) -> int:
        return self.config.num_tokens + self.config.max_faces + 1

    def forward(
        self,
        tokens: torch.Tensor | None,
        face_embeds: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
        text_embed: torch.Tensor | None = None,
        drop_tokens: torch.Tensor | None = None,
        drop_faces: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        batch_size: int | None = None,
        character_text: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns context ``[B, N+K+1, C]``, its key mask ``[B, N+K+1]`` (1 = attend) and pooled ``[B, P]`` or None.

        A group given as None, or flagged in its ``drop_*`` bool ``[B]`` tensor, is replaced by its
        null embedding. A shot with no faces (all of ``face_mask`` false) gets the null face.
        ``character_text`` ``[B, K, Dt]``: each cast member's description embedding, added to their face
        slot (projectors built with ``character_text_dim``); it belongs to the face group and drops with it.
        """
        cfg = self.config
        c = cfg.cross_attention_dim
        ref = next(t for t in (tokens, face_embeds, text_embed) if t is not None) if any(
            t is not None for t in (tokens, face_embeds, text_embed)
        ) else None
        b = ref.shape[0] if ref is not None else batch_size
        if b is None:
            raise InputError("ContextProjector needs at least one input group or an explicit batch_size.")
        device, dtype = self.group_embed.device, self.group_embed.dtype

        def drop_flags(flags: torch.Tensor | None, missing: bool) -> torch.Tensor:
            if missing:
                return torch.ones(b, dtype=torch.bool, device=device)
            return torch.zeros(b, dtype=torch.bool, device=device) if flags is None else flags.to(device).bool()

        # tokens: [B, N, C]
        drop = drop_flags(drop_tokens, tokens is None)
        null = self.null_tokens.unsqueeze(0).expand(b, -1, -1)
        token_ctx = null if tokens is None else torch.where(drop[:, None, None], null, self.token_proj(tokens.to(device, dtype)))
        token_ctx = token_ctx + self.token_pos + self.group_embed[GROUP_TOKENS]
        token_mask = torch.ones(b, cfg.num_tokens, dtype=torch.bool, device=device)

        # faces: [B, K, C]; real slots where face_mask, else the null face in slot 0 only
        drop = drop_flags(drop_faces, face_embeds is None)
        if face_embeds is not None:
            k = face_embeds.shape[1]
            if k > cfg.max_faces:
                raise InputError(f"The renderer takes at most {cfg.max_faces} faces per shot, got {k}.")
            mask = torch.ones(b, k, dtype=torch.bool, device=device) if face_mask is None else face_mask.to(device).bool()
            faces = self.face_proj(face_embeds.to(device, dtype))
            if self.character_text_proj is not None and character_text is not None:
                if tuple(character_text.shape[:2]) != (b, k):
                    raise InputError(f"character_text must be [B, {k}, D] like the faces, got {tuple(character_text.shape)}.")
                faces = faces + self.character_text_proj(character_text.to(device, dtype))
            faces = F.pad(faces, (0, 0, 0, cfg.max_faces - k))
            mask = F.pad(mask, (0, cfg.max_faces - k), value=False)
            drop = drop | ~mask.any(dim=1)
            mask = mask & ~drop[:, None]
        else:
            faces = torch.zeros(b, cfg.max_faces, c, device=device, dtype=dtype)
            mask = torch.zeros(b, cfg.max_faces, dtype=torch.bool, device=device)
        null_slot = torch.zeros(b, cfg.max_faces, dtype=torch.bool, device=device)
        null_slot[:, 0] = drop
        faces = torch.where(null_slot[..., None], self.null_face.expand(b, cfg.max_faces, c), faces)
        face_mask_out = mask | null_slot
        face_ctx = faces + self.face_slot + self.group_embed[GROUP_FACES]

        # descriptor: [B, 1, C]
        drop = drop_flags(drop_text, text_embed is None)
        null = self.null_text.expand(b, c)
        text_ctx = null if text_embed is None else torch.where(drop[:, None], null, self.text_proj(text_embed.to(device, dtype)))
        text_ctx = (text_ctx + self.group_embed[GROUP_TEXT]).unsqueeze(1)

        context = self.norm(torch.cat([token_ctx, face_ctx, text_ctx], dim=1))
        mask = torch.cat([token_mask, face_mask_out, torch.ones(b, 1, dtype=torch.bool, device=device)], dim=1)
        pooled = None
        if self.pooled_proj is not None:
            n, k = cfg.num_tokens, cfg.max_faces
            m = mask[:, n : n + k, None].to(dtype)
            if cfg.pooled_faces == "slots":
                face_pooled = (context[:, n : n + k] * m).flatten(1)  # [B, K*C], empty slots zero
            else:
                face_pooled = (context[:, n : n + k] * m).sum(1) / m.sum(1).clamp(min=1)  # [B, C]
            pooled = self.pooled_proj(torch.cat([context[:, :n].flatten(1), face_pooled, context[:, -1]], dim=1))
        return context, mask, pooled


@dataclass
class DecoderOutput:
    """What ``KeyframeDecoder.generate`` returns."""

    images: np.ndarray
    """uint8 ``[B, H, W, 3]`` keyframes."""


def min_snr_weight(snr: torch.Tensor, prediction_type: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) expressed for each prediction target.

    For v-prediction the weight is min(SNR+1, gamma)/(SNR+1): full weight at high noise, where the
    conditioning decides the content. (The min(SNR, gamma)/(SNR+1) form reduces to epsilon loss.)
    """
    if prediction_type == "v_prediction":
        return torch.clamp(snr + 1, max=gamma) / (snr + 1)
    if prediction_type == "epsilon":
        return torch.clamp(snr, max=gamma) / snr.clamp(min=1e-8)
    return torch.clamp(snr, max=gamma)  # "sample" (x0) prediction


def sample_timesteps(batch: int, num_train_timesteps: int, power: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """t = round((T-1) * u**power), u ~ U(0, 1): power < 1 puts more samples at high noise (int64 [batch], CPU)."""
    u = torch.rand(batch, generator=generator)
    return ((num_train_timesteps - 1) * u**power).round().long()


@register_model()
class KeyframeDecoder(nn.Module):
    """Tokens + cast face embeddings + descriptor embedding -> keyframe image.

    Folder layout (``save_pretrained``): ``keyframe_decoder.json``, ``unet/``, ``context/``,
    ``scheduler/`` and, for latent models, ``vae/``, each a diffusers folder.
    """

    #: large sub-models that ``--offload`` moves to the device one at a time (mdream.models.offload)
    offload_units = ("unet", "vae")

    def __init__(
        self,
        unet: UNet2DConditionModel,
        context: ContextProjector,
        scheduler,
        vae: AutoencoderKL | None = None,
        scheduler_name: str = "ddim",
        position_channels: int = 0,
    ):
        super().__init__()
        if position_channels not in POSITION_CHANNEL_CHOICES:
            raise InputError(f"position_channels must be 0 or 2 (x, y), got {position_channels}.")
        if unet.config.in_channels != unet.config.out_channels + position_channels:
            raise InputError(
                f"The UNet takes {unet.config.in_channels} input channels; a {unet.config.out_channels}-channel sample "
                f"plus {position_channels} position channels needs {unet.config.out_channels + position_channels}."
            )
        if unet.config.cross_attention_dim != context.config.cross_attention_dim:
            raise InputError(
                f"Context width {context.config.cross_attention_dim} does not match the UNet's "
                f"cross_attention_dim {unet.config.cross_attention_dim}."
            )
        pooled_needed = self.pooled_dim_for(unet)
        if pooled_needed != context.config.pooled_dim:
            raise InputError(
                f"The UNet expects a {pooled_needed}-d pooled conditioning vector; the context projector gives {context.config.pooled_dim}."
            )
        self.unet = unet
        self.context = context
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        self.scheduler = scheduler
        self.scheduler_name = scheduler_name
        # x, y coordinate maps appended to the UNet input: convolutions and cross-attention queries are otherwise
        # blind to where a pixel is (all they have is the zero padding), so "the face in slot 0 stands on the
        # left" has to be learned through the borders. 0 for pretrained UNets (SDXL), whose input is fixed.
        self.position_channels = position_channels
        # sampling settings this decoder was measured with (SAMPLING_KEYS), kept on save
        self.sampling: dict = {}

    # ---- construction -------------------------------------------------------------------------
    @staticmethod
    def pooled_dim_for(unet: UNet2DConditionModel) -> int | None:
        """The pooled-vector width the UNet's time embedding takes (None when it takes none)."""
        cfg = unet.config
        if cfg.addition_embed_type == "text_time":
            return cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        if cfg.class_embed_type == "projection":
            return cfg.projection_class_embeddings_input_dim
        return None

    @staticmethod
    def make_scheduler(name: str, config) -> object:
        if name not in SCHEDULERS:
            raise InputError(f"Unknown scheduler '{name}'.", hint=f"Choose one of: {', '.join(SCHEDULERS)}.")
        cls, extra = SCHEDULERS[name]
        return cls.from_config(config, **extra)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> KeyframeDecoder:
        folder = Path(folder)
        cfg = read_json(folder / DECODER_CONFIG, "keyframe decoder")
        position_channels = cfg.get("position_channels", 0)
        if isinstance(position_channels, bool) or position_channels not in POSITION_CHANNEL_CHOICES:
            raise CorruptArtifactError(
                f"keyframe decoder: {folder / DECODER_CONFIG} has position_channels {position_channels!r}; "
                f"it must be one of {', '.join(map(str, POSITION_CHANNEL_CHOICES))}."
            )
        sampling = cfg.get("sampling") or {}
        if not isinstance(sampling, dict):
            raise CorruptArtifactError(
                f"keyframe decoder: {folder / DECODER_CONFIG} has sampling {sampling!r}; it must be an object "
                "such as {\"num_inference_steps\": 20, \"guidance_scale\": 1.0}."
            )
        unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
        if unknown:
            raise CorruptArtifactError(
                f"keyframe decoder: {folder / DECODER_CONFIG} has unknown sampling settings {', '.join(unknown)}; "
                f"the sampling block takes {', '.join(SAMPLING_KEYS)}."
            )
        name = cfg.get("scheduler", sampling.get("scheduler", "ddim"))
        if sampling.get("scheduler", name) != name:
            raise CorruptArtifactError(
                f"keyframe decoder: {folder / DECODER_CONFIG} names two samplers (scheduler '{name}', "
                f"sampling.scheduler '{sampling['scheduler']}'); they must agree."
            )
        unet = load_pretrained(UNet2DConditionModel, str(folder / "unet"), "decoder UNet")
        context = load_pretrained(ContextProjector, str(folder / "context"), "decoder context projector")
        vae = load_pretrained(AutoencoderKL, str(folder / "vae"), "decoder VAE") if cfg.get("vae") else None
        scheduler_config = DDIMScheduler.load_config(str(folder / "scheduler"))
        decoder = cls(unet, context, cls.make_scheduler(name, scheduler_config), vae, name,
                      position_channels=int(position_channels))
        decoder.sampling = dict(sampling)
        return decoder

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.unet.save_pretrained(folder / "unet")
        self.context.save_pretrained(folder / "context")
        self.scheduler.save_pretrained(folder / "scheduler")
        if self.vae is not None:
            self.vae.save_pretrained(folder / "vae")
        config = {"_class_name": "KeyframeDecoder", "scheduler": self.scheduler_name, "vae": self.vae is not None}
        if self.position_channels:
            config["position_channels"] = self.position_channels
        if self.sampling:
            config["sampling"] = self.sampling
        write_json(folder / DECODER_CONFIG, config)

    def set_scheduler(self, name: str) -> None:
        """Swap the sampler (``ddim``, ``ddpm``, ``euler``, ``dpmpp``), keeping the noise schedule and target."""
        self.scheduler = self.make_scheduler(name, self.scheduler.config)
        self.scheduler_name = name

    # ---- properties ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return execution_device(self, self.unet.device)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def image_size(self) -> int:
        size = self.unet.config.sample_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        return int(size) * self.vae_scale

    @property
    def num_tokens(self) -> int:
        return self.context.config.num_tokens

    # ---- the UNet call ------------------------------------------------------------------------
    def added_conditions(self, pooled: torch.Tensor | None, batch: int, height: int, width: int) -> dict:
        """Keyword arguments that carry the pooled vector into the UNet's time embedding."""
        cfg = self.unet.config
        if cfg.addition_embed_type == "text_time":
            # SDXL micro-conditioning: (original h, w, crop top, left, target h, w); no crop here.
            time_ids = torch.tensor([height, width, 0, 0, height, width], device=pooled.device, dtype=pooled.dtype)
            return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.expand(batch, 6)}}
        if cfg.class_embed_type == "projection":
            return {"class_labels": pooled}
        return {}

    def predict(
        self, sample: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None, pooled
    ) -> torch.Tensor:
        # sample [B, C, h, w] -> model output (epsilon / v / x0 per the scheduler) [B, C, h, w]; mask None = attend all
        h, w = sample.shape[-2:]
        if self.position_channels:
            sample = torch.cat([sample, self.position_grid(sample)], dim=1)  # [B, C+2, h, w]
        return self.unet(
            sample,
            timesteps,
            encoder_hidden_states=context,
            encoder_attention_mask=None if mask is None else mask.to(context.dtype),
            **self.added_conditions(pooled, sample.shape[0], h * self.vae_scale, w * self.vae_scale),
        ).sample

    @staticmethod
    def position_grid(sample: torch.Tensor) -> torch.Tensor:
        """x and y coordinates in [-1, 1] of every position of ``sample`` [B, C, h, w] -> [B, 2, h, w] (its dtype)."""
        b, _, h, w = sample.shape
        ys = torch.linspace(-1, 1, h, device=sample.device, dtype=sample.dtype)
        xs = torch.linspace(-1, 1, w, device=sample.device, dtype=sample.dtype)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"))  # [2, h, w]: x varies along w, y along h
        return grid.unsqueeze(0).expand(b, -1, -1, -1)

    # ---- training -----------------------------------------------------------------------------
    def images_to_sample(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Float images [-1, 1] ``[B, 3, H, W]`` -> the UNet's sample space (pixels, or scaled VAE latents)."""
        if self.vae is None:
            return images
        with torch.no_grad(), self._vae_upcast():
            latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.sample(generator)
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * self.vae.config.scaling_factor).to(self.vae.dtype)  # fp16 again after an upcast

    def sample_to_images(self, sample: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return sample
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        with self._vae_upcast():
            return self.vae.decode((sample.float() / self.vae.config.scaling_factor + shift).to(self.vae.dtype)).sample

    @contextlib.contextmanager
    def _vae_upcast(self):
        """Run the VAE in fp32 while inside, when it is fp16 and its config asks for it (``force_upcast``).

        SDXL's VAE overflows in fp16 (NaN/black images); diffusers' SDXL pipeline upcasts it the same way.
        """
        upcast = self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        if upcast:
            self.vae.to(torch.float32)
        try:
            yield
        finally:
            if upcast:
                self.vae.to(torch.float16)

    def diffusion_loss(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor | None,
        face_embeds: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
        text_embed: torch.Tensor | None = None,
        drop_probs: tuple[float, float, float] = (0.1, 0.3, 0.3),
        snr_gamma: float | None = 5.0,
        timestep_power: float = 0.5,
        generator: torch.Generator | None = None,
        pixel_weight: torch.Tensor | None = None,
        character_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted denoising loss for a batch of frames given their context (one scalar).

        ``drop_probs``: per-sample probability of nulling the tokens, faces and descriptor groups.
        Timesteps are t = (T-1) * u**timestep_power, u ~ U(0, 1): power 0.5 puts more samples at
        mid/high noise, where the conditioning decides what the frame shows.
        ``pixel_weight`` [B, 1, H, W] (image resolution) weights each pixel's squared error, e.g.
        up on the characters; each frame's loss is the weighted mean, so all-ones is the plain
        loss. Latent decoders get it area-resized to the latent grid.
        """
        x0 = self.images_to_sample(images.to(self.device), generator)
        b, device = x0.shape[0], x0.device
        num_train = self.scheduler.config.num_train_timesteps
        timesteps = sample_timesteps(b, num_train, timestep_power, generator).to(device)
        noise = randn_tensor(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        train_scheduler = DDPMScheduler.from_config(self.scheduler.config)
        noisy = train_scheduler.add_noise(x0, noise, timesteps)
        drops = [torch.rand(b, generator=generator).to(device) < p for p in drop_probs]
        context, mask, pooled = self.context(tokens, face_embeds, face_mask, text_embed, *drops, batch_size=b,
                                             character_text=character_text)
        pred = self.predict(noisy, timesteps, context, mask, pooled).float()
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = train_scheduler.get_velocity(x0, noise, timesteps)
        else:
            target = x0
        squared = F.mse_loss(pred, target.float(), reduction="none")  # [B, C, h, w]
        if pixel_weight is None:
            loss = squared.mean(dim=(1, 2, 3))
        else:
            weight = pixel_weight.to(device, torch.float32)
            if weight.shape[-2:] != squared.shape[-2:]:
                weight = F.interpolate(weight, size=squared.shape[-2:], mode="area")
            loss = (squared * weight).sum(dim=(1, 2, 3)) / (weight.sum(dim=(1, 2, 3)) * squared.shape[1]).clamp_min(1e-8)
        if snr_gamma:
            alphas = train_scheduler.alphas_cumprod.to(device)[timesteps]
            loss = loss * min_snr_weight(alphas / (1 - alphas), self.prediction_type, snr_gamma)
        return loss.mean()

    # ---- sampling -----------------------------------------------------------------------------
    def check_inputs(self, tokens, face_embeds, face_mask, text_embed, num_inference_steps, guidance_scale, batch_size,
                     identity_guidance_scale: float = 0.0) -> int:
        groups = [t for t in (tokens, face_embeds, text_embed) if t is not None]
        if not groups and batch_size is None:
            raise InputError("generate() needs at least one of tokens, face_embeds, text_embed (or batch_size for the null context).")
        b = groups[0].shape[0] if groups else batch_size
        if any(g.shape[0] != b for g in groups):
            raise InputError("tokens, face_embeds and text_embed must have the same batch size.")
        if tokens is not None and tuple(tokens.shape[1:]) != (self.num_tokens, self.context.config.token_dim):
            raise InputError(
                f"Expected tokens of shape [B, {self.num_tokens}, {self.context.config.token_dim}], got {tuple(tokens.shape)}."
            )
        if face_mask is not None and (face_embeds is None or face_mask.shape != face_embeds.shape[:2]):
            raise InputError("face_mask must be [B, K] matching face_embeds [B, K, 512].")
        if num_inference_steps < 1:
            raise InputError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        if guidance_scale < 0 or not math.isfinite(guidance_scale):
            raise InputError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}.")
        if identity_guidance_scale < 0 or not math.isfinite(identity_guidance_scale):
            raise InputError(f"identity_guidance_scale must be a finite number >= 0, got {identity_guidance_scale}.")
        return b

    @torch.no_grad()
    def generate(
        self,
        tokens: torch.Tensor | None,
        face_embeds: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
        text_embed: torch.Tensor | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        scheduler: str | None = None,
        batch_size: int | None = None,
        identity_guidance_scale: float = 0.0,
        character_text: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Render keyframes with classifier-free guidance (Ho & Salimans 2022) and, optionally, identity guidance.

        ``guidance_scale`` contrasts the full context with the all-null one (1.0 = no CFG).
        ``identity_guidance_scale`` adds a second direction, the full context against the same context
        with the face group nulled, as in multi-condition guidance (InstructPix2Pix, Brooks et al. 2023):

            out = uncond + guidance * (full - uncond) + identity_guidance * (full - no_faces)

        It costs one more UNet branch per step and does nothing without face embeddings (0 = off).
        Any group left as None is replaced by its null embedding; with all three None, ``batch_size``
        unconditional samples are drawn. ``character_text`` [B, K, Dt]: the cast's description embeddings, for
        decoders trained with them (they go with the face group). The initial noise is drawn on ``generator``'s device (CPU by default) and moved, so the same
        seed gives identical pixels on the same device and dtype.
        """
        b = self.check_inputs(tokens, face_embeds, face_mask, text_embed, num_inference_steps, guidance_scale, batch_size,
                              identity_guidance_scale)
        sched = self.make_scheduler(scheduler, self.scheduler.config) if scheduler else self.make_scheduler(
            self.scheduler_name, self.scheduler.config
        )
        sched.set_timesteps(num_inference_steps, device=self.device)
        # context branches, each [B, ...], run as one batch of len(branches) * B
        branches = {}
        if guidance_scale != 1.0:
            branches["null"] = self.context(None, None, None, None, batch_size=b)
        branches["full"] = self.context(tokens, face_embeds, face_mask, text_embed, batch_size=b, character_text=character_text)
        if identity_guidance_scale != 0.0 and face_embeds is not None:
            branches["no_faces"] = self.context(tokens, None, None, text_embed, batch_size=b)
        context = torch.cat([c for c, _, _ in branches.values()])
        mask = torch.cat([m for _, m, _ in branches.values()])
        # A key mask with nothing masked changes no output, only adds work: diffusers repeats it per head in every
        # cross-attention layer. (On an H200 the wall-time effect was within run-to-run noise: benchmarks/RESULTS.md.)
        mask = None if bool(mask.all()) else mask
        pooled = torch.cat([p for _, _, p in branches.values()]) if branches["full"][2] is not None else None
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        dtype = self.unet.dtype
        sample = randn_tensor((b, self.unet.config.out_channels, h, w), generator=generator, device=self.device, dtype=dtype)
        sample = sample * sched.init_noise_sigma
        context = context.to(dtype)
        pooled = pooled.to(dtype) if pooled is not None else None
        for t in sched.timesteps:
            model_in = sched.scale_model_input(torch.cat([sample] * len(branches)), t)
            pred = self.predict(model_in, t.expand(model_in.shape[0]).to(self.device), context, mask, pooled)
            outs = dict(zip(branches, pred.chunk(len(branches)), strict=True))
            out = outs["full"]
            if "null" in outs:
                out = outs["null"] + guidance_scale * (outs["full"] - outs["null"])
            if "no_faces" in outs:
                out = out + identity_guidance_scale * (outs["full"] - outs["no_faces"])
            sample = sched.step(out, t, sample, generator=generator).prev_sample
        images = self.sample_to_images(sample).float()
        images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return DecoderOutput(images=images.permute(0, 2, 3, 1).cpu().numpy())
