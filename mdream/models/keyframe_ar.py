"""The autoregressive keyframe model: a causal-LM backbone reads the script and predicts keyframe tokens.

MovieDreamer (Zhao et al. 2024, arXiv 2407.16655) drives a LLaMA-class transformer with the
multimodal script and every keyframe so far, and predicts the next keyframe's N continuous visual
tokens one by one. Here any transformers causal LM is driven through ``inputs_embeds``; the
sequence is built from these pieces (H = the backbone's hidden size):

    prefix:  [BOS] [prefix text tokens] ([REF] ref_tok_0 .. ref_tok_{N-1})*      (kept for the whole movie)
    shot:    [SHOT] identifier tokens  descriptor  face_slot*  [FRAME] tok_0 .. tok_{N-1}

- identifier and prefix text: the backbone's own input embedding table (its tokenizer);
- descriptor: the pooled text-encoder vector through an MLP;
- faces: each present cast slot's face embedding through an MLP plus a slot embedding (left,
  centre, right; absent slots are skipped), plus the slot's description embedding through an MLP
  when ``character_text`` is on;
- keyframe tokens: through the input MLP plus a per-index embedding;
- reference frames (few-shot context, e.g. the script's ``style.reference_frames``): each frame's N
  tokens through the *same* keyframe-token input MLP and per-index embedding, after a learned
  [REF] marker. Sharing the MLP puts a reference and a generated keyframe of the same look at the same
  point of the backbone's input space, so what the backbone learns to copy from earlier shots
  (palette, clothing) it can copy from a reference too, and a reference costs no extra parameters;
  the [REF] marker (the "reference" type embedding) tells it that no shot text goes with them.
  They sit in the fixed prefix, so a sliding window never drops them. ``max_references`` records
  how many a model was trained with (0: trained without; it then works zero-shot only).

With ``faces`` off (the no-face-embeddings ablation) no face embedding enters the sequence: a
present cast slot is then its slot embedding plus its description embedding (``character_text``),
or is left out when ``character_text`` is off too.

The hidden state at [FRAME] predicts tok_0 and the one at tok_j predicts tok_{j+1}; a token head
(``mdream.models.token_heads``: a Gaussian mixture or MAR's diffusion head) turns it into a loss or
a sample. Generation (:meth:`KeyframeAR.start_movie`, :meth:`KeyframeAR.generate_movie`) keeps a
KV cache over a fixed prefix plus a window of the most recent shots, so time and memory per keyframe
stay flat however long the movie.

Folder layout (``save_pretrained``): ``keyframe_ar.json`` (the :class:`KeyframeARConfig` fields,
``_class_name``, ``backbone``: a folder relative to this one, an absolute folder or a hub id,
``tokenizer``, ``lora``), ``keyframe_ar.safetensors`` (projectors and head), ``tokenizer/``, and
``backbone/`` when the backbone is saved here, ``lora/`` (a peft adapter) when LoRA is on.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mdream.errors import CorruptArtifactError, InputError
from mdream.models.loading import load_pretrained, read_json, resolve_reference, write_json
from mdream.models.offload import execution_device, onload
from mdream.models.registry import register_model
from mdream.models.static_decode import StaticDecoder, rotate_keys
from mdream.models.token_heads import TokenHead, build_head

KEYFRAME_AR_CONFIG = "keyframe_ar.json"
KEYFRAME_AR_WEIGHTS = "keyframe_ar.safetensors"


@dataclass
class KeyframeARConfig:
    """Everything besides the backbone that defines a keyframe AR model (saved in ``keyframe_ar.json``)."""

    num_tokens: int = 2
    """N: visual tokens per keyframe (the keyframe encoder's ``num_tokens``)."""
    token_dim: int = 128
    """d: width of one visual token (the keyframe encoder's ``token_dim``)."""
    text_dim: int = 64
    """Width of the pooled descriptor embedding (the text encoder's ``embed_dim``)."""
    face_dim: int = 512
    """Width of a face embedding (ArcFace-style, L2-normalised)."""
    max_faces: int = 3
    """Cast slots per shot (left, centre, right)."""
    character_text: bool = False
    """Add each cast member's description embedding (``text_dim``) to their face slot."""
    projector_dim: int | None = None
    """Hidden width of the MLP projectors; None = the backbone's hidden size."""
    shot_marker: bool = True
    """Start every shot with a learned marker embedding."""
    max_identifier_tokens: int = 32
    """Identifier text is truncated to this many backbone tokens."""
    head: str = "gmm"
    """Token head by registry name: ``gmm`` or ``diffusion`` (``mdream.models.token_heads.TOKEN_HEADS``)."""
    head_config: dict = field(default_factory=dict)
    """Keyword arguments of the token head (its defaults are filled in when the model is built)."""
    context_window: int = 1024
    """Default generation window in positions (prefix + recent shots); older shots slide out."""
    faces: bool = True
    """Put each present cast slot's face embedding into the sequence (False: the no-face-embeddings ablation)."""
    max_references: int = 0
    """Reference frames per sequence the model was trained with in its prefix (0: trained without; the keyframes
    stage then leaves a script's reference frames out)."""

    @classmethod
    def from_dict(cls, data: Mapping) -> KeyframeARConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ShotCondition:
    """One shot's conditioning, as the encode stage writes it (plus the identifier text)."""

    identifier: str
    """The shot's short identifier text, embedded with the backbone's own tokenizer."""
    descriptor_embed: torch.Tensor
    """Pooled descriptor embedding ``[text_dim]``."""
    face_embeds: torch.Tensor | None = None
    """Face embedding per cast slot ``[K, face_dim]`` (zeros where empty)."""
    face_mask: torch.Tensor | None = None
    """``[K]`` bool, True where the slot holds a character; None = all given slots."""
    character_text_embeds: torch.Tensor | None = None
    """Each slot's character description embedding ``[K, text_dim]`` (used when ``character_text`` is on)."""

    @classmethod
    def from_conditioning(cls, identifier: str, conditioning: Mapping[str, torch.Tensor]) -> ShotCondition:
        """From the encode stage's ``conditioning`` tensors (face_embeds, face_mask, descriptor_embed, ...)."""
        return cls(
            identifier=identifier,
            descriptor_embed=conditioning["descriptor_embed"],
            face_embeds=conditioning.get("face_embeds"),
            face_mask=conditioning.get("face_mask"),
            character_text_embeds=conditioning.get("character_text_embeds"),
        )


@dataclass
class MovieSample:
    """One training sequence: a run of consecutive shots and their true keyframe tokens."""

    shots: Sequence[ShotCondition]
    tokens: torch.Tensor
    """``[S, N, d]``: the keyframe encoder's tokens of each shot's frame."""
    references: torch.Tensor | None = None
    """``[R, N, d]`` reference-frame tokens for the prefix (few-shot context), or None."""
    prefix_text: str | None = None
    """Text for the prefix (e.g. the script's title and scene list), or None."""


@dataclass
class KeyframeAROutput:
    """What ``KeyframeAR.forward`` returns."""

    loss: torch.Tensor
    """The token head's loss over every keyframe token of the batch (scalar)."""
    parts: dict[str, torch.Tensor]
    """The loss's named components (detached)."""
    hidden_states: torch.Tensor
    """``[B, S, N, H]``: the hidden state that predicts each token (zeros for padded shots)."""
    shot_mask: torch.Tensor
    """``[B, S]`` bool: True for real shots (samples may have different shot counts)."""


@dataclass
class MovieTokens:
    """What ``KeyframeAR.generate_movie`` returns."""

    tokens: torch.Tensor
    """``[S, N, d]`` float32 on CPU: every shot's keyframe tokens (given ones as they were)."""
    given: torch.Tensor
    """``[S]`` bool: True where the shot's tokens were given rather than predicted."""
    cache_lengths: list[int]
    """KV cache length after each shot (stays within the window)."""
    rebuilds: int
    """How many times old shots slid out and the cache was recomputed."""


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class ARProjectors(nn.Module):
    """Input projectors and learned marker embeddings (everything that maps the script into the backbone)."""

    def __init__(self, config: KeyframeARConfig, hidden_size: int):
        super().__init__()
        c, h = config, hidden_size
        p = c.projector_dim or h
        self.descriptor = mlp(c.text_dim, p, h)
        self.face = mlp(c.face_dim, p, h) if c.faces else None
        self.character_text = mlp(c.text_dim, p, h) if c.character_text else None
        self.token_in = mlp(c.token_dim, p, h)
        self.face_slot = nn.Parameter(torch.randn(c.max_faces, h) * 0.02)
        self.token_pos = nn.Parameter(torch.randn(c.num_tokens, h) * 0.02)
        self.frame_start = nn.Parameter(torch.randn(h) * 0.02)
        self.reference_start = nn.Parameter(torch.randn(h) * 0.02)
        self.shot_start = nn.Parameter(torch.randn(h) * 0.02) if c.shot_marker else None


def _cache_argument(decoder: nn.Module) -> str:
    """The keyword the backbone's forward takes its KV cache by (``cache`` in newer transformers)."""
    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


#: Backbones whose attention rotates queries and keys with Llama's ``rotate_half`` rotary embedding.
ROPE_SHIFT_MODEL_TYPES = ("llama", "mistral", "qwen2")


def rope_shift_supported(decoder: nn.Module) -> bool:
    """True when cached keys of ``decoder`` can be moved to other positions exactly by a rotation.

    That holds for Llama-style attention with the plain rotary embedding (``rope_type`` default, no
    attention scaling): the key at position p is ``R(p) k`` and ``R(-d) R(p) k = R(p - d) k``.
    """
    rotary = getattr(decoder, "rotary_emb", None)
    config = getattr(decoder, "config", None)
    return (getattr(config, "model_type", None) in ROPE_SHIFT_MODEL_TYPES and rotary is not None
            and getattr(rotary, "rope_type", None) == "default"
            and float(getattr(rotary, "attention_scaling", 0.0)) == 1.0)


def _cache_layers(cache) -> list | None:
    """Each layer of a plain transformers dynamic KV cache as an object with ``.keys`` and ``.values``; None for any
    other cache (sliding-window layers keep bookkeeping that cutting positions out would break)."""
    if hasattr(cache, "layers"):  # transformers >= 4.56: one DynamicLayer per layer
        plain = all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)
        return list(cache.layers) if plain else None
    if hasattr(cache, "key_cache") and hasattr(cache, "value_cache"):  # older DynamicCache: per-layer lists
        return [_ListSlot(cache.key_cache, cache.value_cache, i) for i in range(len(cache.key_cache))]
    return None


