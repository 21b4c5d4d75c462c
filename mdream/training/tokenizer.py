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

import json
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import DistributedDataParallelKwargs
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from torch import nn

from mdream.errors import InputError
from mdream.models.compressor import TokenCompressor, TokenIdentityHead, TokenReconstructionHead
from mdream.models.decoder import POSITION_CHANNEL_CHOICES, ContextProjector, KeyframeDecoder
from mdream.models.encoders import KeyframeEncoder, TextEncoder, images_to_float
from mdream.models.loading import load_pretrained, quiet_loading
from mdream.training.common import (
    RunConfig,
    Throughput,
    TimeBudget,
    checkpoint_dir,
    console,
    content_key,
    finish_checkpoint,
    load_keyed_cache,
    lr_at,
    make_accelerator,
    model_key,
    parse_int_tuple,
    resolve_resume,
    resumed_config,
    save_config,
    save_keyed_cache,
    set_threads_from_env,
    training_progress,
)
from mdream.training.data import (
    FrameSet,
    character_references,
    character_text_embeddings,
    character_text_for_batch,
    check_dataset_masks,
    face_embedding_bank,
    faces_for_batch,
    frame_set,
)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_FACE_EMBEDDER = ASSETS / "eval" / "toy_face_recognition.onnx"
TOY_CLIP = ASSETS / "models" / "toy-clip"


@dataclass
class TokenizerTrainingConfig(RunConfig):
    """Settings of a keyframe-tokenizer run (saved as train_config.json beside its checkpoints)."""

    # RunConfig's fields, with this run's defaults (their docstrings are RunConfig's)
    num_frames: int = 30000
    steps: int = 6000
    warmup: int = 200
    checkpoint_every: int = 200

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
    layers_per_block: int = 2
    """ResNet layers per UNet level."""
    position_channels: int = 0
    """x, y coordinate channels appended to the UNet input, so its cross-attention knows where each pixel is (2, or 0: none)."""
    attention_heads: int = 8
    """Attention heads in each UNet transformer block (fewer, wider heads run faster on CPU)."""
    only_cross_attention: bool = False
    """UNet transformer blocks attend only to the context, not to other pixels (cheaper; the 8x8 mid block keeps self-attention)."""
    time_scale_shift: bool = True
    """ResNets modulate their features by scale and shift from the time(+pooled context) embedding (AdaGN)."""
    cross_attention_dim: int = 64
    """Width of the decoder's context (each group is projected to it)."""
    pooled_dim: int = 128
    """Width of the pooled context added to the UNet's time embedding."""
    pooled_faces: str = "slots"
    """Faces in the pooled context: slots (each position, so the time embedding knows who is where) or mean."""
    character_text: bool = False
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
    drop_faces: float = 0.5
    """Probability of replacing a frame's face group by the null face."""
    drop_text: float = 0.5
    """Probability of replacing a frame's descriptor by the null descriptor."""
    aux_weight: float = 1.0
    """Weight of the auxiliary loss (predict CLIP's patch tokens and image embedding from the tokens)."""
    identity_weight: float = 1.0
    """Weight of the identity auxiliary loss (predict each slot's face embedding from the tokens; needs the face group)."""
    character_weight: float = 1.0
    """Diffusion-loss weight of the pixels the characters' figures cover (1: plain; >1 needs rendered frames, not --data)."""
    head_weight: float = 0.0
    """Diffusion-loss weight of the figure pixels on the cast's heads, where eye colour and skin show (0: --character-weight's)."""
    lookalike_share: float = 0.0
    """Share of each frame's diffusion-loss weight moved onto the pixels that tell its cast from their look-alikes (an iris, the skin; 0: off)."""
    lookalike_split: str = "pixel"
    """How --lookalike-share is spread: 'pixel' (evenly over all look-alike pixels) or 'pair' (an equal part per look-alike pair in view, so an iris keeps its part beside a whole-figure pair)."""
    init_unet: str = ""
    """Start the UNet from this run's checkpoint (or a decoder/UNet folder) instead of random weights; the compressor and context start fresh (e.g. after changing the frozen CLIP)."""
    cache_features: bool = True
    """Run the frozen CLIP once over the training frames and keep its features (no image augmentation is used)."""
    ema_decay: float = 0.999
    """EMA decay of the exported weights (with EMA warm-up)."""
    log_every: int = 25
    """Steps between log lines (loss, throughput)."""


