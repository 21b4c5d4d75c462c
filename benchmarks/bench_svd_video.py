"""Full-size image-to-video speed: mdream's ImageToVideoPipeline vs diffusers' StableVideoDiffusionPipeline, same parts.

Both draw one clip from one random-weight SVD-XT-config UNet, temporal VAE and CLIP ViT-H/14 image encoder (the
published configs, written out below because no hub is reachable) with the same Euler scheduler, steps, frames, size
and guidance (classifier-free guidance rising linearly over the frames from 1 to 3, as a batch of 2). mdream's rows:
eager, with its UNet and VAE in channels-last memory format, and with the UNet also compiled
(``ImageToVideoModel.optimize``; CUDA only). Reports the median wall seconds per clip over interleaved clips after a
warm-up (the warm-up also pays any compilation), seconds per denoising step (the clip's time over its steps, the
image encoding and the VAE decode included), each row's peak GPU memory, and how far each row's frames are from the stock pipeline's
(mean absolute difference in grey levels; the two resize the image encoder's input differently, so they are close,
not equal). ``--size tiny`` runs the same code with the tiny SVD configs of diffusers' own tests (CPU).

    python -m benchmarks.bench_svd_video [--size full|tiny] [--device cuda] [--dtype fp16] [--frames 25]
        [--steps 25] [--repeats 3] [--no-compile] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

# stabilityai/stable-video-diffusion-img2vid-xt: unet/ (diffusers' UNetSpatioTemporalConditionModel defaults are
# SVD's), vae/config.json, image_encoder/config.json (CLIP ViT-H/14), scheduler/scheduler_config.json
SVD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, in_channels=3,
               out_channels=3, latent_channels=4, layers_per_block=2, sample_size=768, scaling_factor=0.18215,
               force_upcast=True)
SVD_IMAGE_ENCODER = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                         patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu")
SVD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, interpolation_type="linear",
                     num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
                     steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
# the tiny SVD configs of diffusers' own tests (tests/test_video.py's tiny_svd_folder); the image encoder reads 224 px,
# as the stock pipeline resizes to that size whatever the encoder's config says
TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8, out_channels=4,
                 down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                 up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), cross_attention_dim=32,
                 num_attention_heads=8, projection_class_embeddings_input_dim=96, addition_time_embed_dim=32)
TINY_VAE = dict(block_out_channels=(32, 64), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                latent_channels=4)
TINY_IMAGE_ENCODER = dict(hidden_size=32, projection_dim=32, num_hidden_layers=5, num_attention_heads=4, image_size=224,
                          intermediate_size=37, patch_size=32)


def build(size: str, device: str, dtype: torch.dtype):
    """(mdream ImageToVideoModel, StableVideoDiffusionPipeline) sharing one UNet, VAE and image encoder."""
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from mdream.models.video import ImageToVideoModel, VideoModelConfig

    diffusers_logging.set_verbosity_error()
    torch.manual_seed(0)
    full = size == "full"
    with torch.device(device):  # drawn where they live: a 1.5 B-parameter UNet initialises in seconds on a GPU
        unet = UNetSpatioTemporalConditionModel(**({} if full else TINY_UNET))
        vae = AutoencoderKLTemporalDecoder(**(SVD_VAE if full else TINY_VAE))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**(SVD_IMAGE_ENCODER if full else TINY_IMAGE_ENCODER)))
    unet, vae, image_encoder = (m.to(dtype).eval() for m in (unet, vae, image_encoder))
    crop = image_encoder.config.image_size
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet,
                                        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER),
                                        feature_extractor=CLIPImageProcessor(crop_size=crop, size=crop))
    pipe.set_progress_bar_config(disable=True)
    config = VideoModelConfig(vae_scaling_factor=float(vae.config.scaling_factor))
    if not full:
        config.width = config.height = 64
    model = ImageToVideoModel(config, unet, image_encoder, EulerDiscreteScheduler(**SVD_SCHEDULER), vae).eval()
    return model, pipe


def measure(size: str, device: str, dtype: torch.dtype, frames: int, steps: int, repeats: int,
            compile_unet: bool) -> dict:
    from PIL import Image

    from mdream.models.video import ImageToVideoPipeline

    model, pipe = build(size, device, dtype)
    c = model.config
    image = np.random.default_rng(0).integers(0, 256, (c.height, c.width, 3), dtype=np.uint8)
    chunk = c.decode_chunk_size

    def stock() -> np.ndarray:
        out = pipe(Image.fromarray(image), height=c.height, width=c.width, num_frames=frames,
                   num_inference_steps=steps, decode_chunk_size=chunk, output_type="np",
                   generator=torch.Generator().manual_seed(1)).frames
        return (np.asarray(out[0]) * 255).round().astype(np.uint8)  # [T, H, W, 3]

    def ours() -> np.ndarray:
        return ImageToVideoPipeline(model)(image[None], num_frames=frames, clip_length=frames,
                                           num_inference_steps=steps, generator=torch.Generator().manual_seed(1)).frames[0]

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    cuda = device.startswith("cuda")
    variants = [("diffusers StableVideoDiffusionPipeline", stock, None), ("mdream ImageToVideoPipeline", ours, None),
                ("mdream, channels-last", ours, dict(channels_last=True))]
    if compile_unet and cuda:
        variants.append(("mdream, channels-last + compiled UNet", ours, dict(channels_last=True, compile_unet=True)))
    rows, reference = {}, None
    for name, fn, optimize in variants:  # each variant changes the shared parts: timed in turn, not interleaved
        if optimize:
            model.optimize(**optimize)
        out = fn()  # warm-up (and compilation)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        seconds = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            out = fn()
            sync()
            seconds.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        reference = out if reference is None else reference
        difference = float(np.abs(out.astype(np.float32) - reference.astype(np.float32)).mean())
        rows[name] = {"seconds": statistics.median(seconds), "peak_gib": peak, "difference": difference,
                      "frames": out.shape[0]}
    return {"params": sum(p.numel() for p in model.unet.parameters()), "size": (c.width, c.height), "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled-UNet row")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    dtype_name = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    result = measure(args.size, args.device, dtype, args.frames, args.steps, args.repeats, not args.no_compile)
    stock = result["rows"]["diffusers StableVideoDiffusionPipeline"]["seconds"]
    width, height = result["size"]
    lines = [
        f"{args.size} SVD-XT-config UNet ({result['params'] / 1e9:.2f} B parameters, random weights), {args.frames} "
        f"frames at {width}x{height}, Euler {args.steps} steps, classifier-free guidance 1 -> 3 as a batch of 2, "
        f"{dtype_name}, {args.device}; median of {args.repeats} clips per row after a warm-up:",
        "",
        "| pipeline | s/clip | s/step | speed-up over the stock pipeline | peak GPU memory (GiB) | frames vs the stock "
        "pipeline's (mean abs. difference, grey levels) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["rows"].items():
        peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
        lines.append(f"| {name} | {row['seconds']:.2f} | {row['seconds'] / args.steps:.3f} | {stock / row['seconds']:.2f}x "
                     f"| {peak} | {row['difference']:.2f} |")
    body = "\n".join(lines) + "\n\ns/step: the clip's time over its steps (it includes the image encoding and the VAE decode).\n"
    print(body)
    if not args.no_write and args.size == "full":
        from benchmarks.results import update_section

        command = f"python -m benchmarks.bench_svd_video --device {args.device} --dtype {dtype_name}"
        update_section(f"Video model speed vs StableVideoDiffusionPipeline ({args.size})", body, command)
    return result


if __name__ == "__main__":
    main()