def cache_is_shiftable(cache) -> bool:
    """True for a plain dynamic KV cache, whose positions :func:`shift_cache` can cut out."""
    return _cache_layers(cache) is not None


class _ListSlot:
    """One layer of an older DynamicCache's key/value lists, seen as ``.keys`` and ``.values``."""

    def __init__(self, keys: list, values: list, index: int):
        self._k, self._v, self._i = keys, values, index

    keys = property(lambda self: self._k[self._i], lambda self, t: self._k.__setitem__(self._i, t))
    values = property(lambda self: self._v[self._i], lambda self, t: self._v.__setitem__(self._i, t))


def shift_cache(cache, decoder: nn.Module, start: int, count: int) -> None:
    """Cut positions ``[start, start + count)`` out of a KV cache, in place, and rotate the keys after
    them back by ``count`` positions, so that they are the keys a recomputation would cache there.

    keys, values: ``[B, heads, L, head_dim]`` per layer -> ``[B, heads, L - count, head_dim]``.
    Keys are cached after the rotary embedding, ``R(p) k``; ``R(-count)`` moves them to ``p - count``.
    """
    if count <= 0:
        return
    layers = _cache_layers(cache)
    if layers is None:
        raise TypeError(f"Cannot cut positions out of a {type(cache).__name__}.")
    onload(decoder)  # its rotary embedding runs here, outside a forward (under --offload, mdream.models.offload)
    for layer in layers:
        later = rotate_keys(decoder, layer.keys[..., start + count :, :], -count)  # [B, h, L', hd]
        layer.keys = torch.cat([layer.keys[..., :start, :], later], dim=-2)
        layer.values = torch.cat([layer.values[..., :start, :], layer.values[..., start + count :, :]], dim=-2)


