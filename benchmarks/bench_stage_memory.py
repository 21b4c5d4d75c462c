"""Device memory of each stage's weights at full size: all at once, one stage at a time, and with ``--offload``.

Builds every torch component of the ``full`` bundle template from its published config (SDXL base, LLaMA-2-7B,
CLIP ViT-H/14, LongCLIP-L's text tower, SVD-XT; written out below because no hub is reachable) inside mdream's own
model classes, on the meta device (accelerate's ``init_empty_weights``: no memory, no download), and counts the
bytes of their weights in the dtype each runs in (the template's: float16, LLaMA bfloat16). Per stage:

* kept to the end: what the device would hold if every stage kept its models until the movie is done;
* one stage at a time: the stage's models (what the runner holds, since each stage frees its models);
* ``--offload``: the small parts of the stage's models plus their largest unit (``offload_units``,
  ``mdream.models.offload``), the most the device holds at once.

Weights only: activations come on top and need a GPU to measure (for scale: diffusers' stock SVD-XT pipeline, 25
frames at 1024x576 in fp16 with guidance as a batch of 2, peaked at 11.4 GB on an H200, its weights included). The
face embedder runs in onnxruntime and is left out. ``--size tiny`` runs the same code on the tests' tiny configs.

    python -m benchmarks.bench_stage_memory [--size full|tiny] [--no-write]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch

from benchmarks.bench_sdxl_render import EULER, SDXL_UNET, SDXL_VAE, TINY_UNET, TINY_VAE

# laion/CLIP-ViT-H-14-laion2B-s32B-b79K (the keyframe encoder's tower) and SVD-XT's image_encoder/config.json
VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
             image_size=224, projection_dim=1024, hidden_act="gelu")
# LongCLIP-L's text tower: CLIP ViT-L/14's, with 248 positions
LONGCLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       max_position_embeddings=248, vocab_size=49408, projection_dim=768)
# meta-llama/Llama-2-7b-hf config.json
LLAMA_2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)
# stabilityai/stable-video-diffusion-img2vid-xt: unet/ is UNetSpatioTemporalConditionModel's defaults with 25 frames
SVD_XT_UNET = dict(num_frames=25)
SVD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
               layers_per_block=2, latent_channels=4, sample_size=768, scaling_factor=0.18215)

TINY_VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, patch_size=8,
                   image_size=32, projection_dim=32)
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=32, vocab_size=100, projection_dim=24, bos_token_id=0, eos_token_id=2)
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=100, max_position_embeddings=256)
TINY_SVD_UNET = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
                     down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                     up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                     cross_attention_dim=32, num_attention_heads=8, projection_class_embeddings_input_dim=96,
                     addition_time_embed_dim=32)
TINY_SVD_VAE = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4)

#: stage -> its components, in the pipeline's order
STAGES = {"encode": ["text_encoder"], "keyframes": ["keyframe_encoder", "keyframe_ar"],
          "render": ["keyframe_decoder"], "video": ["video"]}
#: bytes per weight in the full template's dtypes (float16; the LLaMA backbone bfloat16)
BYTES_PER_WEIGHT = 2


def components(size: str, tokenizer=None, video_config=None) -> Iterator[tuple[str, torch.nn.Module]]:
    """Every torch component of the bundle at ``size`` (full: the published configs; tiny: the tests'), inside
    mdream's own classes, built one at a time where the caller's device context puts them (the meta device, a GPU),
    so that a caller may save and drop each before the next is built. ``tokenizer``: the text tokenizer (default: a
    word tokenizer of one phrase); ``video_config``: the video model's settings (default: SVD's)."""
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        UNet2DConditionModel,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModel,
        CLIPVisionModelWithProjection,
        LlamaConfig,
        LlamaForCausalLM,
    )

    from mdream.models.compressor import TokenCompressor
    from mdream.models.decoder import ContextProjector, KeyframeDecoder
    from mdream.models.encoders import (
        CLIP_MEAN,
        CLIP_STD,
        ClipImagePreprocessor,
        KeyframeEncoder,
        TextEncoder,
    )
    from mdream.models.keyframe_ar import KeyframeAR, KeyframeARConfig
    from mdream.models.toy_clip import build_word_tokenizer
    from mdream.models.video import ImageToVideoModel, VideoModelConfig

    full = size == "full"
    vision, text = (VIT_H, LONGCLIP_L_TEXT) if full else (TINY_VISION, TINY_TEXT)
    tokenizer = tokenizer or build_word_tokenizer(["a shot"], max_length=text["max_position_embeddings"])
    yield "text_encoder", TextEncoder(tokenizer, CLIPTextModelWithProjection(CLIPTextConfig(**text)))
    compressor = TokenCompressor(vision_dim=vision["hidden_size"])
    yield "keyframe_encoder", KeyframeEncoder(CLIPVisionModel(CLIPVisionConfig(**vision)), compressor,
                                              ClipImagePreprocessor(CLIP_MEAN, CLIP_STD, vision["image_size"]))
    num_tokens, token_dim = compressor.config.num_tokens, compressor.config.token_dim
    del compressor
    yield "keyframe_ar", KeyframeAR(LlamaForCausalLM(LlamaConfig(**(LLAMA_2_7B if full else TINY_LLAMA))), tokenizer,
                                    KeyframeARConfig(num_tokens=num_tokens, token_dim=token_dim,
                                                     text_dim=text["projection_dim"]))
    unet = UNet2DConditionModel(**(SDXL_UNET if full else TINY_UNET))
    context = ContextProjector(num_tokens=num_tokens, token_dim=token_dim, face_dim=512, max_faces=3,
                               text_dim=text["projection_dim"], cross_attention_dim=unet.config.cross_attention_dim,
                               pooled_dim=KeyframeDecoder.pooled_dim_for(unet))
    decoder = KeyframeDecoder(unet, context, KeyframeDecoder.make_scheduler("euler", EULER),
                              AutoencoderKL(**(SDXL_VAE if full else TINY_VAE)), "euler")
    del unet, context
    yield "keyframe_decoder", decoder
    del decoder  # the caller's copy is the only one left while the video model is built
    yield "video", ImageToVideoModel(
        video_config or VideoModelConfig(),
        UNetSpatioTemporalConditionModel(**(SVD_XT_UNET if full else TINY_SVD_UNET)),
        CLIPVisionModelWithProjection(CLIPVisionConfig(**(VIT_H if full else {**TINY_VISION, "patch_size": 1}))),
        EulerDiscreteScheduler(), AutoencoderKLTemporalDecoder(**(SVD_VAE if full else TINY_SVD_VAE)))


def build(size: str) -> dict[str, torch.nn.Module]:
    """Every torch component of the bundle, on the meta device (full) or the CPU (tiny)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False) if size == "full" else torch.device("cpu"):
        return dict(components(size))


