"""``mdream train tokenizer``: the keyframe diffusion autoencoder (token compressor + renderer).

The frozen CLIP reads each frame; the compressor turns its patch tokens into N tokens; the
decoder learns to denoise the frame from [tokens ; cast face embeddings ; descriptor], with
whole groups dropped at random. Only the compressor, the decoder's context projector and UNet
(and a training-only auxiliary head) are trained, as in MovieDreamer.

The recipe, chosen by measurement on 2 CPU cores (benchmarks/RESULTS.md, "Keyframe tokenizer"):
x0 ("sample") prediction with a plain MSE and uniform timesteps (v-prediction with min-SNR
weights and high-noise-biased timesteps left the low-noise end undertrained: grainy renders);
UNet widths (16, 32, 64) with cross-attention at 16x16 and 8x8 and AdaGN (scale-shift) time
conditioning; a pooled context [tokens ; face *slots* ; descriptor] added to the time embedding
(``class_embed_type="projection"``), so every ResNet knows who stands where; and two
training-only auxiliary heads on the tokens: one predicts CLIP's layer-normed patch tokens and
image embedding, the other each cast slot's face embedding (``TokenIdentityHead``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import DistributedDataParallelKwargs
from diffusers import DDIMScheduler, UNet2DConditionModel
from torch import nn

from mdream.errors import InputError
from mdream.models.compressor import TokenCompressor, TokenIdentityHead, TokenReconstructionHead
from mdream.models.decoder import POSITION_CHANNEL_CHOICES, ContextProjector, KeyframeDecoder
from mdream.models.encoders import KeyframeEncoder, TextEncoder, images_to_float
from mdream.models.loading import load_pretrained, quiet_loading
from mdream.training.common import (
    check_same_shapes,
    console,
    content_key,
    load_keyed_cache,
    make_accelerator,
    model_key,
    parse_int_tuple,
    resolve_resume,
    save_keyed_cache,
    set_threads_from_env,
    training_progress,
)
from mdream.training.config import (
    ConfigValueError,
    Removed,
    Settings,
    check_config,
    resumed_config,
    save_config,
)
from mdream.training.data import (
    FrameSet,
    RunConfig,
    character_references,
    character_text_embeddings,
    character_text_for_batch,
    check_dataset_masks,
    face_embedding_bank,
    faces_for_batch,
    open_frame_source,
)
from mdream.training.loop import fit

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_FACE_EMBEDDER = ASSETS / "eval" / "toy_face_recognition.onnx"
TOY_CLIP = ASSETS / "models" / "toy-clip"


@dataclass
class ToyLossWeights(Settings):
    """Where the diffusion loss weighs pixels unevenly; needs the toy world's figure and look-alike masks, so
    rendered frames, not --data (1 and 0: a plain loss)."""

    help_panel: ClassVar[str] = "Toy-world loss weights (need rendered frames)"
    removed: ClassVar[dict[str, Removed]] = {
        "head_weight": Removed(0.0, "weighting the heads did not reduce look-alike swaps and scored below the "
                                    "shipped recipe, docs/experiments/tokenizer.md#head-weight"),
        "lookalike_split": Removed("pair", "an equal part per look-alike pair beat spreading the share evenly over "
                                           "the pixels, docs/experiments/tokenizer.md#look-alike-share"),
    }

    character_weight: float = 4.0
    """Diffusion-loss weight of the pixels the characters' figures cover (1: plain)."""
    lookalike_share: float = 0.2
    """Share of each frame's diffusion-loss weight moved onto the pixels that tell its cast from their look-alikes (an iris, the skin), an equal part per look-alike pair in view (0: off)."""
    trousers_share: float = 0.0
    """Share of each frame's diffusion-loss weight moved onto the pixels of its cast's trousers (the episode's hidden state: a wide shot's legs are a few pixels), an equal part per member in view (0: off)."""

    def check(self) -> None:
        if not self.character_weight > 0:
            raise ConfigValueError("toy_loss.character_weight", f"--character-weight must be > 0, got {self.character_weight}.")
        if not 0 <= self.lookalike_share < 1:
            raise ConfigValueError("toy_loss.lookalike_share",
                                   f"--lookalike-share must be in [0, 1) (0: off), got {self.lookalike_share}.")
        if not 0 <= self.trousers_share < 1:
            raise ConfigValueError("toy_loss.trousers_share",
                                   f"--trousers-share must be in [0, 1) (0: off), got {self.trousers_share}.")
        if self.lookalike_share + self.trousers_share >= 1:
            raise ConfigValueError("toy_loss.trousers_share",
                                   f"--lookalike-share {self.lookalike_share} and --trousers-share "
                                   f"{self.trousers_share} together move all of a frame's weight; keep their sum below 1.")

    def masks(self) -> tuple[str, ...]:
        """The masks these weights need rendered with the frames."""
        return ((("figures",) if self.character_weight != 1.0 else ()) + (("lookalikes",) if self.lookalike_share > 0 else ())
                + (("trousers",) if self.trousers_share > 0 else ()))