def build_toy_llama(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                    num_kv_heads: int | None = None, intermediate_size: int | None = None,
                    max_position_embeddings: int = 4096, **ids) -> LlamaForCausalLM:
    """A small random Llama-architecture causal LM (the toy backbone and the tests' tiny one)."""
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_position_embeddings, **ids,
    )
    return LlamaForCausalLM(config)


@register_model()
class KeyframeAR(nn.Module):
    """Causal-LM backbone + projectors + token head: script and past keyframes -> next keyframe's tokens."""

    #: large sub-models that ``--offload`` moves to the device one at a time (mdream.models.offload)
    offload_units = ("decoder",)

    def __init__(self, backbone: nn.Module, tokenizer, config: KeyframeARConfig | None = None,
                 backbone_reference: str | None = None):
        super().__init__()
        config = config or KeyframeARConfig()
        config = dataclasses.replace(config, head_config=dict(config.head_config))  # the caller's stays as it was
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.backbone_reference = backbone_reference
        hidden = self.hidden_size
        self.projectors = ARProjectors(config, hidden)
        self.head: TokenHead = build_head(config.head, hidden, config.token_dim, **config.head_config)
        config.head_config = dict(self.head.config)
        self.config = config
        self._cache_kw = _cache_argument(self.decoder)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, source: str, tokenizer: str | None = None, config: KeyframeARConfig | None = None,
                      dtype: torch.dtype | None = None) -> KeyframeAR:
        """A fresh model around a pretrained causal LM (a Llama-class folder or hub id, e.g. LLaMA-2-7B).

        ``tokenizer``: a folder or hub id when the backbone's folder has no tokenizer files.
        """
        kwargs = {"dtype": dtype} if dtype is not None else {}
        backbone = load_pretrained(AutoModelForCausalLM, source, "keyframe AR backbone", **kwargs)
        tok = load_pretrained(AutoTokenizer, tokenizer or source, "keyframe AR tokenizer")
        local = Path(source)
        return cls(backbone, tok, config, backbone_reference=str(local.resolve()) if local.exists() else source)

    @classmethod
    def build_toy(cls, tokenizer_source: str, config: KeyframeARConfig | None = None, hidden_size: int = 64,
                  num_layers: int = 2, num_heads: int = 4, **llama_kwargs) -> KeyframeAR:
        """A random small Llama backbone sized to a tokenizer's vocabulary (e.g. the toy CLIP's word tokenizer)."""
        tok = load_pretrained(AutoTokenizer, str(tokenizer_source), "keyframe AR tokenizer")
        ids = {k: getattr(tok, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if getattr(tok, k) is not None}
        backbone = build_toy_llama(len(tok), hidden_size, num_layers, num_heads, **ids, **llama_kwargs)
        return cls(backbone, tok, config)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype | None = None, lora_trainable: bool = False) -> KeyframeAR:
        """Load a folder written by :meth:`save_pretrained` (``lora_trainable``: keep training the adapter)."""
        folder = Path(folder)
        cfg = read_json(folder / KEYFRAME_AR_CONFIG, "keyframe AR model")
        if cfg.get("_class_name") != "KeyframeAR" or "backbone" not in cfg:
            raise InputError(f"{folder / KEYFRAME_AR_CONFIG} does not describe a KeyframeAR model.")
        source = resolve_reference(folder, cfg["backbone"])
        kwargs = {"dtype": dtype} if dtype is not None else {}
        backbone = load_pretrained(AutoModelForCausalLM, source, "keyframe AR backbone", **kwargs)
        tok = load_pretrained(AutoTokenizer, resolve_reference(folder, cfg.get("tokenizer", "tokenizer")),
                              "keyframe AR tokenizer")
        model = cls(backbone, tok, KeyframeARConfig.from_dict(cfg), backbone_reference=source)
        if cfg.get("lora"):
            from peft import PeftModel

            try:
                model.backbone = PeftModel.from_pretrained(backbone, str(folder / cfg["lora"]), is_trainable=lora_trainable)
            except (OSError, ValueError) as exc:
                raise CorruptArtifactError(f"Could not load the LoRA adapter in {folder / cfg['lora']}: {exc}") from exc
        path = folder / KEYFRAME_AR_WEIGHTS
        if not path.is_file():
            raise InputError(f"keyframe AR model: {path} does not exist.")
        try:
            state = load_file(str(path))
            model.projectors.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("projectors.")})
            model.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        except (RuntimeError, SafetensorError) as exc:
            raise CorruptArtifactError(f"The keyframe AR weights in {path} do not fit its config: {exc}") from exc
        model.to(model.backbone.device)
        return model

    def save_pretrained(self, folder: str | Path, backbone_reference: str | None = None) -> None:
        """Write the folder layout described in the module docstring.

        The backbone is saved to ``backbone/`` unless ``backbone_reference`` names where its weights
        already are (relative to ``folder``, absolute, or a hub id). With LoRA on, only the adapter is
        saved (``lora/``) and the base weights are referenced (the ones the model was built from).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        reference = backbone_reference
        if reference is None and self.lora_active:
            reference = self.backbone_reference
            if reference is None:
                raise InputError(
                    "A LoRA-adapted backbone is saved as its adapter plus a reference to its base weights, "
                    "and this model's base has none.",
                    hint="Save the base backbone first and pass backbone_reference=..., or call merge_lora() before saving.",
                )
        if reference is None:
            self.backbone.save_pretrained(folder / "backbone")
            reference = "backbone"
        if self.lora_active:
            self.backbone.save_pretrained(folder / "lora")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        state = {f"projectors.{k}": v for k, v in self.projectors.state_dict().items()}
        state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / KEYFRAME_AR_WEIGHTS))
        write_json(folder / KEYFRAME_AR_CONFIG, {
            "_class_name": "KeyframeAR", "backbone": reference, "tokenizer": "tokenizer",
            "lora": "lora" if self.lora_active else None, **dataclasses.asdict(self.config),
        })

    # ---- LoRA ---------------------------------------------------------------------------------
    @property
    def lora_active(self) -> bool:
        from peft import PeftModel

        return isinstance(self.backbone, PeftModel)

    def add_lora(self, r: int = 16, alpha: int = 32,
                 target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"), dropout: float = 0.0) -> None:
        """Freeze the backbone and train low-rank adapters on ``target_modules`` (Hu et al. 2021, via peft).

        Projectors and the token head stay trainable.
        """
        from peft import LoraConfig, get_peft_model

        if self.lora_active:
            raise InputError("This keyframe AR model already has LoRA adapters.")
        self.backbone.requires_grad_(False)
        lora = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=dropout,
                          bias="none", task_type="CAUSAL_LM")
        try:
            self.backbone = get_peft_model(self.backbone, lora)
        except ValueError as exc:
            raise InputError(f"Could not add LoRA adapters to the backbone: {exc}") from exc

    def merge_lora(self) -> None:
        """Fold the adapters into the backbone's weights (a plain backbone again)."""
        if self.lora_active:
            self.backbone = self.backbone.merge_and_unload()

    # ---- properties ---------------------------------------------------------------------------
    @property
    def causal_lm(self) -> nn.Module:
        """The transformers causal LM (under the peft wrapper when LoRA is on)."""
        return self.backbone.get_base_model() if self.lora_active else self.backbone

    @property
    def decoder(self) -> nn.Module:
        """The backbone's transformer without its vocabulary head (hidden states only)."""
        return self.causal_lm.get_decoder()

    @property
    def hidden_size(self) -> int:
        return self.causal_lm.get_input_embeddings().embedding_dim

    @property
    def device(self) -> torch.device:
        return execution_device(self, self.projectors.frame_start.device)

    @property
    def offloaded(self) -> bool:
        """Whether the model is under ``--offload`` (its backbone waits in CPU memory between calls)."""
        return getattr(self, "_offload_group", None) is not None

    @property
    def cuda_graphs_possible(self) -> bool:
        """Whether CUDA graphs can be captured over the backbone (``decode="graphs"``): resident on a CUDA device."""
        return self.device.type == "cuda" and not self.offloaded

    @property
    def embed_dtype(self) -> torch.dtype:
        return self.causal_lm.get_input_embeddings().weight.dtype

    # ---- sequence pieces (each [L, H] in the backbone's dtype) --------------------------------
    def _proj(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight = next(module.parameters())
        return module(x.to(weight.device, weight.dtype))

    def _cast(self, *parts: torch.Tensor) -> torch.Tensor:
        return torch.cat([p.to(self.device, self.embed_dtype) for p in parts])

    def text_embeds(self, text: str, max_tokens: int | None = None) -> torch.Tensor:
        """Text -> the backbone's own token embeddings ``[L, H]`` (no special tokens)."""
        ids = self.tokenizer(text, add_special_tokens=False, truncation=max_tokens is not None,
                             max_length=max_tokens)["input_ids"]
        return self.id_embeds(torch.tensor(ids, dtype=torch.long))

    def id_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[L]`` -> the backbone's embeddings ``[L, H]`` (its table is inside the offload unit)."""
        onload(self.decoder)
        return self.causal_lm.get_input_embeddings()(ids.to(self.device))

    def token_embeds(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Keyframe tokens ``[n, d]`` (indices ``start..start+n-1`` of a frame) -> ``[n, H]``."""
        n = tokens.shape[0]
        return self._cast(self._proj(self.projectors.token_in, tokens) + self.projectors.token_pos[start : start + n])

    def prefix_embeds(self, references: torch.Tensor | None = None, prefix_text: str | None = None) -> torch.Tensor:
        """[BOS] + prefix text + each reference frame ([REF] + its N tokens) -> ``[P, H]``."""
        parts = []
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None:
            parts.append(self.id_embeds(torch.tensor([bos])))
        if prefix_text:
            parts.append(self.text_embeds(prefix_text))
        if references is not None:
            self._check_tokens(references, "references", leading=None)
            for ref in references:
                parts.append(self.projectors.reference_start[None])
                parts.append(self.token_embeds(ref))
        if not parts:
            parts.append(torch.zeros(0, self.hidden_size))
        return self._cast(*parts)

    def condition_embeds(self, shot: ShotCondition) -> torch.Tensor:
        """[SHOT] + identifier tokens + descriptor + present cast slots + [FRAME] -> ``[C, H]``.

        The last position ([FRAME]) is the one whose hidden state predicts the shot's first token.
        """
        self._check_shot(shot)
        p, c = self.projectors, self.config
        parts = [p.shot_start[None]] if p.shot_start is not None else []
        parts.append(self.text_embeds(shot.identifier, c.max_identifier_tokens))
        parts.append(self._proj(p.descriptor, shot.descriptor_embed[None]))
        if shot.face_embeds is not None:
            k = shot.face_embeds.shape[0]
            mask = torch.ones(k, dtype=torch.bool) if shot.face_mask is None else shot.face_mask.bool().cpu()
            present = torch.nonzero(mask).flatten()
            described = p.character_text is not None and shot.character_text_embeds is not None
            if len(present) and (p.face is not None or described):
                slots = p.face_slot[present.to(self.device)]  # [F, H]
                if p.face is not None:
                    slots = slots + self._proj(p.face, shot.face_embeds[present])
                if described:
                    slots = slots + self._proj(p.character_text, shot.character_text_embeds[present])
                parts.append(slots)
        parts.append(p.frame_start[None])
        return self._cast(*parts)

    def _check_tokens(self, tokens: torch.Tensor, what: str, leading: int | None) -> None:
        c = self.config
        shape = tuple(tokens.shape)
        ok = len(shape) == 3 and shape[1:] == (c.num_tokens, c.token_dim) and (leading is None or shape[0] == leading)
        if not ok:
            n = "S" if leading is None else leading
            raise InputError(f"{what} must be [{n}, {c.num_tokens}, {c.token_dim}] keyframe tokens, got {shape}.")

    def _check_shot(self, shot: ShotCondition) -> None:
        c = self.config
        if tuple(shot.descriptor_embed.shape) != (c.text_dim,):
            raise InputError(f"descriptor_embed must be [{c.text_dim}], got {tuple(shot.descriptor_embed.shape)}.")
        if shot.face_embeds is not None:
            k = shot.face_embeds.shape[0]
            if shot.face_embeds.ndim != 2 or shot.face_embeds.shape[1] != c.face_dim or k > c.max_faces:
                raise InputError(f"face_embeds must be [K <= {c.max_faces}, {c.face_dim}], got {tuple(shot.face_embeds.shape)}.")
            if shot.face_mask is not None and tuple(shot.face_mask.shape) != (k,):
                raise InputError(f"face_mask must be [{k}] like face_embeds, got {tuple(shot.face_mask.shape)}.")
            cte = shot.character_text_embeds
            if c.character_text and cte is not None and tuple(cte.shape) != (k, c.text_dim):
                raise InputError(f"character_text_embeds must be [{k}, {c.text_dim}], got {tuple(cte.shape)}.")

    # ---- the backbone call --------------------------------------------------------------------
    def run_backbone(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, cache=None,
                     use_cache: bool = False) -> tuple[torch.Tensor, object]:
        """embeds ``[B, L, H]`` -> last hidden states ``[B, L, H]`` and the (updated) KV cache."""
        out = self.decoder(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=use_cache,
                           **{self._cache_kw: cache})
        keys = out.keys()
        new_cache = out["cache"] if "cache" in keys else out["past_key_values"] if "past_key_values" in keys else None
        return out["last_hidden_state"], new_cache

    # ---- training -----------------------------------------------------------------------------
    def sequence(self, sample: MovieSample) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample's input embeddings ``[L, H]`` and the positions that predict each token ``[S, N]``."""
        self._check_tokens(sample.tokens, "tokens", leading=len(sample.shots))
        n = self.config.num_tokens
        parts = [self.prefix_embeds(sample.references, sample.prefix_text)]
        length = parts[0].shape[0]
        positions = []
        for shot, tokens in zip(sample.shots, sample.tokens, strict=True):
            cond = self.condition_embeds(shot)
            first = length + cond.shape[0] - 1  # [FRAME] predicts tok_0, tok_j predicts tok_{j+1}
            positions.append(torch.arange(first, first + n))
            parts += [cond, self.token_embeds(tokens)]
            length += cond.shape[0] + n
        return torch.cat(parts), torch.stack(positions) if positions else torch.zeros(0, n, dtype=torch.long)

    def forward(self, samples: Sequence[MovieSample], generator: torch.Generator | None = None) -> KeyframeAROutput:
        """Teacher-forced loss over a batch of samples (right-padded to the longest)."""
        if not samples:
            raise InputError("KeyframeAR.forward needs at least one sample.")
        seqs = [self.sequence(s) for s in samples]
        b, h = len(seqs), self.hidden_size
        length = max(e.shape[0] for e, _ in seqs)
        shots = max(p.shape[0] for _, p in seqs)
        if shots == 0:
            raise InputError("The training samples hold no shots.")
        embeds = torch.zeros(b, length, h, device=self.device, dtype=self.embed_dtype)
        mask = torch.zeros(b, length, dtype=torch.long, device=self.device)
        for i, (e, _) in enumerate(seqs):
            embeds[i, : e.shape[0]] = e
            mask[i, : e.shape[0]] = 1
        hidden, _ = self.run_backbone(embeds, attention_mask=None if bool(mask.all()) else mask)  # [B, L, H]
        n, d = self.config.num_tokens, self.config.token_dim
        out = torch.zeros(b, shots, n, h, device=hidden.device, dtype=hidden.dtype)
        shot_mask = torch.zeros(b, shots, dtype=torch.bool)
        for i, (_, pos) in enumerate(seqs):
            out[i, : pos.shape[0]] = hidden[i, pos.to(hidden.device)]
            shot_mask[i, : pos.shape[0]] = True
        targets = torch.cat([s.tokens.reshape(-1, d) for s in samples]).to(self.device)  # [T, d]
        picked = out[shot_mask.to(out.device)].reshape(-1, h)  # [T, H], same order as targets
        result = self.head.loss(picked, targets, generator)
        return KeyframeAROutput(result.loss, result.parts, out, shot_mask)

    # ---- generation ---------------------------------------------------------------------------
    def start_movie(self, references: torch.Tensor | None = None, prefix_text: str | None = None,
                    window: int | None = None, use_cache: bool = True, slide: str = "auto",
                    decode: str = "dynamic") -> MovieSession:
        """A generation session: call ``step(shot, given=None, ...)`` once per shot, in order.

        ``slide``: how the window lets the oldest shots go (``auto``, ``shift`` or ``recompute``); ``decode``: the
        KV cache (``dynamic``, ``static``, or ``graphs``: static with CUDA graphs); see :class:`MovieSession`.
        """
        return MovieSession(self, references, prefix_text, window or self.config.context_window, use_cache, slide,
                            decode)

    @torch.no_grad()
    def generate_movie(
        self,
        shots: Sequence[ShotCondition],
        given: Sequence[torch.Tensor | None] | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        references: torch.Tensor | None = None,
        prefix_text: str | None = None,
        window: int | None = None,
        use_cache: bool = True,
        slide: str = "auto",
        decode: str = "dynamic",
    ) -> MovieTokens:
        """Every shot's keyframe tokens, predicted one by one (or taken as given), with a sliding KV cache.

        ``given[i]`` ``[N, d]``: shot i's tokens are known (an encoded storyboard frame) and are fed as
        they are; None = predict. ``window``: positions the context may hold (prefix + recent shots;
        default ``config.context_window``). ``use_cache=False`` recomputes the whole context at every
        step (the reference the cached path is tested against, with ``slide="recompute"``). ``slide``: see
        :class:`MovieSession`; ``decode``: the KV cache (see :class:`MovieSession`). Call ``eval()`` first.
        """
        if given is not None and len(given) != len(shots):
            raise InputError(f"given must have one entry per shot ({len(shots)}), got {len(given)}.")
        session = self.start_movie(references, prefix_text, window, use_cache, slide, decode)
        out = []
        for i, shot in enumerate(shots):
            out.append(session.step(shot, None if given is None else given[i], temperature, generator))
        n, d = self.config.num_tokens, self.config.token_dim
        tokens = torch.stack(out) if out else torch.zeros(0, n, d)
        flags = torch.tensor([given is not None and given[i] is not None for i in range(len(shots))], dtype=torch.bool)
        return MovieTokens(tokens, flags, session.cache_lengths, session.rebuilds)


class MovieSession:
    """Incremental generation over a fixed prefix plus a sliding window of recent shots.

    The context is ``prefix + kept shots``; the KV cache covers all of it except the newest shot's
    last token, which is fed together with the next shot's conditioning (one backbone call per shot
    for the conditioning, then one per predicted token). When a new shot would overflow the window,
    the oldest shots are dropped until the kept history fills at most half of the room left by the
    prefix (a step's cost grows with the context, as the cache is concatenated at every call, so the
    context averages three quarters of the window), in one of two ways (``slide``):

    - ``"shift"``: the dropped shots are cut out of the cache and the keys after them are rotated
      back by the positions cut (rotary embeddings compose: ``R(p - d) k = R(-d) R(p) k``), so every
      kept position sits where a recomputation would put it. The kept shots' deeper-layer keys and
      values still carry what they saw of the shots cut out, as in StreamingLLM (Xiao et al. 2023,
      "Efficient Streaming Language Models with Attention Sinks"), which keeps a fixed prefix the
      same way. No pass over the window, so the cost per keyframe stays flat. Needs a Llama-style
      rotary backbone (:func:`rope_shift_supported`).
    - ``"recompute"``: the cache is recomputed over prefix + kept shots (exactly what a model that
      never saw the dropped shots computes): one full pass per half window of shots.

    ``"auto"`` (the default) shifts where the backbone allows it and recomputes otherwise; without a
    KV cache (``use_cache=False``) every step recomputes anyway, so the slide is ``"recompute"``.

    The KV cache (``decode``): ``"dynamic"``, transformers' default cache, grown by concatenation at every call;
    ``"static"``, a preallocated cache over the whole window driven at fixed shapes
    (:class:`mdream.models.static_decode.StaticDecoder`); ``"graphs"``, the static cache with each call replayed
    from a captured CUDA graph (a CUDA device, the backbone not offloaded), which takes a large backbone's step
    from launch-bound towards the time it takes to read its weights.
    """

    def __init__(self, model: KeyframeAR, references: torch.Tensor | None, prefix_text: str | None,
                 window: int, use_cache: bool, slide: str = "auto", decode: str = "dynamic"):
        if slide not in ("auto", "shift", "recompute"):
            raise InputError(f"slide must be auto, shift or recompute, got {slide!r}.")
        if decode not in ("dynamic", "static", "graphs"):
            raise InputError(f"decode must be dynamic, static or graphs, got {decode!r}.")
        if decode != "dynamic" and not use_cache:
            raise InputError(f"decode={decode!r} is a KV cache; it needs use_cache=True.")
        if decode == "graphs" and not model.cuda_graphs_possible:
            raise InputError(f"decode='graphs' needs the backbone resident on a CUDA device (it is on {model.device}"
                             f"{', offloaded' if model.offloaded else ''}).", hint="Use decode='static' or 'dynamic'.")
        if slide == "shift" and not (use_cache and rope_shift_supported(model.decoder)):
            raise InputError("slide='shift' needs a KV cache and a Llama-style rotary backbone "
                             f"({type(model.decoder).__name__} with use_cache={use_cache}).",
                             hint="Use slide='recompute'.")
        if slide == "auto":
            slide = "shift" if use_cache and rope_shift_supported(model.decoder) else "recompute"
        self.slide = slide
        self.model = model
        self.use_cache = use_cache
        with torch.no_grad():
            self.prefix = model.prefix_embeds(references, prefix_text)  # [P, H]
        self.window = window
        self.room = window - self.prefix.shape[0]  # positions the shots may fill
        if self.room <= 0:
            raise InputError(f"The generation window ({window}) must be longer than the prefix ({self.prefix.shape[0]}).")
        self.shots: list[torch.Tensor] = []  # kept shots' embeddings, each [C + N, H]
        self.history = 0  # positions the kept shots fill
        self.pending = self.prefix  # in the context, not yet through the backbone
        self.fed: list[torch.Tensor] = []  # use_cache=False: everything already through the backbone
        self.cache = None
        self.static = (StaticDecoder(model.decoder, window, model.device, model.embed_dtype, graphs=decode == "graphs",
                                     cache_keyword=model._cache_kw) if decode != "dynamic" else None)
        self.cache_length = 0
        self.cache_lengths: list[int] = []
        self.rebuilds = 0  # full passes over prefix + kept shots (slide="recompute")
        self.shifts = 0  # cuts of the cache (slide="shift")

    def _run(self, chunk: torch.Tensor) -> torch.Tensor:
        """Feed ``chunk`` [L, H] after the context; returns its hidden states [L, H]."""
        if chunk.shape[0] == 0:
            return chunk
        if self.static is not None:  # its decoder call onloads an offloaded backbone, as run_backbone's does
            self.cache_length += chunk.shape[0]
            return self.static(chunk)
        if self.use_cache:
            hidden, self.cache = self.model.run_backbone(chunk[None], cache=self.cache, use_cache=True)
        else:
            self.fed.append(chunk)
            hidden, _ = self.model.run_backbone(torch.cat(self.fed)[None])
        self.cache_length += chunk.shape[0]
        return hidden[0, -chunk.shape[0] :]

    def _slide(self, incoming: int) -> None:
        """Make room for ``incoming`` positions: drop the oldest shots (see the class docstring)."""
        target = min(self.room // 2, self.room - incoming)
        if self.slide == "shift":
            cut, kept = 0, list(self.shots)
            while kept and self.history - cut > target:
                cut += kept.pop(0).shape[0]
            if kept and (self.static is not None or cache_is_shiftable(self.cache)):  # the newest shot stays
                if self.static is not None:
                    onload(self.model.decoder)
                    self.static.shift(self.prefix.shape[0], cut)
                else:
                    shift_cache(self.cache, self.model.decoder, self.prefix.shape[0], cut)
                del self.shots[: len(self.shots) - len(kept)]
                self.history -= cut
                self.cache_length -= cut
                self.shifts += 1
                return
        while self.shots and self.history > target:
            self.history -= self.shots.pop(0).shape[0]
        self.cache, self.cache_length, self.fed = None, 0, []
        if self.static is not None:
            self.static.reset()
        if self.shots:
            context = torch.cat([self.prefix, *self.shots])
            self.pending = context[-1:]  # the newest shot's last token goes in with the next shot
            self._run(context[:-1])
        else:
            self.pending = self.prefix
        self.rebuilds += 1

    @torch.no_grad()
    def step(self, shot: ShotCondition, given: torch.Tensor | None = None, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Append one shot; returns its tokens ``[N, d]`` (float32, CPU): ``given`` as is, or predicted."""
        model = self.model
        n = model.config.num_tokens
        cond = model.condition_embeds(shot)  # [C, H]
        length = cond.shape[0] + n
        if length > self.room:
            raise InputError(f"A shot takes {length} positions but the generation window leaves {self.room} after the "
                             f"prefix.", hint="Use a longer window or a shorter prefix.")
        if self.history + length > self.room:
            self._slide(length)
        chunk = torch.cat([self.pending, cond])
        if given is not None:
            given = given.detach().float().cpu()
            model._check_tokens(given[None], "given tokens", leading=1)
            embeds = model.token_embeds(given)  # [N, H]
            self._run(torch.cat([chunk, embeds[:-1]]))
            tokens = given
        else:
            hidden = self._run(chunk)[-1:]  # [1, H] at [FRAME]
            out, embeds = [], []
            for j in range(n):
                token = model.head.sample(hidden, temperature, generator).float()  # [1, d]
                out.append(token)
                embeds.append(model.token_embeds(token, start=j))
                if j + 1 < n:
                    hidden = self._run(embeds[-1])[-1:]
            tokens, embeds = torch.cat(out).cpu(), torch.cat(embeds)
        self.pending = embeds[-1:]
        self.shots.append(torch.cat([cond, embeds]))
        self.history += length
        self.cache_lengths.append(self.cache_length)
        return tokens
