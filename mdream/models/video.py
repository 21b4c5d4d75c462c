"""The image-to-video model: a keyframe (and the shot's action) -> a clip, extended clip by clip.

Built from Stable Video Diffusion's parts (diffusers): a :class:`~diffusers.UNetSpatioTemporalConditionModel`
denoises a clip conditioned on

* the *conditioning frame*, concatenated to every frame's input channels (SVD: its VAE latents, noise-augmented);
* the cross-attention image embedding of the *anchor* frame (:class:`~transformers.CLIPVisionModelWithProjection`);
* SVD's added time ids (fps, motion bucket, noise augmentation);
* the shot's action: a multi-hot of (position, action) per cast member and the camera, projected by a small
  :class:`ActionEncoder` into one more cross-attention token (absent in a plain SVD folder: then exactly SVD).

Sampling is EDM's deterministic Euler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Alg. 1 with the first-order step; k-diffusion's ``sample_euler``) over the sigmas of SVD's
:class:`~diffusers.EulerDiscreteScheduler` (Karras sigmas, v-prediction, ``c_noise = 0.25 log sigma``).

Two sizes, one code path (:meth:`ImageToVideoModel.from_pretrained`):

* toy: ``pixel_space: true`` in ``video.json``: no VAE, the UNet draws 32x32 RGB frames in [-1, 1] directly;
* full: an SVD / SVD-XT folder in diffusers layout (``unet/``, ``vae/`` with ``AutoencoderKLTemporalDecoder``,
  ``image_encoder/``, ``scheduler/``), with or without a ``video.json``; the bundle names the class
  (``class: ImageToVideoModel``) when the folder has none.

Extension (:class:`ImageToVideoPipeline`): a shot longer than one clip is drawn clip by clip; clip ``i+1`` is
conditioned on clip ``i``'s last frame, while cross-attention sees the first frame's embedding
(``anchor="first"``, the default: the shot cannot drift away from its keyframe) or the previous clip's last
frame (``anchor="last"``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import ConfigMixin, EulerDiscreteScheduler, ModelMixin, UNetSpatioTemporalConditionModel
from diffusers.configuration_utils import register_to_config
from torch import nn

from mdream.errors import InputError
from mdream.models.loading import load_pretrained, read_json, write_json
from mdream.models.offload import execution_device
from mdream.models.registry import register_model

CONFIG_NAME = "video.json"
ANCHORS = ("first", "last")
PREDICTIONS = ("v", "x0")
"""What the UNet may predict (VideoModelConfig.prediction)."""
ANCHOR_TOKENS = ("pooled", "patches")
"""What of the anchor frame the cross-attention sees (VideoModelConfig.anchor_tokens)."""
#: CLIP's image normalisation (SVD's feature extractor)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VideoModelConfig:
    """How an :class:`ImageToVideoModel` draws clips (saved as ``video.json`` beside its parts)."""

    pixel_space: bool = False
    """True: no VAE, the UNet denoises RGB pixels in [-1, 1] (toy size); False: SVD's VAE latents."""
    patch_size: int = 1
    """In pixel space: each patch_size x patch_size block of pixels folded into channels (pixel_unshuffle), so
    the UNet sees [3 * patch_size**2, H / patch_size, W / patch_size]; a lossless, cheap stand-in for a VAE."""
    height: int = 576
    """Frame height the model draws (pixels)."""
    width: int = 1024
    """Frame width the model draws (pixels)."""
    num_frames: int = 14
    """Frames per clip it was trained on (the default clip length)."""
    fps: int = 7
    """The fps added time id (SVD conditions on fps - 1)."""
    motion_bucket_id: int = 127
    """SVD's motion bucket added time id (more: more motion)."""
    shot_paced_motion: bool = False
    """True: a motion spans its whole shot (the toy world's: a walker crosses the same distance in a 2-second shot as in
    a 10-second one), so a clip's speed depends on the shot's length, and the motion bucket says it: a shot of
    ``num_frames`` frames (one clip) gets ``motion_bucket_id``, one of F frames ``motion_bucket_id * (num_frames - 1)
    / (F - 1)`` (at least 1): slower for longer shots. False: ``motion_bucket_id`` for every shot (SVD)."""
    noise_aug_strength: float = 0.02
    """Noise added to the conditioning frame (and its added time id)."""
    num_inference_steps: int = 25
    """Euler steps per clip."""
    min_guidance_scale: float = 1.0
    """Classifier-free guidance on the first frame (1 = none); rises linearly to max_guidance_scale."""
    max_guidance_scale: float = 3.0
    """Classifier-free guidance on the last frame."""
    vae_scaling_factor: float = 0.18215
    """Scale of the VAE latents the UNet denoises (ignored in pixel space)."""
    decode_chunk_size: int = 8
    """Frames decoded by the temporal VAE at once."""
    sigma_data: float = 1.0
    """The data's standard deviation in EDM's preconditioning (SVD: 1)."""
    prediction: str = "v"
    """What the UNet predicts: ``v`` (SVD's v-prediction) or ``x0`` (the denoised clip itself: c_skip = 0, c_out = 1,
    so nothing of the input noise has to pass through the network)."""
    residual: bool = False
    """True: the UNet denoises the clip minus its clean conditioning frame (residual video diffusion, Yang et al.
    2022, "Diffusion Probabilistic Modeling for Video Generation"), so a clip that holds the keyframe still is the
    zero residual and the model only draws what moves; False: the clip itself (SVD)."""
    anchor_tokens: str = "pooled"
    """What of the anchor frame the cross-attention sees: ``pooled``, SVD's one CLIP image embedding (global: colour,
    who, where only as a summary), or ``patches``, every token of the vision tower's last layer through its final
    layer norm and projection (the pooled embedding first, then one token per image patch), so the anchor also says
    what stood where."""
    colour_coherence: float = 0.0
    """How far each continuing clip's conditioning frame is pulled to the anchor frame's colour statistics (per-channel
    mean and std; 0: not at all, 1: matched), so that colours cannot drift clip after clip. With ``anchor="last"``
    the anchor is that frame itself, so nothing changes."""
    action_guidance_scale: float = 1.0
    """Classifier-free guidance on the action (1 = none): each denoised estimate is pushed away from the same shot
    with its cast standing still (:func:`still_actions`), ``D_still + s (D - D_still)``, so scripted motion is drawn
    more strongly; a shot without actions is unchanged."""
    action_vocab: list[str] = field(default_factory=lambda: ["stand", "walk", "wave", "jump", "sit"])
    """Actions the action encoder knows; a cast member's action text matches one when a word starts with it. The first
    is the still one (what :func:`still_actions` sets)."""
    action_slots: list[str] = field(default_factory=lambda: ["left", "center", "right"])
    """Positions of the cast, one block of the action multi-hot each (unpositioned members fill free slots)."""
    cameras: list[str] = field(default_factory=lambda: ["wide", "medium", "close-up"])
    """Camera framings, one-hot at the end of the action multi-hot."""
    action_map: bool = False
    """True: the action is also given where it happens: one channel per action of ``action_vocab``, each slot's
    one-hot painted over its share of the frame's width (left, centre, right thirds), concatenated with the
    conditioning latents (the UNet's ``in_channels`` count them), so the UNet sees at each place what moves there
    and not only, through the cross-attention's action token, what moves somewhere. False: SVD's inputs."""
    heading_map: bool = False
    """True: one more UNet input channel (after the action map's) says which way each travelling cast member goes:
    ``slot_headings`` of its slot (+1 rightwards, -1 leftwards) painted over its share of the frame's width where its
    action is one of ``travelling_actions``, 0 elsewhere. Without it a walker's direction must be guessed from where
    it stands, and a model unsure of the direction draws the average of both: a figure walking in place."""
    travelling_actions: list[str] = field(default_factory=lambda: ["walk"])
    """Actions of ``action_vocab`` that carry a figure across the frame (what ``heading_map`` paints)."""
    slot_headings: list[float] = field(default_factory=lambda: [1.0, 1.0, -1.0])
    """The horizontal direction a travelling member of each slot of ``action_slots`` goes (+1 right, -1 left); the
    toy world's walkers on the left and in the centre go right, those on the right go left."""

    @property
    def action_dim(self) -> int:
        return len(self.action_slots) * len(self.action_vocab) + len(self.cameras)

    @property
    def action_map_channels(self) -> int:
        """Channels the action and heading maps add to the UNet's input (0 without ``action_map`` and
        ``heading_map``)."""
        return (len(self.action_vocab) if self.action_map else 0) + (1 if self.heading_map else 0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def action_vector(config: VideoModelConfig, cast: Sequence[tuple[str | None, str | None]], camera: str | None) -> torch.Tensor:
    """The shot's action as a multi-hot float32 [action_dim]: per slot, the action of the member standing there;
    then the camera. ``cast``: (position, action text) per member; unknown words count as no action."""
    vocab, slots = config.action_vocab, config.action_slots
    vec = torch.zeros(config.action_dim)
    free = list(range(len(slots)))
    placed: list[tuple[int, str | None]] = []
    loose = []
    for position, action in cast:
        if position in slots and slots.index(position) in free:
            free.remove(slots.index(position))
            placed.append((slots.index(position), action))
        else:
            loose.append(action)
    placed += list(zip(free, loose, strict=False))  # members beyond the slots are left out
    for slot, action in placed:
        words = (action or "").lower().replace("-", " ").split()
        for a, name in enumerate(vocab):
            if any(w.startswith(name) for w in words):
                vec[slot * len(vocab) + a] = 1.0
                break
    if camera in config.cameras:
        vec[len(slots) * len(vocab) + config.cameras.index(camera)] = 1.0
    return vec


def slot_actions(config: VideoModelConfig, actions: torch.Tensor) -> torch.Tensor:
    """The per-slot part of action multi-hots [B, A] as [B, S, V] (slot, then action of the vocabulary); the camera
    one-hot that follows it is left out."""
    n_slots, n_vocab = len(config.action_slots), len(config.action_vocab)
    return actions[:, : n_slots * n_vocab].reshape(-1, n_slots, n_vocab)


def slot_of_column(n_slots: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The slot (0 .. n_slots - 1, left to right) whose share of the frame's width each of ``width`` columns is in:
    slot k owns columns [k W / S, (k + 1) W / S). Long [W]."""
    return (torch.arange(width, device=device) * n_slots) // width


def paint_slots(values: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-slot values [B, S, C] painted over each slot's share of the frame (:func:`slot_of_column`)
    [B, C, height, width]."""
    maps = values[:, slot_of_column(values.shape[1], width, values.device), :].permute(0, 2, 1)  # [B, C, W]
    return maps.unsqueeze(2).expand(-1, -1, height, -1)  # [B, C, H, W]


def action_map(config: VideoModelConfig, actions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The action multi-hots [B, A] painted where they happen [B, V, height, width]: slot k's one-hot over the
    vocabulary fills slot k's share of the width (:func:`paint_slots`); the camera is not painted."""
    return paint_slots(slot_actions(config, actions), height, width)  # [B, V, H, W]


def heading_map(config: VideoModelConfig, actions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Which way the travelling members of action multi-hots [B, A] go, painted where they stand [B, 1, height,
    width]: slot k's ``slot_headings[k]`` over its share of the width (:func:`paint_slots`) when its action is one
    of ``travelling_actions``, else 0."""
    slots = slot_actions(config, actions)  # [B, S, V]
    travelling = [config.action_vocab.index(a) for a in config.travelling_actions if a in config.action_vocab]
    headings = torch.tensor(config.slot_headings, device=actions.device, dtype=actions.dtype)  # [S]
    per_slot = slots[..., travelling].sum(dim=-1).clamp(max=1) * headings  # [B, S]
    return paint_slots(per_slot.unsqueeze(-1), height, width)  # [B, 1, H, W]


def still_actions(config: VideoModelConfig, actions: torch.Tensor) -> torch.Tensor:
    """The same shots with every cast member standing still: action multi-hots [B, A] whose occupied slots hold the
    first action of the vocabulary (``stand``); the camera is kept. The negative of action guidance."""
    slots = slot_actions(config, actions)  # [B, S, V]
    still = torch.zeros_like(slots)
    still[..., 0] = (slots.sum(dim=-1) > 0).to(actions.dtype)
    return torch.cat([still.flatten(1), actions[:, slots.shape[1] * slots.shape[2]:]], dim=1)  # [B, A]


class ActionEncoder(ModelMixin, ConfigMixin):
    """The action multi-hot [B, A] -> ``num_tokens`` cross-attention tokens [B, n, D]."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, action_dim: int = 18, hidden_dim: int = 128, cross_attention_dim: int = 1024, num_tokens: int = 1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(action_dim, hidden_dim), nn.SiLU(),
                                 nn.Linear(hidden_dim, num_tokens * cross_attention_dim))

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        b = actions.shape[0]
        return self.net(actions).view(b, self.config.num_tokens, self.config.cross_attention_dim)  # [B, n, D]


def match_colour(frames: torch.Tensor, reference: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Pull frames [B, 3, H, W] towards the per-channel mean and std of ``reference`` [B, 3, H, W] (both in [-1, 1]):
    ``strength`` 1 matches them (Reinhard et al. 2001, "Color Transfer between Images", here in RGB), 0 is the
    identity."""
    mean, std = frames.mean(dim=(2, 3), keepdim=True), frames.std(dim=(2, 3), keepdim=True)  # [B, 3, 1, 1]
    ref_mean, ref_std = reference.mean(dim=(2, 3), keepdim=True), reference.std(dim=(2, 3), keepdim=True)
    matched = (frames - mean) / std.clamp_min(1e-3) * ref_std + ref_mean
    return (frames + strength * (matched - frames)).clamp(-1, 1)


def sample_euler(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                 sigmas: torch.Tensor) -> torch.Tensor:
    """Deterministic Euler sampling of the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma``.

    Karras et al. 2022 (EDM), Alg. 1 without the Heun correction; k-diffusion's ``sample_euler`` with
    ``s_churn = 0``. ``x``: noise already scaled by ``sigmas[0]``; ``sigmas``: decreasing, ending at 0;
    ``denoiser(x, sigma)`` -> the denoised estimate of ``x``. Pure: no state but its arguments.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        d = (x - denoised) / sigma  # the ODE's derivative
        x = x + d * (sigma_next - sigma)
    return x


@register_model("ImageToVideoModel")
class ImageToVideoModel(nn.Module):
    """SVD-class image-to-video model: UNet, image encoder, scheduler, optional VAE and action encoder."""

    #: large sub-models that ``--offload`` moves to the device one at a time (mdream.models.offload)
    offload_units = ("image_encoder", "unet", "vae")

    def __init__(self, config: VideoModelConfig, unet: UNetSpatioTemporalConditionModel, image_encoder,
                 scheduler: EulerDiscreteScheduler, vae=None, action_encoder: ActionEncoder | None = None):
        super().__init__()
        if not config.pixel_space and vae is None:
            raise InputError("The video model works in VAE latents (pixel_space: false) but has no VAE.",
                             hint="add a vae/ folder (AutoencoderKLTemporalDecoder) or set pixel_space: true")
        if config.prediction not in PREDICTIONS:
            raise InputError(f"The video model's prediction must be one of {', '.join(PREDICTIONS)}, got "
                             f"{config.prediction!r}.", hint="fix `prediction` in its video.json")
        if config.anchor_tokens not in ANCHOR_TOKENS:
            raise InputError(f"The video model's anchor_tokens must be one of {', '.join(ANCHOR_TOKENS)}, got "
                             f"{config.anchor_tokens!r}.", hint="fix `anchor_tokens` in its video.json")
        expected = 2 * unet.config.out_channels + config.action_map_channels
        if unet.config.in_channels != expected:
            raise InputError(f"The video UNet takes {unet.config.in_channels} input channels, but its config asks for "
                             f"{expected} (the clip, the conditioning frame" + (", the action map" if config.action_map
                                                                              else "")
                             + (", the heading map" if config.heading_map else "") + ").",
                             hint="set `action_map` and `heading_map` in its video.json to how the UNet was trained")
        if len(config.slot_headings) != len(config.action_slots):
            raise InputError(f"The video model has {len(config.action_slots)} action slots but "
                             f"{len(config.slot_headings)} slot headings.",
                             hint="give `slot_headings` one direction (+1 or -1) per slot of `action_slots`")
        self.config, self.unet, self.image_encoder, self.vae = config, unet, image_encoder, vae
        self.action_encoder = action_encoder
        self.scheduler = scheduler

    @property
    def device(self) -> torch.device:
        return execution_device(self, next(self.unet.parameters()).device)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # ---- save / load -----------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / CONFIG_NAME, {"_class_name": "ImageToVideoModel", **self.config.to_dict()})
        self.unet.save_pretrained(folder / "unet")
        self.image_encoder.save_pretrained(folder / "image_encoder")
        self.scheduler.save_pretrained(folder / "scheduler")
        if self.vae is not None:
            self.vae.save_pretrained(folder / "vae")
        if self.action_encoder is not None:
            self.action_encoder.save_pretrained(folder / "action_encoder")

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None) -> ImageToVideoModel:
        """Load a folder written by :meth:`save_pretrained`, or an SVD / SVD-XT folder in diffusers layout."""
        from diffusers import AutoencoderKLTemporalDecoder
        from transformers import CLIPVisionModelWithProjection

        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"The video model folder {folder} does not exist.",
                             hint="train one with `mdream train video`, or download an SVD folder (diffusers layout)")
        if (folder / CONFIG_NAME).is_file():
            config = VideoModelConfig.from_dict(read_json(folder / CONFIG_NAME, "video model"))
        elif (folder / "model_index.json").is_file():  # a plain SVD pipeline folder: SVD's own defaults
            config = VideoModelConfig()
        else:
            raise InputError(f"{folder} is not a video model folder (no {CONFIG_NAME}, no model_index.json).",
                             hint="point at a folder written by `mdream train video` or an SVD folder in diffusers layout")
        kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        unet = load_pretrained(UNetSpatioTemporalConditionModel, str(folder / "unet"), "video UNet", **kwargs)
        image_encoder = load_pretrained(CLIPVisionModelWithProjection, str(folder / "image_encoder"),
                                        "video image encoder", **kwargs)
        scheduler = load_pretrained(EulerDiscreteScheduler, str(folder / "scheduler"), "video scheduler")
        vae = None
        if not config.pixel_space:
            vae = load_pretrained(AutoencoderKLTemporalDecoder, str(folder / "vae"), "video VAE", **kwargs)
            config.vae_scaling_factor = float(vae.config.scaling_factor)
        action_encoder = None
        if (folder / "action_encoder").is_dir():
            action_encoder = load_pretrained(ActionEncoder, str(folder / "action_encoder"), "video action encoder", **kwargs)
        model = cls(config, unet, image_encoder, scheduler, vae, action_encoder)
        return model.eval()

    def optimize(self, channels_last: bool = True, compile_unet: bool = False) -> ImageToVideoModel:
        """Inference speed-ups that leave what is computed unchanged: the UNet's and VAE's weights in channels-last
        memory format (their convolutions then run on NHWC kernels, the faster layout for fp16 tensor cores), and
        ``torch.compile`` of the UNet in place (inductor's default mode; the first clip pays the compilation).
        Returns the model."""
        if channels_last:
            for part in (self.unet, self.vae):
                for module in part.modules() if part is not None else ():
                    if isinstance(module, nn.Conv2d):  # the temporal VAE's Conv3d weights have no channels-last form
                        module.to(memory_format=torch.channels_last)
        if compile_unet:
            self.unet.compile()
        return self

    # ---- the parts SVD's pipeline calls ----------------------------------------------------------
    def encode_image(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames in [-1, 1] [B, 3, H, W] -> the anchor's cross-attention tokens (resized to the encoder's size):
        CLIP's image embedding [B, 1, D], or with ``anchor_tokens: patches`` [B, 1 + P, D] (P image patches)."""
        size = self.image_encoder.config.image_size
        x = (frames.float() + 1) / 2
        if x.shape[-2:] != (size, size):
            x = nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.image_encoder.dtype)
        out = self.image_encoder(pixel_values=x)
        if self.config.anchor_tokens == "pooled":
            return out.image_embeds.unsqueeze(1)  # [B, 1, D]
        # the pooled embedding is the class token through these two; the patch tokens go the same way
        hidden = self.image_encoder.vision_model.post_layernorm(out.last_hidden_state)  # [B, 1 + P, W]
        return self.image_encoder.visual_projection(hidden)  # [B, 1 + P, D]

    def encode_actions(self, actions: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """Action multi-hots [B, A] -> tokens [B, n, D]; None when the model has no action encoder."""
        if self.action_encoder is None:
            return None
        if actions is None:
            actions = torch.zeros(batch, self.config.action_dim)
        return self.action_encoder(actions.to(self.device, self.action_encoder.dtype))

    def to_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """Conditioning frames in [-1, 1] [B, 3, H, W] -> what the UNet concatenates [B, C, h, w] (SVD: the
        VAE's mode, unscaled)."""
        if self.vae is None:
            return nn.functional.pixel_unshuffle(frames, self.config.patch_size)
        return self.vae.encode(frames.to(self.vae.dtype)).latent_dist.mode()

    def conditioning(self, latents: torch.Tensor, actions: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        """What the UNet concatenates with the noisy clip [B, T, C (+ V + 1), h, w]: the conditioning latents
        [B, C, h, w] repeated over the clip, followed, with ``action_map``, by the actions [B, A] painted where they
        happen and, with ``heading_map``, by the travelling members' headings (no actions: zeros)."""
        b, _, h, w = latents.shape
        parts = [latents]
        if self.config.action_map_channels:
            if actions is None:
                actions = torch.zeros(b, self.config.action_dim, device=latents.device)
            actions = actions.to(latents.device, latents.dtype)
            if self.config.action_map:
                parts.append(action_map(self.config, actions, h, w))
            if self.config.heading_map:
                parts.append(heading_map(self.config, actions, h, w))
        return torch.cat(parts, dim=1).unsqueeze(1).expand(-1, num_frames, -1, -1, -1)  # [B, T, C (+ V + 1), h, w]

    def clip_latents(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames in [-1, 1] [N, 3, H, W] -> what the UNet denoises [N, C, h, w] (SVD: the VAE's mode, scaled)."""
        latents = self.to_latents(frames)
        return latents if self.vae is None else latents * self.config.vae_scaling_factor

    def residual_base(self, frames: torch.Tensor, num_frames: int) -> torch.Tensor | None:
        """With ``residual``: the clean conditioning frames [B, 3, H, W] as denoised latents repeated over the clip
        [B, T, C, h, w], added to the sampled residual; None otherwise."""
        if not self.config.residual:
            return None
        return self.clip_latents(frames).float().unsqueeze(1).repeat(1, num_frames, 1, 1, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Denoised clip [B, T, C, h, w] -> frames in [-1, 1] [B, T, 3, H, W]."""
        b, t = latents.shape[:2]
        if self.vae is None:
            flat = nn.functional.pixel_shuffle(latents.flatten(0, 1), self.config.patch_size)
            return flat.view(b, t, *flat.shape[1:]).clamp(-1, 1)
        flat = latents.flatten(0, 1) / self.config.vae_scaling_factor
        chunks = []
        for i in range(0, flat.shape[0], self.config.decode_chunk_size):
            part = flat[i: i + self.config.decode_chunk_size]
            chunks.append(self.vae.decode(part.to(self.vae.dtype), num_frames=part.shape[0]).sample)
        return torch.cat(chunks).view(b, t, *chunks[0].shape[1:]).float().clamp(-1, 1)

    def motion_bucket(self, shot_frames: torch.Tensor | int | None) -> torch.Tensor:
        """The motion bucket of shots of ``shot_frames`` frames (an int or [B]; None: one clip's worth): see
        ``shot_paced_motion``. Float [B] (or a scalar)."""
        c = self.config
        bucket = torch.as_tensor(float(c.motion_bucket_id))
        if not c.shot_paced_motion or shot_frames is None:
            return bucket
        frames = torch.as_tensor(shot_frames, dtype=torch.float32).clamp(min=2)
        return (bucket * (c.num_frames - 1) / (frames - 1)).round().clamp(min=1)

    def added_time_ids(self, batch: int, fps: int | None = None,
                       shot_frames: torch.Tensor | int | None = None) -> torch.Tensor:
        """SVD's added time ids [B, 3]: fps - 1, motion bucket (of shots of ``shot_frames`` frames, int or [B]),
        noise augmentation."""
        c = self.config
        bucket = self.motion_bucket(shot_frames).expand(batch)  # [B]
        ids = torch.tensor([(fps or c.fps) - 1, 0.0, c.noise_aug_strength]).repeat(batch, 1)  # [B, 3]
        ids[:, 1] = bucket
        return ids.to(self.device, self.dtype)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, context: torch.Tensor,
                time_ids: torch.Tensor) -> torch.Tensor:
        """EDM-preconditioned denoiser D(x; sigma) (SVD: v-prediction, sigma_data 1; or x0-prediction).

        x: noisy clip [B, T, C, h, w]; sigma: scalar or [B]; cond: conditioning latents [B, T, C, h, w];
        context: cross-attention tokens [B, L, D]; time_ids: [B, 3]. Returns the denoised clip [B, T, C, h, w].
        """
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        s = sigma.view(-1, 1, 1, 1, 1)
        sd = self.config.sigma_data
        c_in, c_skip, c_out = 1 / (s**2 + sd**2).sqrt(), sd**2 / (s**2 + sd**2), -s * sd / (s**2 + sd**2).sqrt()
        if self.config.prediction == "x0":
            c_skip, c_out = torch.zeros_like(s), torch.ones_like(s)
        c_noise = 0.25 * sigma.log()  # [B]
        inp = torch.cat([c_in * x, cond], dim=2).to(self.dtype)
        v = self.unet(inp, c_noise.to(self.dtype), encoder_hidden_states=context.to(self.dtype),
                      added_time_ids=time_ids.to(self.dtype)).sample.float()
        return c_skip * x + c_out * v


@dataclass
class VideoPipelineOutput:
    """What :class:`ImageToVideoPipeline` drew."""

    frames: np.ndarray
    """uint8 [B, T, H, W, 3]: the clips stitched together (each continuing clip without its first frame)."""
    clip_conditions: list[torch.Tensor]
    """Per clip, the conditioning frame it started from: float [B, 3, H, W] in [-1, 1]."""
    anchor_embeds: list[torch.Tensor]
    """Per clip, the cross-attention image embedding it used: [B, 1, D]."""


class ImageToVideoPipeline:
    """Keyframe (+ action) -> ``num_frames`` frames, drawn clip by clip (see the module docstring)."""

    def __init__(self, model: ImageToVideoModel):
        self.model = model

    def check_inputs(self, image: torch.Tensor, num_frames: int, clip_length: int, anchor: str,
                     actions: torch.Tensor | None, num_inference_steps: int, colour_coherence: float = 0.0,
                     action_guidance_scale: float = 1.0) -> None:
        c = self.model.config
        if action_guidance_scale < 1:
            raise InputError(f"action_guidance_scale must be >= 1 (1: no action guidance), got {action_guidance_scale}.")
        if not 0 <= colour_coherence <= 1:
            raise InputError(f"colour_coherence must be in [0, 1], got {colour_coherence}.")
        if image.ndim != 4 or image.shape[1] != 3:
            raise InputError(f"The keyframe batch must be [B, 3, H, W], got {tuple(image.shape)}.")
        if tuple(image.shape[-2:]) != (c.height, c.width):
            raise InputError(f"The keyframe is {image.shape[-1]}x{image.shape[-2]}, but the video model draws "
                             f"{c.width}x{c.height}.", hint="resize the keyframe to the model's size first")
        if num_frames < 1:
            raise InputError(f"num_frames must be >= 1, got {num_frames}.")
        if clip_length < 2:
            raise InputError(f"clip_length must be >= 2 (each clip adds clip_length - 1 frames), got {clip_length}.")
        if anchor not in ANCHORS:
            raise InputError(f"anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}.")
        if actions is not None and tuple(actions.shape) != (image.shape[0], c.action_dim):
            raise InputError(f"actions must be [B, {c.action_dim}], got {tuple(actions.shape)}.")
        if num_inference_steps < 1:
            raise InputError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")

    @staticmethod
    def prepare_image(image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] (or [H, W, 3]) -> float [B, 3, H, W] in [-1, 1]; a float tensor passes through."""
        if isinstance(image, torch.Tensor) and image.is_floating_point():
            return image
        arr = torch.from_numpy(np.array(image, dtype=np.uint8))
        if arr.ndim == 3:
            arr = arr[None]
        return arr.permute(0, 3, 1, 2).float() / 127.5 - 1

    @torch.no_grad()
    def __call__(self, image: np.ndarray | torch.Tensor, num_frames: int, actions: torch.Tensor | None = None,
                 clip_length: int | None = None, anchor: str = "first", num_inference_steps: int | None = None,
                 min_guidance_scale: float | None = None, max_guidance_scale: float | None = None,
                 colour_coherence: float | None = None, action_guidance_scale: float | None = None,
                 fps: int | None = None, generator: torch.Generator | None = None) -> VideoPipelineOutput:
        model, c = self.model, self.model.config
        clip_length = clip_length or c.num_frames
        steps = num_inference_steps or c.num_inference_steps
        lo = c.min_guidance_scale if min_guidance_scale is None else min_guidance_scale
        hi = c.max_guidance_scale if max_guidance_scale is None else max_guidance_scale
        coherence = c.colour_coherence if colour_coherence is None else colour_coherence
        action_scale = c.action_guidance_scale if action_guidance_scale is None else action_guidance_scale
        # 1. check inputs
        image = self.prepare_image(image).to(model.device)
        self.check_inputs(image, num_frames, clip_length, anchor, actions, steps, coherence, action_scale)
        b = image.shape[0]
        # 2. encode the anchor (the first frame) and the action: the cross-attention context
        first_embeds = model.encode_image(image)  # [B, 1, D]
        action_tokens = model.encode_actions(actions, b)  # [B, n, D] or None
        still_tokens = still_multi_hot = None  # the negative of action guidance: the same shot, its cast standing still
        if action_scale > 1 and action_tokens is not None and actions is not None:
            still_multi_hot = still_actions(c, actions.to(model.device))  # [B, A]
            if not torch.equal(still_multi_hot, actions.to(model.device)):  # a still cast: nothing to push from
                still_tokens = model.encode_actions(still_multi_hot, b)  # [B, n, D]
        time_ids = model.added_time_ids(b, fps, shot_frames=num_frames)  # [B, 3]: the shot's length paces it
        # 3. the sigmas (SVD's Euler scheduler: Karras spacing)
        model.scheduler.set_timesteps(steps, device="cpu")
        sigmas = model.scheduler.sigmas.float().to(model.device)  # [steps + 1], ending at 0
        guided = max(lo, hi) > 1
        scale = torch.linspace(lo, hi, clip_length, device=model.device).view(1, clip_length, 1, 1, 1)
        # 4. clip by clip: each continuing clip adds clip_length - 1 frames after its conditioning frame
        n_clips = 1 + max(0, math.ceil((num_frames - clip_length) / (clip_length - 1)))
        frames, conditions, anchors = [], [], []
        cond_frame, anchor_embeds = image, first_embeds
        for i in range(n_clips):
            if i > 0 and anchor == "last":
                anchor_embeds = model.encode_image(cond_frame)
            elif i > 0 and coherence > 0:  # the anchor's colours (anchor="last": the frame's own)
                cond_frame = match_colour(cond_frame, image, coherence)
            conditions.append(cond_frame)
            anchors.append(anchor_embeds)
            noise_aug = torch.randn(cond_frame.shape, generator=generator).to(model.device)
            latents = model.to_latents(cond_frame + c.noise_aug_strength * noise_aug).float()  # [B, C, h, w]
            cond = model.conditioning(latents, actions, clip_length)  # [B, T, C (+ V), h, w]
            context = anchor_embeds if action_tokens is None else torch.cat([anchor_embeds, action_tokens], dim=1)
            still = None if still_tokens is None else torch.cat([anchor_embeds, still_tokens], dim=1)
            still_cond = None if still is None else model.conditioning(latents, still_multi_hot, clip_length)
            if guided:  # SVD's unconditional branch: zero image embedding and zero conditioning latents
                cond = torch.cat([torch.zeros_like(cond), cond])
                context = torch.cat([torch.zeros_like(context), context])
            shape = (b, clip_length, *latents.shape[1:])
            x = torch.randn(shape, generator=generator).to(model.device) * sigmas[0]

            action_guided = still is not None
            if action_guided:  # still-cast branch(es) after the others: [(uncond,) full, (uncond-still,) still]
                still = torch.cat([torch.zeros_like(still), still]) if guided else still
                still_cond = torch.cat([torch.zeros_like(still_cond), still_cond]) if guided else still_cond
                cond, context = torch.cat([cond, still_cond]), torch.cat([context, still])
            n = (2 if guided else 1) * (2 if action_guided else 1)  # branches in one batch

            def denoiser(x, sigma, cond=cond, context=context, n=n, ids=time_ids.repeat(n, 1), action_guided=action_guided):
                out = model.denoise(torch.cat([x] * n), sigma, cond, context, ids).chunk(n)
                full = out[1] if guided else out[0]
                if action_guided:  # action guidance (on each branch), then the image guidance
                    full = out[-1] + action_scale * (full - out[-1])
                if not guided:
                    return full
                uncond = out[2] + action_scale * (out[0] - out[2]) if action_guided else out[0]
                return uncond + scale * (full - uncond)

            latents = sample_euler(denoiser, x, sigmas)  # [B, T, C, h, w]
            base = model.residual_base(cond_frame, clip_length)
            clip = model.decode(latents if base is None else latents + base)  # [B, T, 3, H, W]
            frames.append(clip if i == 0 else clip[:, 1:])
            cond_frame = clip[:, -1]
        # 5. stitch, cut to num_frames, to uint8
        video = torch.cat(frames, dim=1)[:, :num_frames]  # [B, num_frames, 3, H, W]
        out = ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
        return VideoPipelineOutput(out, conditions, anchors)

