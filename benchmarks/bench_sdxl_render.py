"""Full-size renderer speed: mdream's KeyframeDecoder vs diffusers' StableDiffusionXLPipeline, same UNet.

Both render from one random-weight SDXL-config UNet and VAE (the real SDXL base configs, written
out below because no hub is reachable) with the same Euler scheduler, steps, guidance and size.
mdream's decoder gets keyframe tokens + face embeddings + a descriptor (a 6-entry context, one face
slot empty, so a key mask), and again with the mask dropped (a diagnostic row); the stock pipeline gets
precomputed prompt embeddings (77 entries, text encoders not loaded, so neither side pays for text
encoding). Reports the median wall seconds per image over interleaved renders, the GPU kernel time of
one render (torch.profiler) and the peak GPU memory. ``--size tiny`` runs the same code with the tiny SDXL-shaped configs of the tests (CPU).

    python -m benchmarks.bench_sdxl_render [--size full|tiny] [--device cuda] [--dtype fp16]
        [--steps 30] [--guidance 5] [--repeats 5] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json and vae/config.json (the values that differ from
# diffusers' defaults)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=1024,
    scaling_factor=0.13025,
)
# the tiny SDXL-shaped configs of tests/test_models_fullsize.py
TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80, cross_attention_dim=64,
    norm_num_groups=1,
)
TINY_VAE = dict(
    block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4, sample_size=32, norm_num_groups=16, scaling_factor=0.13025,
)
EULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1)


def build(size: str, device: str, dtype: torch.dtype):
    """(mdream KeyframeDecoder, StableDiffusionXLPipeline) sharing one UNet and VAE."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from diffusers.utils import logging as diffusers_logging

    from mdream.models.decoder import ContextProjector, KeyframeDecoder

    diffusers_logging.set_verbosity_error()  # casting a fresh ModelMixin with .to(dtype) warns; nothing is loaded here
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(SDXL_UNET if size == "full" else TINY_UNET)).to(device, dtype).eval()
    vae = AutoencoderKL(**(SDXL_VAE if size == "full" else TINY_VAE)).to(device, dtype).eval()
    scheduler = EulerDiscreteScheduler(**EULER)
    pooled = KeyframeDecoder.pooled_dim_for(unet)
    context = ContextProjector(num_tokens=2, token_dim=1024, face_dim=512, max_faces=3, text_dim=768,
                               cross_attention_dim=unet.config.cross_attention_dim, pooled_dim=pooled).to(device, dtype)
    decoder = KeyframeDecoder(unet, context, KeyframeDecoder.make_scheduler("euler", scheduler.config), vae, "euler")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                                     unet=unet, scheduler=EulerDiscreteScheduler(**EULER))
    pipe.set_progress_bar_config(disable=True)
    return decoder, pipe


def timed(fns: dict, device: str, repeats: int) -> dict:
    """Median seconds per call of each function, the functions interleaved so that clock and host drift hit all alike."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for fn in fns.values():
        fn()  # warm-up: kernels, allocator
    seconds = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def kernel_seconds(fn, device: str) -> float | None:
    """GPU kernel time of one call (torch.profiler, summed over kernels): the device's share of the wall time."""
    if not device.startswith("cuda"):
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
    return sum(event.self_device_time_total for event in prof.key_averages()) / 1e6


def measure(size: str, device: str, dtype: torch.dtype, steps: int, guidance: float, repeats: int) -> dict:
    from mdream.models.decoder import KeyframeDecoder

    decoder, pipe = build(size, device, dtype)
    unet = decoder.unet
    resolution = decoder.image_size
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(1, 2, 1024, generator=g).to(device, dtype)
    faces = torch.nn.functional.normalize(torch.randn(1, 2, 512, generator=g), dim=-1).to(device, dtype)
    mask = torch.ones(1, 2, dtype=torch.bool, device=device)
    text = torch.nn.functional.normalize(torch.randn(1, 768, generator=g), dim=-1).to(device, dtype)
    width = unet.config.cross_attention_dim
    pooled_dim = KeyframeDecoder.pooled_dim_for(unet)
    prompt = torch.randn(1, 77, width, generator=g).to(device, dtype)
    pooled = torch.randn(1, pooled_dim, generator=g).to(device, dtype)

    def ours():
        with torch.no_grad():
            decoder.generate(tokens, faces, mask, text, num_inference_steps=steps, guidance_scale=guidance,
                             generator=torch.Generator().manual_seed(1))

    def ours_without_mask():
        # diagnostic only (not a valid render: empty slots are attended): the cost of the key mask itself
        predict = decoder.predict
        decoder.predict = lambda sample, t, context, mask, pooled_: predict(sample, t, context, None, pooled_)
        try:
            ours()
        finally:
            decoder.predict = predict

    def stock():
        pipe(prompt_embeds=prompt, pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros_like(prompt),
             negative_pooled_prompt_embeds=torch.zeros_like(pooled), num_inference_steps=steps, guidance_scale=guidance,
             height=resolution, width=resolution, output_type="np", generator=torch.Generator().manual_seed(1))

    fns = {
        "mdream KeyframeDecoder.generate": ours,
        "same, key mask dropped (diagnostic; not a valid render)": ours_without_mask,
        "diffusers StableDiffusionXLPipeline": stock,
    }
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(fns, device, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    rows = {name: (seconds[name], kernel_seconds(fn, device), peak) for name, fn in fns.items()}
    return {"resolution": resolution, "params": sum(p.numel() for p in unet.parameters()), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; do not update benchmarks/RESULTS.md")
    args = parser.parse_args()
    dtype_name = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    result = measure(args.size, args.device, dtype, args.steps, args.guidance, args.repeats)
    lines = [
        f"{args.size} SDXL-config UNet ({result['params'] / 1e9:.2f} B parameters, random weights), "
        f"{result['resolution']}x{result['resolution']}, Euler {args.steps} steps, guidance {args.guidance:g}, "
        f"{dtype_name}, batch 1, median of {args.repeats} interleaved renders after a warm-up; peak memory over all:",
        "",
        "| renderer | s/image (wall) | GPU kernel s/image | peak GPU memory, all rows (GiB) |",
        "|---|---:|---:|---:|",
    ]
    for name, (seconds, kernels, peak) in result["rows"].items():
        lines.append(f"| {name} | {seconds:.3f} | {'-' if kernels is None else f'{kernels:.3f}'} | "
                     f"{'-' if peak is None else f'{peak:.1f}'} |")
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        from benchmarks.results import update_section

        command = f"python -m benchmarks.bench_sdxl_render --size {args.size} --device {args.device} --dtype {dtype_name}"
        update_section(f"Renderer speed vs StableDiffusionXLPipeline ({args.size})", body, command)


if __name__ == "__main__":
    main()
