"""The toy CLIP: a tiny transformers ``CLIPModel`` + a word-level tokenizer built with ``tokenizers``.

It is the toy size of the frozen keyframe vision encoder, of the descriptor text encoder and of
``mdream eval``'s CLIP-score model. The tokenizer is saved as ``tokenizer.json`` and wrapped in a
``PreTrainedTokenizerFast`` so that ``AutoTokenizer.from_pretrained(folder)`` loads it exactly as it
loads a real CLIP tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

from mdream.models.encoders import CLIP_MEAN, CLIP_STD
from mdream.models.loading import quiet_loading

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
PRE_TOKENIZER = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def words_of(text: str) -> list[str]:
    """The tokenizer's view of a text: lowercase words and single punctuation marks."""
    return [piece for piece, _ in PRE_TOKENIZER.pre_tokenize_str(text.lower())]


def build_word_tokenizer(texts: Iterable[str], max_length: int = 64) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every word of ``texts`` (sorted, so it is deterministic)."""
    vocab_words = sorted({w for text in texts for w in words_of(text)})
    # <eos> is id 3, not 2: CLIP's text model pools at the first eos_token_id, except for the legacy id 2.
    vocab = {PAD: 0, UNK: 1, BOS: 2, EOS: 3}
    for word in vocab_words:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = PRE_TOKENIZER
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
    )


def build_toy_clip_config(
    vocab_size: int,
    image_size: int = 32,
    patch_size: int = 4,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    projection_dim: int = 64,
    max_text_length: int = 64,
    eos_token_id: int = 3,
    pad_token_id: int = 0,
    bos_token_id: int = 2,
) -> CLIPConfig:
    """Both towers small (defaults: hidden 64, 4 layers, patch 4 at 32 px: about 0.45 M parameters)."""
    tower = dict(  # both towers have the same size
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        projection_dim=projection_dim,
    )
    text = dict(
        tower,
        vocab_size=vocab_size,
        max_position_embeddings=max_text_length,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
    )
    vision = dict(tower, image_size=image_size, patch_size=patch_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def build_toy_clip(tokenizer: PreTrainedTokenizerFast, **config_kwargs) -> CLIPModel:
    config = build_toy_clip_config(
        vocab_size=len(tokenizer),
        max_text_length=tokenizer.model_max_length,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **config_kwargs,
    )
    return CLIPModel(config)


def save_clip_folder(model: CLIPModel, tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> None:
    """Save a CLIP folder that ``CLIPModel``, ``CLIPVisionModel``, ``CLIPTextModelWithProjection`` and
    ``AutoTokenizer`` all load: weights, config, tokenizer.json and a CLIP preprocessor config."""
    folder = Path(folder)
    with quiet_loading():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    size = model.config.vision_config.image_size
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "resample": 3,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