def weight_bytes(module: torch.nn.Module, per_value: int) -> int:
    """Bytes of the module's floating-point parameters and buffers at ``per_value`` bytes each (shared ones once)."""
    seen: dict[int, int] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            seen[id(t)] = t.numel() * per_value
    return sum(seen.values())


def stage_rows(models: dict[str, torch.nn.Module]) -> list[dict]:
    """Per stage: bytes of all its weights, of the largest unit, of what is outside the units, and kept to the end."""
    from mdream.models.offload import offload_units

    rows, kept = [], 0
    for stage, names in STAGES.items():
        total = rest = largest = 0
        units = []
        for name in names:
            model = models[name]
            size = weight_bytes(model, BYTES_PER_WEIGHT)
            parts = {attr: weight_bytes(unit, BYTES_PER_WEIGHT) for attr, unit in offload_units(model).items()}
            total += size
            rest += size - sum(parts.values())
            largest = max([largest, *parts.values()])
            units += [f"{name}.{attr} {b / 2**30:.2f}" for attr, b in parts.items()]
        kept += total
        rows.append({"stage": stage, "total": total, "offload": rest + largest, "kept": kept, "units": units})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = parser.parse_args(argv)
    rows = stage_rows(build(args.size))
    gib = 2**30
    lines = ["| stage | kept to the end (GiB) | one stage at a time (GiB) | `--offload` (GiB) | units (GiB) |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['kept'] / gib:.2f} | {r['total'] / gib:.2f} | {r['offload'] / gib:.2f} | "
                     f"{', '.join(r['units'])} |")
    peak = max(r["total"] for r in rows) / gib
    peak_offload = max(r["offload"] for r in rows) / gib
    body = "\n".join(lines) + (
        f"\n\nMost on the device at once: {rows[-1]['kept'] / gib:.2f} GiB of weights if every stage kept its models, "
        f"{peak:.2f} GiB one stage at a time (what `generate` holds), {peak_offload:.2f} GiB with `--offload`. "
        "Weights only, in the full template's dtypes (float16; the LLaMA backbone bfloat16); activations come on "
        "top and are measured on a GPU.")
    print(body)
    if not args.no_write and args.size == "full":
        from benchmarks.results import update_section

        update_section("Full-size weights on the device per stage, with and without --offload", body,
                       "python -m benchmarks.bench_stage_memory")
    return rows


if __name__ == "__main__":
    main()
