"""``mdream train video``: the toy image-to-video model (:mod:`mdream.models.video`) on toy-world motion clips.

Data: ``clips`` random toy shots (any scene, 0-3 characters, every action and camera), each rendered by
``toyworld.render_clip`` as ``2 * clip_length - 1`` frames (frame 0 is the keyframe), cached in ``OUT/data``.
A training example is a window of ``clip_length`` frames starting at frame 0 (a shot's first clip) or at frame
``clip_length - 1`` (its continuation): the window's first frame is the conditioning frame; the cross-attention
anchor is the clip's frame 0 (``anchor="first"``) or, with probability ``last_anchor_prob``, the window's first
frame (``anchor="last"``). The action multi-hot comes from the shot's cast and camera.

Drift augmentation (``drift_prob``): in that share of continuation examples the conditioning frame is degraded the
way an extended clip's last frame drifts (blurred, its colours shifted), while the target stays the true clip and the
``first`` anchor the true frame 0; so the model learns to pull a drifting shot back towards its anchor, which only
the first frame's embedding can tell it (an ``anchor="last"`` example's anchor is the degraded frame itself).

Loss: EDM's (Karras et al. 2022) with SVD's preconditioning (v-prediction, ``sigma_data``): sigma log-normal
(``p_mean``, ``p_std``), weight ``(sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` on the denoised estimate's
squared error (with ``prediction: x0``, weight 1); with ``residual`` the model denoises the clip minus its conditioning frame. The
conditioning is dropped (zero embedding and zero conditioning frame) with ``cond_dropout`` for guidance.
The loop (optimizer, EMA, checkpoints, resume, time budget) is :func:`mdream.training.loop.fit`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from mdream.errors import InputError
from mdream.models.loading import load_pretrained
from mdream.models.video import (
    ANCHOR_TOKENS,
    PREDICTIONS,
    ActionEncoder,
    ImageToVideoModel,
    VideoModelConfig,
    action_vector,
)
from mdream.training.common import check_same_shapes, console
from mdream.training.config import ConfigValueError
from mdream.training.loop import LoopConfig, fit, publish_final, start_run

TOY_CLIP = Path(__file__).resolve().parent.parent / "assets" / "models" / "toy-clip"
TOY_VIDEO = Path(__file__).resolve().parent.parent / "assets" / "models" / "toy-video"
MOTION_THRESHOLD = 2.5 / 127.5
"""A change of more than 2.5 grey levels (frames in [-1, 1]) counts as motion for ``motion_weight``."""


@dataclass
class VideoTrainingConfig(LoopConfig):
    """Settings of a toy video-model run (saved as train_config.json beside its checkpoints)."""

    help_panel: ClassVar[str] = "Video model"

    steps: int = 6000
    batch_size: int = 16
    lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 250

    world_seed: int = 0
    """Seed of the toy world (characters, scenes)."""
    data_seed: int = 0
    """Seed of the rendered training shots."""
    clips: int = 4000
    """Toy shots rendered for training (each 2 * clip_length - 1 frames)."""
    frame_size: int = 32
    """Frame size in pixels (square)."""
    clip_length: int = 8
    """Frames per clip the model draws."""
    fps: int = 8
    """The fps added time id the model is trained with (the script's default fps)."""
    patch_size: int = 4
    """Pixel blocks folded into channels (pixel space, no VAE): the UNet works at frame_size / patch_size."""
    channels: int = 32
    """UNet channels of the first level (block_out_channels = channels, 2 * channels); a multiple of 32."""
    layers_per_block: int = 1
    """ResNet layers per UNet level."""
    image_encoder: str = "toy"
    """CLIP folder whose vision tower embeds the anchor frame (frozen; copied into the saved model); toy: the shipped
    toy CLIP."""
    p_mean: float = -0.4
    """Mean of log sigma during training (EDM's P_mean)."""
    p_std: float = 1.4
    """Std of log sigma during training (EDM's P_std)."""
    sigma_max: float = 80.0
    """Largest sigma of the sampler's schedule (saved with the model)."""
    sigma_data: float = 1.0
    """The data's standard deviation in the preconditioning (SVD: 1; the toy clip's residual: about 0.25)."""
    prediction: str = "v"
    """What the UNet predicts: v (SVD) or x0 (see VideoModelConfig.prediction); x0 is trained with weight 1."""
    residual: bool = False
    """Denoise the clip minus its conditioning frame instead of the clip (see VideoModelConfig.residual)."""
    cond_dropout: float = 0.1
    """Share of examples trained without image conditioning (for classifier-free guidance)."""
    last_anchor_prob: float = 0.3
    """Share of continuation examples whose anchor is the window's first frame (anchor="last")."""
    sample_steps: int = 20
    """Euler steps per clip saved with the model."""
    anchor_tokens: str = "pooled"
    """What of the anchor frame the cross-attention sees: pooled (SVD's one image embedding) or patches (every patch
    token too; see VideoModelConfig.anchor_tokens)."""
    colour_coherence: float = 0.0
    """Saved with the model: how far continuing clips' conditioning frames are pulled to the anchor's colour statistics
    when sampling (see VideoModelConfig.colour_coherence)."""
    motion_weight: float = 0.0
    """Extra loss weight on what moves: each pixel block whose true clip differs from the conditioning frame (by more
    than 2.5 grey levels) weighs 1 + motion_weight, the rest 1; so the few moving pixels are not outweighed by the
    still background (0: plain EDM loss)."""
    drift_prob: float = 0.0
    """Share of continuation examples whose conditioning frame is degraded like a drifted clip's last frame (blur,
    colour shift; strength uniform per example), the target and the first-frame anchor kept true."""
    action_map: bool = False
    """Also give the UNet the action where it happens: each slot's action painted over its third of the frame as
    extra input channels (see VideoModelConfig.action_map). With --init from a model without it, the new input
    channels start at zero weight, so training starts from that model's outputs."""
    max_shot_frames: int = 0
    """Training shots last from clip_length to this many frames (log-uniform), and a clip shows the start of its
    shot's motion, which spans the whole shot (the toy world's pacing: a long shot moves slowly); 0: every shot is
    2 x clip_length - 1 frames, its two clips."""
    shot_paced_motion: bool = False
    """Tell the model each shot's length through its motion bucket (see VideoModelConfig.shot_paced_motion), so it can
    know how fast the shot's motion goes."""
    heading_map: bool = False
    """Also give the UNet which way each walking member goes: one more input channel (see
    VideoModelConfig.heading_map). With --init from a model without it, the channel starts at zero weight."""
    init: str = ""
    """Start from a trained video model (a folder of `mdream train export` or a run's final/video; toy: the shipped
    toy-video) instead of random weights: its UNet and action encoder must match this config."""

    def check(self) -> None:
        super().check()
        if self.channels < 32 or self.channels % 32:
            raise ConfigValueError("channels", f"--channels must be a positive multiple of 32, got {self.channels}.")
        if self.frame_size % (4 * self.patch_size):
            raise ConfigValueError("patch_size", f"--frame-size {self.frame_size} must be a multiple of 4 x --patch-size.")
        if self.clip_length < 2:
            raise ConfigValueError("clip_length", f"--clip-length must be >= 2, got {self.clip_length}.")
        if self.max_shot_frames and self.max_shot_frames < self.clip_length:
            raise ConfigValueError("max_shot_frames", f"--max-shot-frames must be 0 or >= --clip-length "
                                                      f"({self.clip_length}), got {self.max_shot_frames}.")
        if self.clips < 1:
            raise ConfigValueError("clips", f"--clips must be >= 1, got {self.clips}.")
        if self.anchor_tokens not in ANCHOR_TOKENS:
            raise ConfigValueError("anchor_tokens", f"--anchor-tokens must be one of {', '.join(ANCHOR_TOKENS)}, "
                                                    f"got {self.anchor_tokens!r}.")
        if self.prediction not in PREDICTIONS:
            raise ConfigValueError("prediction", f"--prediction must be one of {', '.join(PREDICTIONS)}, "
                                                 f"got {self.prediction!r}.")
        if self.motion_weight < 0:
            raise ConfigValueError("motion_weight", f"--motion-weight must be >= 0, got {self.motion_weight}.")
        for name in ("cond_dropout", "last_anchor_prob", "drift_prob", "colour_coherence"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigValueError(name, f"--{name.replace('_', '-')} must be in [0, 1].")


def init_source(setting: str) -> Path:
    """The video model folder an ``init`` setting names: ``toy`` is the shipped toy video model."""
    return TOY_VIDEO if setting == "toy" else Path(setting)


def load_init(model: ImageToVideoModel, setting: str) -> None:
    """Copy a trained model's UNet and action encoder into ``model`` (refusing different shapes)."""
    folder = init_source(setting)
    if (folder / "video").is_dir() and not (folder / "unet").is_dir():
        folder = folder / "video"
    trained = ImageToVideoModel.from_pretrained(folder, torch_dtype=torch.float32)
    for name in ("action_map", "heading_map"):  # maps are only ever added, after those the trained model has
        if getattr(trained.config, name) and not getattr(model.config, name):
            raise InputError(f"--init {setting}: the video model there was trained with `{name}`; this config has "
                             "none.", hint=f"set --{name.replace('_', '-')} to start from it")
    if trained.config.heading_map and not trained.config.action_map and model.config.action_map:
        raise InputError(f"--init {setting}: the action map's channels would come after the heading map's.",
                         hint="start a model with both maps from one trained without the heading map")
    added = model.config.action_map_channels - trained.config.action_map_channels
    if added > 0:  # the maps' new input channels start at zero weight: the UNet starts as it was trained
        conv = trained.unet.conv_in
        wider = nn.Conv2d(conv.in_channels + added, conv.out_channels, conv.kernel_size, padding=conv.padding)
        with torch.no_grad():
            wider.weight.zero_()
            wider.weight[:, : conv.in_channels] = conv.weight
            wider.bias.copy_(conv.bias)
        trained.unet.conv_in = wider
    for name in ("unet", "action_encoder"):
        mine, theirs = getattr(model, name), getattr(trained, name)
        if theirs is None:
            raise InputError(f"--init {setting}: the video model there has no {name.replace('_', ' ')}.",
                             hint="start from a model trained by `mdream train video`")
        check_same_shapes(mine, theirs, setting, name.replace("_", " "))
        mine.load_state_dict(theirs.state_dict())
    console.print(f"UNet and action encoder initialised from {folder}")


def drift_frames(frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Degrade frames [B, 3, S, S] in [-1, 1] like an extended clip's drifting last frame: a Gaussian blur (sigma up
    to 1.5 px) and a per-channel gain and offset (std up to 0.2), each example at a uniform random strength."""
    b = frames.shape[0]
    strength = rng.random(b)
    out = torch.empty_like(frames)
    taps = torch.arange(-3, 4, dtype=torch.float32)
    for i in range(b):
        sigma = 1.5 * strength[i]
        x = frames[i: i + 1]
        if sigma > 0.2:
            k = torch.exp(-0.5 * (taps / sigma) ** 2)
            k = (k / k.sum()).to(frames.dtype)
            x = nn.functional.pad(x, (3, 3, 3, 3), mode="replicate")
            x = nn.functional.conv2d(x, k.view(1, 1, 1, 7).expand(3, 1, 1, 7), groups=3)  # along width
            x = nn.functional.conv2d(x, k.view(1, 1, 7, 1).expand(3, 1, 7, 1), groups=3)  # along height
        gain = 1 + 0.2 * strength[i] * rng.standard_normal(3)
        offset = 0.2 * strength[i] * rng.standard_normal(3)
        x = x * torch.from_numpy(gain).float().view(1, 3, 1, 1) + torch.from_numpy(offset).float().view(1, 3, 1, 1)
        out[i] = x[0].clamp(-1, 1)
    return out


def image_encoder_source(setting: str) -> str:
    """The CLIP folder (or hub id) an ``image_encoder`` setting names: ``toy`` is the shipped toy CLIP."""
    return str(TOY_CLIP) if setting == "toy" else setting


def new_video_model(config: VideoTrainingConfig) -> ImageToVideoModel:
    """A fresh toy model: a small SVD UNet in folded pixel space, the frozen toy CLIP vision tower, an action
    encoder, SVD's Euler scheduler (Karras sigmas up to ``sigma_max``)."""
    from diffusers import EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection

    image_encoder = load_pretrained(CLIPVisionModelWithProjection, image_encoder_source(config.image_encoder),
                                    "video trainer's image encoder (--image-encoder)")
    image_encoder.requires_grad_(False)
    dim = image_encoder.config.projection_dim
    mc = VideoModelConfig(pixel_space=True, patch_size=config.patch_size, height=config.frame_size,
                          width=config.frame_size, num_frames=config.clip_length, fps=config.fps,
                          num_inference_steps=config.sample_steps, min_guidance_scale=1.0, max_guidance_scale=1.0,
                          sigma_data=config.sigma_data, residual=config.residual, prediction=config.prediction,
                          anchor_tokens=config.anchor_tokens, colour_coherence=config.colour_coherence,
                          action_map=config.action_map, heading_map=config.heading_map,
                          shot_paced_motion=config.shot_paced_motion)
    c = 3 * config.patch_size**2
    unet = UNetSpatioTemporalConditionModel(
        sample_size=config.frame_size // config.patch_size, in_channels=2 * c + mc.action_map_channels, out_channels=c,
        down_block_types=("DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
        up_block_types=("CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"),
        block_out_channels=(config.channels, 2 * config.channels), addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24, layers_per_block=config.layers_per_block, cross_attention_dim=dim,
        transformer_layers_per_block=1, num_attention_heads=(config.channels // 16, config.channels // 16),
        num_frames=config.clip_length,
    )
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
        timestep_type="continuous", sigma_min=0.002, sigma_max=config.sigma_max,
    )
    actions = ActionEncoder(action_dim=mc.action_dim, hidden_dim=128, cross_attention_dim=dim)
    return ImageToVideoModel(mc, unet, image_encoder, scheduler, action_encoder=actions)


@dataclass
class ClipSet:
    """Rendered training clips and their action multi-hots."""

    frames: np.ndarray
    """uint8 [N, 2L-1, S, S, 3]"""
    actions: np.ndarray
    """float32 [N, A]"""
    shot_frames: np.ndarray | None = None
    """int64 [N]: each clip's shot length in frames (None: all 2L - 1); a shot shorter than 2L - 1 frames repeats
    its last frame to fill ``frames`` and has no continuation."""


def shot_action(model_config: VideoModelConfig, shot) -> torch.Tensor:
    """A toy shot's action multi-hot (its cast's positions and actions, its camera)."""
    return action_vector(model_config, [(m.position, m.action) for m in shot.cast], shot.camera)


def render_clips(config: VideoTrainingConfig, model_config: VideoModelConfig, n: int, seed: int) -> ClipSet:
    from mdream.eval.toy_samples import random_shot
    from mdream.toyworld import make_world, render_clip

    world = make_world(config.world_seed)
    rng = np.random.default_rng([seed, config.world_seed, 0x71D])
    length = 2 * config.clip_length - 1
    frames = np.empty((n, length, config.frame_size, config.frame_size, 3), np.uint8)
    actions = np.empty((n, model_config.action_dim), np.float32)
    shot_frames = np.full(n, length, np.int64)
    for i in range(n):
        shot = random_shot(world, rng)
        if config.max_shot_frames:  # log-uniform in [clip_length, max_shot_frames]
            lo, hi = np.log(config.clip_length), np.log(config.max_shot_frames)
            shot_frames[i] = int(round(float(np.exp(rng.uniform(lo, hi)))))
        count = min(length, int(shot_frames[i]))
        frames[i, :count] = render_clip(world, shot, config.frame_size, int(shot_frames[i]), rng, count=count)
        frames[i, count:] = frames[i, count - 1]
        actions[i] = shot_action(model_config, shot).numpy()
    return ClipSet(frames, actions, shot_frames if config.max_shot_frames else None)


def load_clips(config: VideoTrainingConfig, model_config: VideoModelConfig, out: Path) -> ClipSet:
    """The training clips, rendered once and cached in ``out/data`` (keyed on the settings that shape them)."""
    tag = f"w{config.world_seed}-d{config.data_seed}-n{config.clips}-s{config.frame_size}-l{config.clip_length}"
    tag += f"-f{config.max_shot_frames}" if config.max_shot_frames else ""
    path = out / "data" / f"clips-{tag}.npz"
    if path.is_file():
        with np.load(path) as data:
            return ClipSet(data["frames"], data["actions"], data["shot_frames"] if "shot_frames" in data else None)
    console.print(f"rendering {config.clips} toy clips of {2 * config.clip_length - 1} frames ...")
    clips = render_clips(config, model_config, config.clips, config.data_seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    extra = {} if clips.shot_frames is None else {"shot_frames": clips.shot_frames}
    np.savez(tmp, frames=clips.frames, actions=clips.actions, **extra)
    tmp.replace(path)
    return clips


class VideoTrainingModel(nn.Module):
    """The trainable parts behind one forward: the EDM loss of a batch."""

    def __init__(self, model: ImageToVideoModel, motion_weight: float = 0.0):
        super().__init__()
        self.video = model
        self.motion_weight = motion_weight

    def forward(self, clip, cond_frame, anchor_frame, actions, sigma, noise, aug, keep, shot_frames=None):
        """clip [B, T, 3, S, S], cond_frame / anchor_frame [B, 3, S, S] in [-1, 1]; actions [B, A]; sigma [B];
        noise like the folded clip; aug like cond_frame; keep [B] (0: conditioning dropped); shot_frames [B] (the
        clips' shot lengths; None: one clip's worth). Returns the loss."""
        m, b, t = self.video, clip.shape[0], clip.shape[1]
        with torch.no_grad():
            x0 = m.clip_latents(clip.flatten(0, 1))
            x0 = x0.view(b, t, *x0.shape[1:])  # [B, T, C, h, w]
            base = m.residual_base(cond_frame, t)
            x0 = x0 if base is None else x0 - base
            pixel_weight = 1.0
            if self.motion_weight > 0:  # 1 + motion_weight where the clip differs from its conditioning frame
                # with residual, x0 already is the clip minus its conditioning frame
                change = x0 if base is not None else x0 - m.clip_latents(cond_frame).unsqueeze(1)  # [B, T, C, h, w]
                change = change.abs().amax(dim=2, keepdim=True)  # [B, T, 1, h, w]
                pixel_weight = 1 + self.motion_weight * (change > MOTION_THRESHOLD).float()
            embeds = m.encode_image(anchor_frame)  # [B, n, D]
        k = keep.view(b, 1, 1, 1)
        latents = m.to_latents(cond_frame + m.config.noise_aug_strength * aug)  # [B, C, h, w]
        cond = m.conditioning(latents, actions, t) * k.unsqueeze(1)  # [B, T, C (+ V), h, w]; dropped: all zero
        context = torch.cat([embeds * keep.view(b, 1, 1), m.encode_actions(actions, b)], dim=1)  # [B, n + 1, D]
        s = sigma.view(b, 1, 1, 1, 1)
        denoised = m.denoise(x0 + s * noise, sigma, cond, context, m.added_time_ids(b, shot_frames=shot_frames))
        sd = m.config.sigma_data
        weight = (s**2 + sd**2) / (s * sd) ** 2 if m.config.prediction == "v" else torch.ones_like(s)
        return (weight * pixel_weight * (denoised - x0) ** 2).mean()


class VideoTask:
    unit = "clips"

    def __init__(self, model: VideoTrainingModel, clips: ClipSet, config: VideoTrainingConfig):
        self.model, self.clips, self.config = model, clips, config

    def trainable(self) -> list[nn.Parameter]:
        v = self.model.video
        return [p for p in [*v.unet.parameters(), *v.action_encoder.parameters()] if p.requires_grad]

    def sample(self, rng: np.random.Generator, size: int) -> dict[str, torch.Tensor]:
        c, L = self.config, self.config.clip_length
        idx = rng.integers(0, len(self.clips.frames), size)
        shot_frames = (np.full(size, 2 * L - 1) if self.clips.shot_frames is None
                       else self.clips.shot_frames[idx])  # [B]
        # the shot's first clip, or its continuation (a shot of fewer than 2L - 1 frames has none)
        start = rng.integers(0, 2, size) * (L - 1) * (shot_frames >= 2 * L - 1)
        frames = np.stack([self.clips.frames[i, s: s + L] for i, s in zip(idx, start, strict=True)])
        clip = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 127.5 - 1  # [B, L, 3, S, S]
        first = torch.from_numpy(self.clips.frames[idx, 0]).permute(0, 3, 1, 2).float() / 127.5 - 1  # [B, 3, S, S]
        cond = clip[:, 0]
        drifted = (start > 0) & (rng.random(size) < c.drift_prob) if c.drift_prob > 0 else np.zeros(size, bool)
        if drifted.any():
            mask = torch.from_numpy(drifted)
            cond = cond.clone()
            cond[mask] = drift_frames(cond[mask], rng)
        last_anchor = torch.from_numpy((start > 0) & (rng.random(size) < c.last_anchor_prob)).view(-1, 1, 1, 1)
        anchor = torch.where(last_anchor, cond, first)
        sigma = torch.from_numpy(np.exp(c.p_mean + c.p_std * rng.standard_normal(size))).float()
        p = c.patch_size
        noise = torch.from_numpy(rng.standard_normal((size, L, 3 * p * p, c.frame_size // p, c.frame_size // p))).float()
        aug = torch.from_numpy(rng.standard_normal((size, 3, c.frame_size, c.frame_size))).float()
        keep = torch.from_numpy(rng.random(size) >= c.cond_dropout).float()
        device = self.model.video.device
        batch = {"clip": clip, "cond_frame": cond, "anchor_frame": anchor,
                 "actions": torch.from_numpy(self.clips.actions[idx]), "sigma": sigma, "noise": noise, "aug": aug,
                 "keep": keep, "shot_frames": torch.from_numpy(shot_frames)}
        return {k: v.to(device) for k, v in batch.items()}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": model(**batch)}

    def export(self, folder: Path, model: nn.Module) -> None:
        model.video.save_pretrained(folder / "video")


def train_video(config: VideoTrainingConfig, out: str | Path, resume: str = "auto", export: str | Path | None = None,
                given: Collection[str] | None = None) -> Path:
    """Train (or resume) the toy video model; returns the exported model folder (``OUT/final`` and ``export``)."""
    config, out, start_from, accelerator = start_run(config, VideoTrainingConfig, out, resume, given, export,
                                                     "video.json")
    model = new_video_model(config)
    if config.init and start_from is None:
        load_init(model, config.init)
    with accelerator.main_process_first():
        clips = load_clips(config, model.config, out)
    task = VideoTask(VideoTrainingModel(model, config.motion_weight), clips, config)
    result = fit(task, config, out, accelerator, resume_from=start_from, name="train video")
    return publish_final(result, accelerator, out, "video", export, "video")