class TokenizerModel(nn.Module):
    """Everything that trains, behind one forward() so accelerate/DDP can wrap it."""

    def __init__(self, compressor: TokenCompressor, decoder: KeyframeDecoder, aux_head: TokenReconstructionHead | None,
                 identity_head: TokenIdentityHead | None = None):
        super().__init__()
        self.compressor = compressor
        self.decoder = decoder
        self.aux_head = aux_head
        self.identity_head = identity_head

    def forward(self, images, patches, image_embeds, faces, face_mask, text, identity_target, config: TokenizerTrainingConfig,
                pixel_weight=None, character_text=None):
        # images [B, 3, S, S] in [-1, 1]; patches [B, 1+P, Dv] frozen CLIP states; image_embeds [B, Dv]
        # identity_target [B, 3, 512] reference face embedding of the character in each slot (or None)
        # pixel_weight [B, 1, S, S] loss weight per pixel (or None: uniform)
        # character_text [B, 3, Dt] description embedding of the character in each slot (or None)
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
        loss = diffusion + config.aux_weight * aux + config.identity_weight * identity
        return loss, diffusion.detach(), aux.detach(), identity.detach()


def check_unet_settings(config: TokenizerTrainingConfig) -> tuple[tuple[int, ...], int]:
    """The toy UNet's widths and number of attention levels, after checking the settings that shape it."""
    widths = parse_int_tuple(config.unet_widths, "--unet-widths")
    attn = max(1, min(config.cross_attention_levels, len(widths)))
    if config.attention_heads < 1 or any(w % config.attention_heads for w in widths[len(widths) - attn:]):
        raise InputError(f"--attention-heads {config.attention_heads} must divide the widths of the attention levels "
                         f"({', '.join(map(str, widths[len(widths) - attn:]))}).")
    if config.position_channels not in POSITION_CHANNEL_CHOICES:
        raise InputError(f"--position-channels must be 0 or 2 (x, y), got {config.position_channels}.")
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


def weights_pixels(config: TokenizerTrainingConfig) -> bool:
    """Whether the diffusion loss weights pixels unevenly, which needs the rendered frames' masks."""
    return config.character_weight != 1.0 or config.head_weight > 0 or config.lookalike_share > 0