@dataclass
class TokenizerTrainingConfig(RunConfig):
    """Settings of a keyframe-tokenizer run (saved as train_config.json beside its checkpoints).

    The defaults are the shipped toy tokenizer's recipe (``recipes/tokenizer-toy-cpu.yaml`` adds its 2-hour
    budget); its loss weights that need toy-world masks are the ``toy_loss`` section.
    """

    help_panel: ClassVar[str] = "Tokenizer"

    # RunConfig's fields, with this run's defaults (their docstrings are RunConfig's)
    num_frames: int = 30000
    steps: int = 20000
    warmup: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999

    clip: str = "toy"
    """Frozen CLIP folder (or hub id): vision tower reads frames, text tower embeds descriptors; toy: the shipped toy CLIP."""
    face_embedder: str = "auto"
    """Face-recognition ONNX for the face group; auto: the shipped toy embedder; none: no face group."""
    image_size: int = 32
    """Frame size the decoder renders (pixel space)."""
    photos_per_character: int = 8
    """Face photos embedded per character; one is drawn at random per cast member and step."""
    num_tokens: int = 2
    """Keyframe tokens per frame (N)."""
    token_dim: int = 128
    """Width of each token (d)."""
    compressor_width: int = 128
    """Internal width of the compressor."""
    compressor_layers: int = 2
    """Compressor blocks (cross-attention to patches, self-attention, MLP)."""
    vision_feature_layer: int = -1
    """Which hidden state of the frozen CLIP the compressor reads (-1: the last)."""
    unet_widths: str = "16,32,64"
    """UNet channels per level."""
    cross_attention_levels: int = 2
    """How many of the lowest UNet levels have cross-attention to the context (1: only 8x8 at 32 px)."""
    layers_per_block: int = 1
    """ResNet layers per UNet level."""
    position_channels: int = 2
    """x, y coordinate channels appended to the UNet input, so its cross-attention knows where each pixel is (2, or 0: none)."""
    attention_heads: int = 2
    """Attention heads in each UNet transformer block (fewer, wider heads run faster on CPU)."""
    only_cross_attention: bool = True
    """UNet transformer blocks attend only to the context, not to other pixels (cheaper; the 8x8 mid block keeps self-attention)."""
    time_scale_shift: bool = True
    """ResNets modulate their features by scale and shift from the time(+pooled context) embedding (AdaGN)."""
    cross_attention_dim: int = 64
    """Width of the decoder's context (each group is projected to it)."""
    pooled_dim: int = 128
    """Width of the pooled context added to the UNet's time embedding."""
    pooled_faces: str = "slots"
    """Faces in the pooled context: slots (each position, so the time embedding knows who is where) or mean."""
    character_text: bool = True
    """Add each cast member's description embedding to their face slot (what a face cannot show: height, outfit)."""
    prediction_type: str = "sample"
    """Diffusion target: v_prediction, epsilon or sample."""
    beta_schedule: str = "linear"
    """DDPM noise schedule (linear, scaled_linear, squaredcos_cap_v2)."""
    snr_gamma: float = 0.0
    """Min-SNR loss weighting gamma (0 disables)."""
    timestep_power: float = 1.0
    """t = 999 * u**power: below 1 favours mid/high noise (conditioning decides content) but starves the low-noise end (grain)."""
    drop_tokens: float = 0.15
    """Probability of replacing a frame's tokens by the null tokens."""
    drop_faces: float = 0.25
    """Probability of replacing a frame's face group by the null face."""
    drop_text: float = 0.5
    """Probability of replacing a frame's descriptor by the null descriptor."""
    aux_weight: float = 1.0
    """Weight of the auxiliary loss (predict CLIP's patch tokens and image embedding from the tokens)."""
    identity_weight: float = 1.0
    """Weight of the identity auxiliary loss (predict each slot's face embedding from the tokens; needs the face group)."""
    hidden_weight: float = 0.0
    """Weight of the hidden-state auxiliary loss: predict the toy world's hidden labels (the scene's palette, each slot's trousers) from the tokens, so that the tokens carry them (toy-world frames only)."""
    init: str = ""
    """Fine-tune: start the compressor and the whole decoder (context and UNet) from a trained tokenizer (a folder
    with encoder/ and decoder/, or a run's checkpoint; toy: the shipped toy tokenizer); the auxiliary heads start fresh."""
    init_unet: str = ""
    """Start the UNet from this run's checkpoint (or a decoder/UNet folder) instead of random weights; the compressor and context start fresh (e.g. after changing the frozen CLIP)."""
    cache_features: bool = True
    """Run the frozen CLIP once over the training frames and keep its features (no image augmentation is used)."""
    toy_loss: ToyLossWeights = field(default_factory=lambda: ToyLossWeights())
    """Diffusion-loss weights that need toy-world masks."""

    def check(self) -> None:
        super().check()
        check_unet_settings(self)
        for name in ("drop_tokens", "drop_faces", "drop_text"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigValueError(name, f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}.")


class TokenHiddenHead(nn.Module):
    """Training-only auxiliary head for toy-world runs: read the hidden state off the tokens, the scene's palette and
    each cast slot's trousers, as classes (cross-entropy on the toy world's labels), so that the compressor packs
    them into its few tokens: neither the diffusion loss (a wide shot's legs are a few pixels) nor the other heads ask
    for them."""

    def __init__(self, num_tokens: int, token_dim: int, palettes: int, trousers: int, slots: int = 3,
                 hidden_dim: int = 256):
        super().__init__()
        self.palettes, self.trousers, self.slots = palettes, trousers, slots
        self.trunk = nn.Sequential(nn.Linear(num_tokens * token_dim, hidden_dim), nn.GELU(),
                                   nn.Linear(hidden_dim, hidden_dim), nn.GELU())
        self.palette_head = nn.Linear(hidden_dim, palettes)
        self.trousers_head = nn.Linear(hidden_dim, slots * trousers)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # tokens [B, N, D] -> palette logits [B, P], trousers logits [B, slots, T]
        hidden = self.trunk(tokens.flatten(1).float())
        return self.palette_head(hidden), self.trousers_head(hidden).view(-1, self.slots, self.trousers)

    def loss(self, tokens: torch.Tensor, palette: torch.Tensor, trousers: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the palette [B] plus that of each occupied slot's trousers [B, slots] (-1: empty)."""
        palette_logits, trousers_logits = self(tokens)
        loss = F.cross_entropy(palette_logits, palette)
        worn = trousers >= 0
        if worn.any():
            loss = loss + F.cross_entropy(trousers_logits[worn], trousers[worn])
        return loss


class TokenizerModel(nn.Module):
    """Everything that trains, behind one forward() so accelerate/DDP can wrap it."""

    def __init__(self, compressor: TokenCompressor, decoder: KeyframeDecoder, aux_head: TokenReconstructionHead | None,
                 identity_head: TokenIdentityHead | None = None, hidden_head: TokenHiddenHead | None = None):
        super().__init__()
        self.compressor = compressor
        self.decoder = decoder
        self.aux_head = aux_head
        self.identity_head = identity_head
        self.hidden_head = hidden_head

    def forward(self, images, patches, image_embeds, faces, face_mask, text, identity_target, config: TokenizerTrainingConfig,
                pixel_weight=None, character_text=None, hidden_target=None):
        # images [B, 3, S, S] in [-1, 1]; patches [B, 1+P, Dv] frozen CLIP states; image_embeds [B, Dv]
        # identity_target [B, 3, 512] reference face embedding of the character in each slot (or None)
        # pixel_weight [B, 1, S, S] loss weight per pixel (or None: uniform)
        # character_text [B, 3, Dt] description embedding of the character in each slot (or None)
        # hidden_target (palette [B], trousers [B, 3]) the toy world's hidden labels (or None)
        tokens = self.compressor(patches)
        diffusion = self.decoder.diffusion_loss(
            images, tokens, faces, face_mask, text,
            drop_probs=(config.drop_tokens, config.drop_faces, config.drop_text),
            snr_gamma=config.snr_gamma or None, timestep_power=config.timestep_power, pixel_weight=pixel_weight,
            character_text=character_text,
        )
        aux = torch.zeros((), device=images.device)
        if self.aux_head is not None:
            pred_patches, pred_embed = self.aux_head(tokens)
            target = F.layer_norm(patches[:, 1:], patches.shape[-1:])
            aux = F.mse_loss(pred_patches.float(), target.float()) + F.mse_loss(
                pred_embed.float(), F.layer_norm(image_embeds, image_embeds.shape[-1:]).float()
            )
        identity = torch.zeros((), device=images.device)
        if self.identity_head is not None and identity_target is not None:
            identity = self.identity_head.loss(tokens, identity_target, face_mask)
        hidden = torch.zeros((), device=images.device)
        if self.hidden_head is not None and hidden_target is not None:
            hidden = self.hidden_head.loss(tokens, *hidden_target)
        loss = diffusion + config.aux_weight * aux + config.identity_weight * identity + config.hidden_weight * hidden
        return loss, diffusion.detach(), aux.detach(), identity.detach(), hidden.detach()


def check_unet_settings(config: TokenizerTrainingConfig) -> tuple[tuple[int, ...], int]:
    """The toy UNet's widths and number of attention levels, after checking the settings that shape it."""
    widths = parse_int_tuple(config.unet_widths, "--unet-widths")
    attn = max(1, min(config.cross_attention_levels, len(widths)))
    if config.attention_heads < 1 or any(w % config.attention_heads for w in widths[len(widths) - attn:]):
        raise ConfigValueError("attention_heads", f"--attention-heads {config.attention_heads} must divide the widths of the attention levels "
                         f"({', '.join(map(str, widths[len(widths) - attn:]))}).")
    if config.position_channels not in POSITION_CHANNEL_CHOICES:
        raise ConfigValueError("position_channels", f"--position-channels must be 0 or 2 (x, y), got {config.position_channels}.")
    return widths, attn


def build_toy_decoder(config: TokenizerTrainingConfig, text_dim: int, face_dim: int = 512) -> KeyframeDecoder:
    widths, attn = check_unet_settings(config)
    levels = len(widths)
    unet = UNet2DConditionModel(
        sample_size=config.image_size,
        in_channels=3 + config.position_channels,
        out_channels=3,
        block_out_channels=widths,
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D",) * (levels - attn) + ("CrossAttnDownBlock2D",) * attn,
        up_block_types=("CrossAttnUpBlock2D",) * attn + ("UpBlock2D",) * (levels - attn),
        resnet_time_scale_shift="scale_shift" if config.time_scale_shift else "default",
        cross_attention_dim=config.cross_attention_dim,
        # diffusers' UNet2DConditionModel reads attention_head_dim as the number of heads (a known misnomer)
        attention_head_dim=config.attention_heads,
        only_cross_attention=config.only_cross_attention,
        norm_num_groups=min(8, widths[0]),
        class_embed_type="projection",
        projection_class_embeddings_input_dim=config.pooled_dim,
    )
    context = ContextProjector(
        num_tokens=config.num_tokens, token_dim=config.token_dim, face_dim=face_dim, max_faces=3, text_dim=text_dim,
        cross_attention_dim=config.cross_attention_dim, pooled_dim=config.pooled_dim, pooled_faces=config.pooled_faces,
        # the character descriptions go through the same text encoder as the shot descriptor
        character_text_dim=text_dim if config.character_text else None,
    )
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule=config.beta_schedule,
                              prediction_type=config.prediction_type, clip_sample=False)
    return KeyframeDecoder(unet, context, scheduler, None, "ddim", position_channels=config.position_channels)


def _cached_vision_features(encoder: KeyframeEncoder, train: FrameSet, out: Path, config: TokenizerTrainingConfig):
    """The frozen CLIP's (patch tokens, image embedding) of every training frame, float16, cached in OUT.

    The vision tower is frozen and frames are not augmented, so its features never change: computing
    them once saves a forward pass per step. The cache file is named by the layer it holds.
    """
    path = out / f"vision_features_layer{config.vision_feature_layer}.npz"
    # keyed by the frames themselves and the CLIP's weights: a resume with another (or a retrained) --clip, or a
    # cache copied from a run with other frames, recomputes them
    key = content_key("vision features", train.frames, model_key(config.clip), config.vision_feature_layer)
    cached = load_keyed_cache(path, key)
    if cached is not None and len(cached.get("patches", ())) == len(train):
        return cached["patches"], cached["pooled"]
    patches, pooled = [], []
    with training_progress("CLIP features") as bar:
        task = bar.add_task("frames", total=len(train), status="")
        for i in range(0, len(train), 256):
            p, e = encoder.vision_features(train.frames[i : i + 256])
            patches.append(p.half().cpu().numpy())
            pooled.append(e.half().cpu().numpy())
            bar.update(task, completed=min(i + 256, len(train)))
    patches, pooled = np.concatenate(patches), np.concatenate(pooled)
    save_keyed_cache(path, key, patches=patches, pooled=pooled)
    return patches, pooled


def _unet_folder(source: Path) -> Path:
    """The UNet folder inside a run folder, a checkpoint, a decoder folder, or the UNet folder itself."""
    from mdream.training.common import latest_checkpoint

    if (source / "checkpoints").is_dir():
        source = latest_checkpoint(source) or source
    # the exported (EMA) UNet of a checkpoint first: smoother than the raw training weights
    for candidate in (source / "decoder" / "unet", source / "train" / "unet", source / "unet", source):
        if (candidate / "config.json").is_file():
            return candidate
    raise InputError(f"--init-unet {source}: no UNet there (looked for decoder/unet, train/unet, unet).")


def _tokenizer_folder(source: Path) -> Path:
    """The exported tokenizer (encoder/ + decoder/) in a model folder, a run folder or a checkpoint."""
    from mdream.training.common import latest_checkpoint

    if (source / "checkpoints").is_dir():
        source = latest_checkpoint(source) or source
    for candidate in (source, source / "export"):
        if (candidate / "decoder").is_dir() and (candidate / "encoder" / "compressor").is_dir():
            return candidate
    raise InputError(f"--init {source}: no trained tokenizer there (looked for encoder/compressor and decoder/).",
                     hint="Name a folder such as mdream/assets/models/toy-tokenizer, or a run's checkpoint.")


def _face_embedder_path(setting: str) -> Path | None:
    if setting == "none":
        return None
    path = DEFAULT_FACE_EMBEDDER if setting == "auto" else Path(setting)
    if not path.is_file():
        if setting == "auto":
            console.print(f"[yellow]no face embedder at {path}: training without the face group[/]")
            return None
        raise InputError(f"--face-embedder {setting}: no such file.")
    return path


def export_tokenizer(checkpoint: str | Path, dest: str | Path, clip_reference: str | None = None, **sampling) -> None:
    """Export a checkpoint's (EMA) ``encoder/`` and ``decoder/`` to ``dest``: ``mdream.training.export.export_model``."""
    from mdream.training.export import export_model

    export_model(checkpoint, dest, clip_reference=clip_reference, **sampling)


def portable_train_config(path: Path) -> None:
    """A run's settings without machine paths: ``mdream.training.export.portable_train_config``."""
    from mdream.training.export import portable_train_config as portable

    portable(path)


def loss_pixel_weight(train: FrameSet, idx: np.ndarray, weights: ToyLossWeights,
                      device: torch.device | str = "cpu") -> torch.Tensor | None:
    """float32 [B, 1, S, S]: the diffusion loss's weight of each pixel of the frames ``idx`` (None: all ones).

    The characters are what the analyser (and a viewer) reads identity from, but a small share of
    the pixels: the plain loss spends the UNet on the background, hence ``character_weight`` on the
    figures. Look-alikes differ in a few pixels (an iris is one or two pixels at 32 px), which a
    per-pixel weight either misses or, on a pair that differs in a whole outfit, turns into most of
    the frame's loss; ``lookalike_share`` instead moves a fixed share of each frame's weight onto its
    look-alike pixels (never lowering a pixel's weight), so the cost to the background is bounded and
    the weight per pixel grows as the difference shrinks. Each look-alike pair in view holds an equal
    part of that share, so a two-pixel iris beside a height pair's whole figure is not left with a
    hundredth of it.
    """
    if not weights.masks():
        return None
    batch, size = len(idx), train.frames.shape[1]
    weight = torch.ones(batch, 1, size, size)
    if train.figures is not None:
        figures = torch.from_numpy(train.figures[idx])[:, None]  # [B, 1, S, S]
        weight = 1.0 + (weights.character_weight - 1.0) * figures.float()
    if weights.lookalike_share > 0:
        weight = _move_share(weight, torch.from_numpy(train.lookalike_shares[idx])[:, None], weights.lookalike_share)
    if weights.trousers_share > 0:  # the same for the trousers' pixels, after the look-alikes'
        weight = _move_share(weight, torch.from_numpy(train.trousers_shares[idx])[:, None], weights.trousers_share)
    return weight.to(device)


def _move_share(weight: torch.Tensor, parts: torch.Tensor, share: float) -> torch.Tensor:
    """``weight`` [B, 1, S, S] with ``share`` of each frame's weight moved onto the pixels of ``parts`` [B, 1, S, S]
    (each frame's parts sum to 1, or are all 0), spread as the parts are, never lowering a pixel's weight."""
    marked = parts > 0
    rest = (weight * ~marked).sum(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
    # the marked pixels together hold share / (1 - share) of the rest's weight: share of the frame's
    target = share / (1.0 - share) * rest * parts  # [B, 1, S, S]
    return torch.where(marked, torch.maximum(weight, target), weight)


class TokenizerTask:
    """One step: frames (their frozen-CLIP features), a random photo embedding per cast member, the descriptor."""

    unit = "frames"

    def __init__(self, model: TokenizerModel, encoder: KeyframeEncoder, train: FrameSet, features, text_embeds: np.ndarray,
                 bank: np.ndarray | None, character_text: np.ndarray | None, config: TokenizerTrainingConfig,
                 device: torch.device):
        self.model, self.encoder, self.train, self.features = model, encoder, train, features
        self.text_embeds, self.bank, self.character_text = text_embeds, bank, character_text
        # the identity target of each character: its mean reference-photo embedding, L2-normalised
        self.references = character_references(bank) if bank is not None else None
        self.config, self.device = config, device

    def sample(self, rng: np.random.Generator, size: int) -> dict:
        train, device = self.train, self.device
        idx = rng.integers(len(train), size=size)
        images = images_to_float(train.frames[idx]).to(device)
        if self.features is not None:
            patches = torch.from_numpy(self.features[0][idx]).to(device, torch.float32)
            pooled = torch.from_numpy(self.features[1][idx]).to(device, torch.float32)
        else:
            patches, pooled = self.encoder.vision_features(images)
        faces, face_mask = faces_for_batch(train.chars[idx], self.bank, rng)
        with_faces = self.bank is not None
        identity = None
        if self.references is not None:
            slots = np.where(face_mask[..., None], self.references[np.maximum(train.chars[idx], 0)], 0.0)
            identity = torch.from_numpy(slots.astype(np.float32)).to(device)
        described = None
        if self.character_text is not None:
            described = torch.from_numpy(character_text_for_batch(train.chars[idx], self.character_text)).to(device)
        return {"images": images, "patches": patches, "pooled": pooled,
                "faces": torch.from_numpy(faces).to(device) if with_faces else None,
                "face_mask": torch.from_numpy(face_mask).to(device) if with_faces else None,
                "text": torch.from_numpy(self.text_embeds[idx]).to(device), "identity": identity,
                "pixel_weight": loss_pixel_weight(train, idx, self.config.toy_loss, device), "described": described,
                "hidden": self.hidden_labels(idx)}

    def hidden_labels(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(palette [B], trousers [B, 3]) of the frames ``idx`` for the hidden-state head, or None without it."""
        if self.model.hidden_head is None:
            return None
        train, device = self.train, self.device
        return (torch.from_numpy(train.palette[idx]).to(device), torch.from_numpy(train.trousers[idx]).to(device))

    def loss(self, model: nn.Module, b: dict) -> dict[str, torch.Tensor]:
        loss, diffusion, aux, identity, hidden = model(
            b["images"], b["patches"], b["pooled"], b["faces"], b["face_mask"], b["text"], b["identity"], self.config,
            b["pixel_weight"], b["described"], b["hidden"])
        out = {"loss": loss, "diffusion": diffusion, "aux": aux, "identity": identity}
        return {**out, "hidden": hidden} if self.model.hidden_head is not None else out

    def save(self, folder: Path, model: TokenizerModel) -> None:
        """The training-only heads and the compressor they read, raw (``tokenizer-eval`` reads identities with them)."""
        with quiet_loading():
            model.compressor.save_pretrained(folder / "train" / "compressor")
            if model.aux_head is not None:
                model.aux_head.save_pretrained(folder / "train" / "aux_head")
            if model.identity_head is not None:
                model.identity_head.save_pretrained(folder / "train" / "identity_head")

    def export(self, folder: Path, model: TokenizerModel) -> None:
        """The exportable encoder and decoder (with the EMA weights)."""
        encoder = self.encoder
        with quiet_loading():
            KeyframeEncoder(encoder.vision_model, model.compressor, encoder.preprocessor, encoder.vision_feature_layer,
                            self.config.clip).save_pretrained(folder / "encoder")
            model.decoder.save_pretrained(folder / "decoder")


def train_tokenizer(config: TokenizerTrainingConfig, out: str | Path, resume: str = "auto",
                    given: Collection[str] | None = None) -> Path:
    """Train (or resume) the keyframe tokenizer; returns the newest checkpoint (holding ``encoder/`` and ``decoder/``).

    On resume the saved settings hold, except the fields named in ``given`` (by default: those not at their defaults).
    """
    # before anything is written to the run folder or rendered
    check_config(config)
    check_dataset_masks(config.data, bool(config.toy_loss.masks()))
    out = Path(out)
    start_from = resolve_resume(resume, out)
    if start_from is not None:
        # resume with the saved settings; the options given now override them
        config = resumed_config(TokenizerTrainingConfig, out / "train_config.json", config, given)
        check_config(config)
        check_dataset_masks(config.data, bool(config.toy_loss.masks()))
    source = open_frame_source(config.data, config.world_seed, config.seed)
    source.check(masks=bool(config.toy_loss.masks()))
    clip_path = str(TOY_CLIP) if config.clip == "toy" else config.clip
    clip_path = str(Path(clip_path).resolve()) if Path(clip_path).exists() else clip_path
    face_path = _face_embedder_path(config.face_embedder)
    if config.character_text and face_path is None:
        raise InputError("--character-text adds the descriptions to the face slots: it needs the face group.",
                         hint="Leave --face-embedder at auto (or name an ONNX file), or add --no-character-text.")
    if face_path is not None and not source.toy:
        raise InputError(f"--data {config.data}: the face group needs each frame's cast (toy-world labels), which "
                         "these frames do not carry.", hint="Add --face-embedder none --no-character-text.")
    if config.hidden_weight > 0 and not source.toy:
        raise InputError(f"--hidden-weight {config.hidden_weight} reads the toy world's hidden-state labels, which "
                         f"the frames in {source.describe()} do not carry.", hint="Set --hidden-weight 0.")
    # a bad --init or --init-unet fails before any data is rendered or embedded
    if config.init and config.init_unet:
        raise InputError("--init starts the whole tokenizer from trained weights, --init-unet only its UNet: give one.")
    init_source = ASSETS / "models" / "toy-tokenizer" if config.init == "toy" else Path(config.init)
    init = _tokenizer_folder(init_source) if config.init and start_from is None else None
    init_unet = _unet_folder(Path(config.init_unet)) if config.init_unet and start_from is None else None
    config.clip = clip_path
    config.face_embedder = str(face_path) if face_path else "none"
    out.mkdir(parents=True, exist_ok=True)
    set_threads_from_env()

    # Without a face embedder the face projection gets no gradient: let DDP (accelerate launch) allow that.
    accelerator = make_accelerator(config.mixed_precision, config.grad_accum,
                                   kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    if accelerator.is_main_process:
        save_config(config, out / "train_config.json")
    device = accelerator.device
    torch.manual_seed(config.seed)

    # ---- data: frames, descriptor embeddings, face-embedding bank ----------------------------
    # Under `accelerate launch` the main process renders and embeds once and writes the caches; the
    # others then read them, instead of every process writing the same files at once.
    with accelerator.main_process_first():
        masks = (*config.toy_loss.masks(), *(["hidden"] if config.hidden_weight > 0 else []))
        train = source.load(config.num_frames, config.image_size, out / "frames.npz", masks=masks)
        if config.hidden_weight > 0 and (train.palette is None or train.trousers is None):
            raise InputError(f"--hidden-weight {config.hidden_weight}: the training frames ({source.describe()}) carry "
                             "no hidden-state labels (palette, trousers).",
                             hint="Train on toy-world renders (leave --data out) or a toy dataset written with "
                                  "hidden state, or set --hidden-weight 0.")
        text_encoder = TextEncoder.from_pretrained(clip_path)
        # each cache is keyed by what it was made from, so one copied from another run is rebuilt, not reused
        text_cache = out / "descriptor_embeds.npz"
        text_key = content_key("descriptor embeddings", train.descriptors, model_key(clip_path))
        text_embeds = (load_keyed_cache(text_cache, text_key) or {}).get("embeds")
        if text_embeds is None:
            console.print(f"embedding {len(train)} descriptors")
            text_embeds = text_encoder.encode(train.descriptors, batch_size=256).numpy()
            save_keyed_cache(text_cache, text_key, embeds=text_embeds)
        bank = None
        if face_path is not None:
            bank_cache = out / "face_bank.npz"
            bank_key = content_key("face bank", train.world_seed, model_key(face_path), config.photos_per_character,
                                   config.seed)
            bank = (load_keyed_cache(bank_cache, bank_key) or {}).get("bank")
            if bank is None:
                bank = face_embedding_bank(train.world_seed, face_path, config.photos_per_character, config.seed)
                save_keyed_cache(bank_cache, bank_key, bank=bank)
        character_text = character_text_embeddings(train.world_seed, text_encoder) if config.character_text else None  # [C, Dt]

    # ---- models (a resumed run's weights are loaded by fit) -------------------------------------
    decoder = build_toy_decoder(config, text_encoder.embed_dim)
    compressor = None
    if init is not None:
        with quiet_loading():
            trained = KeyframeDecoder.from_pretrained(init / "decoder")
            compressor = load_pretrained(TokenCompressor, str(init / "encoder" / "compressor"), "token compressor")
        check_same_shapes(decoder, trained, config.init, "decoder")
        decoder = KeyframeDecoder(trained.unet, trained.context, decoder.scheduler, None, "ddim",
                                  position_channels=config.position_channels)
        console.print(f"compressor and decoder initialised from {config.init}")
    if init_unet is not None:
        with quiet_loading():
            unet = load_pretrained(UNet2DConditionModel, str(init_unet), "UNet to start from")
        decoder = KeyframeDecoder(unet, decoder.context, decoder.scheduler, None, "ddim",
                                  position_channels=config.position_channels)
        console.print(f"UNet initialised from {config.init_unet}")
    encoder = KeyframeEncoder.from_vision_model(
        clip_path, compressor, vision_feature_layer=config.vision_feature_layer,
        num_tokens=config.num_tokens, token_dim=config.token_dim,
        width=config.compressor_width, num_layers=config.compressor_layers,
    )
    vision_cfg = encoder.vision_model.config
    aux_head = None
    if config.aux_weight > 0:
        aux_head = TokenReconstructionHead(
            num_tokens=config.num_tokens, token_dim=config.token_dim,
            num_patches=(vision_cfg.image_size // vision_cfg.patch_size) ** 2, vision_dim=vision_cfg.hidden_size,
            image_embed_dim=vision_cfg.hidden_size,
        )
    identity_head = None
    if bank is not None and config.identity_weight > 0:
        identity_head = TokenIdentityHead(num_tokens=config.num_tokens, token_dim=config.token_dim, max_faces=3,
                                          face_dim=bank.shape[-1])
    hidden_head = None
    if config.hidden_weight > 0:
        from mdream.toyworld.world import HIDDEN_ATTRIBUTES

        hidden_head = TokenHiddenHead(config.num_tokens, config.token_dim, len(HIDDEN_ATTRIBUTES["palette"]),
                                      len(HIDDEN_ATTRIBUTES["trousers"]))
    model = TokenizerModel(encoder.compressor, decoder, aux_head, identity_head, hidden_head)
    console.print(f"training on {len(train)} frames ({source.describe()}); faces: {bank is not None}", highlight=False)
    encoder.vision_model.to(device)
    encoder.preprocessor.to(device)
    with accelerator.main_process_first():
        features = _cached_vision_features(encoder, train, out, config) if config.cache_features else None
    task = TokenizerTask(model, encoder, train, features, text_embeds, bank, character_text, config, device)
    result = fit(task, config, out, accelerator, resume_from=start_from, name="train tokenizer")
    return result.checkpoint