def loss_pixel_weight(train: FrameSet, idx: np.ndarray, config: TokenizerTrainingConfig,
                      device: torch.device | str = "cpu") -> torch.Tensor | None:
    """float32 [B, 1, S, S]: the diffusion loss's weight of each pixel of the frames ``idx`` (None: all ones).

    The characters are what the analyser (and a viewer) reads identity from, but a small share of
    the pixels: the plain loss spends the UNet on the background, hence ``character_weight`` on the
    figures and ``head_weight`` on their heads. Look-alikes differ in a few pixels (an iris is one or
    two pixels at 32 px), which a per-pixel weight either misses or, on a pair that differs in a
    whole outfit, turns into most of the frame's loss; ``lookalike_share`` instead moves a fixed share
    of each frame's weight onto its look-alike pixels (never lowering a pixel's weight), so the cost
    to the background is bounded and the weight per pixel grows as the difference shrinks.
    ``lookalike_split`` 'pair' gives each look-alike pair in view an equal part of that share, so a
    two-pixel iris beside a height pair's whole figure is not left with a hundredth of it.
    """
    if not weights_pixels(config):
        return None
    batch, size = len(idx), train.frames.shape[1]
    weight = torch.ones(batch, 1, size, size)
    if train.figures is not None:
        figures = torch.from_numpy(train.figures[idx])[:, None]  # [B, 1, S, S]
        weight = 1.0 + (config.character_weight - 1.0) * figures.float()
    if config.head_weight > 0:
        heads = torch.from_numpy(train.heads[idx])[:, None]  # [B, 1, S, S]
        weight = torch.where(heads, config.head_weight, weight)
    if config.lookalike_share > 0:
        parts = torch.from_numpy(train.lookalike_shares[idx])[:, None]  # [B, 1, S, S], each frame's sums to 1 (or 0)
        look = parts > 0
        if config.lookalike_split == "pixel":  # every look-alike pixel the same part
            parts = look / look.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
        rest = (weight * ~look).sum(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
        # the look-alike pixels together hold share / (1 - share) of the rest's weight: share of the frame's
        target = config.lookalike_share / (1.0 - config.lookalike_share) * rest * parts  # [B, 1, S, S]
        weight = torch.where(look, torch.maximum(weight, target), weight)
    return weight.to(device)


def train_tokenizer(config: TokenizerTrainingConfig, out: str | Path, resume: str = "auto",
                    given: Collection[str] | None = None) -> Path:
    """Train (or resume) the keyframe tokenizer; returns the newest checkpoint (holding ``encoder/`` and ``decoder/``).

    On resume the saved settings hold, except the fields named in ``given`` (by default: those not at their defaults).
    """
    if not config.character_weight > 0:
        raise InputError(f"--character-weight must be > 0, got {config.character_weight}.")
    if not config.head_weight >= 0:
        raise InputError(f"--head-weight must be >= 0 (0: the same as --character-weight), got {config.head_weight}.")
    if not 0 <= config.lookalike_share < 1:
        raise InputError(f"--lookalike-share must be in [0, 1) (0: off), got {config.lookalike_share}.")
    if config.lookalike_split not in ("pixel", "pair"):
        raise InputError(f"--lookalike-split must be 'pixel' or 'pair', got '{config.lookalike_split}'.")
    # before anything is written to the run folder
    check_dataset_masks(config.data, weights_pixels(config))
    check_unet_settings(config)  # before anything is written or rendered
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    set_threads_from_env()
    start_from = resolve_resume(resume, out)
    if start_from is not None:
        # resume with the saved settings; the options given now override them
        config = resumed_config(TokenizerTrainingConfig, out / "train_config.json", config, given)
    clip_path = str(TOY_CLIP) if config.clip == "toy" else config.clip
    clip_path = str(Path(clip_path).resolve()) if Path(clip_path).exists() else clip_path
    config.clip = clip_path
    face_path = _face_embedder_path(config.face_embedder)
    if config.character_text and face_path is None:
        # before any frame is rendered or embedded
        raise InputError("--character-text adds the descriptions to the face slots: it needs the face group.",
                         hint="Leave --face-embedder at auto (or name an ONNX file).")
    # a bad --init-unet fails before any data is rendered or embedded
    init_unet = _unet_folder(Path(config.init_unet)) if config.init_unet and start_from is None else None
    config.face_embedder = str(face_path) if face_path else "none"

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
        train: FrameSet = frame_set(config.data, config.world_seed, config.num_frames, config.image_size, config.seed,
                                    out / "frames.npz", figures=config.character_weight != 1.0,
                                    heads=config.head_weight > 0, lookalikes=config.lookalike_share > 0)
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

    # ---- models ---------------------------------------------------------------------------------
    if start_from is not None:
        with quiet_loading():
            compressor = load_pretrained(TokenCompressor, str(start_from / "train" / "compressor"), "compressor")
            unet = load_pretrained(UNet2DConditionModel, str(start_from / "train" / "unet"), "UNet")
            context = load_pretrained(ContextProjector, str(start_from / "train" / "context"), "context projector")
            aux_path = start_from / "train" / "aux_head"
            aux_head = load_pretrained(TokenReconstructionHead, str(aux_path), "aux head") if aux_path.is_dir() else None
            id_path = start_from / "train" / "identity_head"
            identity_head = load_pretrained(TokenIdentityHead, str(id_path), "identity head") if id_path.is_dir() else None
        fresh = build_toy_decoder(config, text_encoder.embed_dim)
        decoder = KeyframeDecoder(unet, context, fresh.scheduler, None, "ddim", position_channels=config.position_channels)
    else:
        decoder = build_toy_decoder(config, text_encoder.embed_dim)
        if init_unet is not None:
            with quiet_loading():
                unet = load_pretrained(UNet2DConditionModel, str(init_unet), "UNet to start from")
            decoder = KeyframeDecoder(unet, decoder.context, decoder.scheduler, None, "ddim",
                                      position_channels=config.position_channels)
            console.print(f"UNet initialised from {config.init_unet}")
        compressor = None
        aux_head = None
        identity_head = None
    encoder = KeyframeEncoder.from_vision_model(
        clip_path, compressor, vision_feature_layer=config.vision_feature_layer,
        num_tokens=config.num_tokens, token_dim=config.token_dim,
        width=config.compressor_width, num_layers=config.compressor_layers,
    )
    vision_cfg = encoder.vision_model.config
    if aux_head is None and config.aux_weight > 0:
        aux_head = TokenReconstructionHead(
            num_tokens=config.num_tokens, token_dim=config.token_dim,
            num_patches=(vision_cfg.image_size // vision_cfg.patch_size) ** 2, vision_dim=vision_cfg.hidden_size,
            image_embed_dim=vision_cfg.hidden_size,
        )
    if identity_head is None and bank is not None and config.identity_weight > 0:
        identity_head = TokenIdentityHead(num_tokens=config.num_tokens, token_dim=config.token_dim, max_faces=3,
                                          face_dim=bank.shape[-1])
    # the identity target of each character: its mean reference-photo embedding, L2-normalised
    references = character_references(bank) if bank is not None else None
    model = TokenizerModel(encoder.compressor, decoder, aux_head, identity_head)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # foreach: one fused update over all tensors, not a Python loop over ~400 of them; the same
    # arithmetic, but the loop cost about 0.07 s of a 0.55 s CPU step (cProfile, batch 16)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    ema = EMAModel(trainable, decay=config.ema_decay, use_ema_warmup=True, power=2 / 3, foreach=True)
    step = 0
    if start_from is not None:
        state = torch.load(start_from / "train" / "state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        step = json.loads((start_from / "state.json").read_text())["step"]
        console.print(f"resumed from {start_from} at step {step}")
    n_params = sum(p.numel() for p in trainable)
    console.print(f"training {n_params / 1e6:.2f} M parameters on {len(train)} frames ({device}); faces: {bank is not None}")
    encoder.vision_model.to(device)
    encoder.preprocessor.to(device)
    with accelerator.main_process_first():
        features = _cached_vision_features(encoder, train, out, config) if config.cache_features else None
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(device)
    rng = np.random.default_rng([config.seed, step, accelerator.process_index])
    micro = config.batch_size // config.grad_accum
    meter = Throughput()

    def save(step: int, losses: dict) -> None:
        if not accelerator.is_main_process:
            return
        folder = checkpoint_dir(out, step)
        unwrapped = accelerator.unwrap_model(model)
        with quiet_loading():
            unwrapped.compressor.save_pretrained(folder / "train" / "compressor")
            unwrapped.decoder.unet.save_pretrained(folder / "train" / "unet")
            unwrapped.decoder.context.save_pretrained(folder / "train" / "context")
            if unwrapped.aux_head is not None:
                unwrapped.aux_head.save_pretrained(folder / "train" / "aux_head")
            if unwrapped.identity_head is not None:
                unwrapped.identity_head.save_pretrained(folder / "train" / "identity_head")
            torch.save({"optimizer": optimizer.state_dict(), "ema": ema.state_dict()}, folder / "train" / "state.pt")
            # the exportable models carry the EMA weights
            ema.store(trainable)
            ema.copy_to(trainable)
            KeyframeEncoder(encoder.vision_model, unwrapped.compressor, encoder.preprocessor,
                            encoder.vision_feature_layer, clip_path).save_pretrained(folder / "encoder")
            unwrapped.decoder.save_pretrained(folder / "decoder")
            ema.restore(trainable)
            # the settings travel with the checkpoint, so a copied-out checkpoint still says how it was made
            shutil.copy(out / "train_config.json", folder / "train_config.json")
        finish_checkpoint(out, folder, {"step": step, **losses}, config.keep_checkpoints)

    running = {"loss": 0.0, "diffusion": 0.0, "aux": 0.0, "identity": 0.0}
    count = 0
    budget = TimeBudget(config.max_minutes, start_from)
    with training_progress("train tokenizer", disable=not accelerator.is_main_process) as bar:
        task = bar.add_task("tokenizer", total=config.steps, completed=step, status="")
        spent_already = budget.spent_before_start(step)
        while step < config.steps and not spent_already:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config.steps, config.lr, config.warmup, time_fraction=budget.fraction())
            for _ in range(config.grad_accum):
                idx = rng.integers(len(train), size=micro)
                images = images_to_float(train.frames[idx]).to(device)
                if features is not None:
                    patches = torch.from_numpy(features[0][idx]).to(device, torch.float32)
                    pooled = torch.from_numpy(features[1][idx]).to(device, torch.float32)
                else:
                    patches, pooled = encoder.vision_features(images)
                faces, face_mask = faces_for_batch(train.chars[idx], bank, rng)
                faces_t = torch.from_numpy(faces).to(device) if bank is not None else None
                mask_t = torch.from_numpy(face_mask).to(device) if bank is not None else None
                identity_t = None
                if references is not None:
                    slots = np.where(face_mask[..., None], references[np.maximum(train.chars[idx], 0)], 0.0)
                    identity_t = torch.from_numpy(slots.astype(np.float32)).to(device)
                text = torch.from_numpy(text_embeds[idx]).to(device)
                described = None
                if character_text is not None:
                    described = torch.from_numpy(character_text_for_batch(train.chars[idx], character_text)).to(device)
                pixel_weight = loss_pixel_weight(train, idx, config, device)
                with accelerator.accumulate(model), accelerator.autocast():
                    loss, diffusion, aux, identity = model(images, patches, pooled, faces_t, mask_t, text, identity_t, config,
                                                           pixel_weight, described)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(trainable, 1.0)
                    optimizer.step()
                    optimizer.zero_grad()
            ema.step(trainable)
            step += 1
            running["loss"] += loss.item()
            running["diffusion"] += diffusion.item()
            running["aux"] += aux.item()
            running["identity"] += identity.item()
            count += 1
            rate = meter.update(step * config.batch_size * accelerator.num_processes)
            bar.update(task, completed=step, status=f"loss {loss.item():.4f} | {rate:.1f} frames/s")
            if step % config.log_every == 0 and accelerator.is_main_process:
                means = {k: round(v / count, 5) for k, v in running.items()}
                console.print(f"step {step}: loss {means['loss']:.4f} (diffusion {means['diffusion']:.4f}, aux {means['aux']:.4f}, identity {means['identity']:.4f}), {rate:.1f} frames/s", highlight=False)
                running = dict.fromkeys(running, 0.0)
                count = 0
            out_of_time = budget.spent()
            if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
                save(step, {"loss": round(loss.item(), 5), "elapsed_s": round(budget.elapsed(), 3)})
            if out_of_time:
                console.print(f"training-time budget of {config.max_minutes:g} min spent at step {step}")
                break
    accelerator.wait_for_everyone()
    return checkpoint_dir(out, step)
