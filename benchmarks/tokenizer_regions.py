"""Where does a keyframe renderer fail? x0 error inside the characters' region vs the background.

Noises held-out toy frames to a few timesteps and compares the renderer's x0 estimate with the clean
frame, inside a region around each character (from the toy world's face boxes, down to the frame's
bottom) and outside it, given the full context, the tokens alone and the null context. A renderer
that uses its context for characters shows a much lower character error with context than without.

    python -m benchmarks.tokenizer_regions CKPT [--frames 64] [--clip CLIP_FOLDER]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def character_regions(shots, size: int, world) -> np.ndarray:
    """bool [B, size, size]: the columns of each face box (widened 30% each side) from the face down."""
    from mdream.toyworld import face_boxes

    regions = np.zeros((len(shots), size, size), bool)
    for i, shot in enumerate(shots):
        for _, (x0, y0, x1, _) in face_boxes(shot, size, world):
            pad = 0.3 * (x1 - x0)
            regions[i, int(max(0, y0)) :, int(max(0, x0 - pad)) : int(min(size, x1 + pad) + 1)] = True
    return regions


def region_errors(checkpoint: Path, clip: str | None, frames: int, timesteps: tuple[int, ...], seed: int = 777) -> list[dict]:
    from diffusers import DDPMScheduler

    from mdream.models.decoder import KeyframeDecoder
    from mdream.models.encoders import KeyframeEncoder, TextEncoder, images_to_float
    from mdream.models.loading import resolve_reference
    from mdream.toyworld import make_world
    from mdream.training.data import face_embedding_bank, faces_for_batch, render_random_frames
    from mdream.training.evaluate_tokenizer import EVAL_ASSETS

    encoder = KeyframeEncoder.from_pretrained(checkpoint / "encoder")
    decoder = KeyframeDecoder.from_pretrained(checkpoint / "decoder")
    text_encoder = TextEncoder.from_pretrained(clip or resolve_reference(checkpoint / "encoder", encoder.vision_reference))
    world = make_world(0)
    test = render_random_frames(0, frames, decoder.image_size, seed, progress=False)
    bank = face_embedding_bank(0, EVAL_ASSETS / "toy_face_recognition.onnx", 4, 0)
    faces, mask = faces_for_batch(test.chars, bank, np.random.default_rng(0))
    tokens, text = encoder.encode(test.frames), text_encoder.encode(test.descriptors)
    contexts = {
        "full": decoder.context(tokens, torch.from_numpy(faces), torch.from_numpy(mask), text),
        "tokens": decoder.context(tokens, None, None, None),
        "null": decoder.context(None, None, None, None, batch_size=frames),
    }
    inside = torch.from_numpy(character_regions(test.shots, decoder.image_size, world))[:, None].expand(-1, 3, -1, -1)
    x0 = images_to_float(test.frames)  # [B, 3, S, S] in [-1, 1]
    scheduler = DDPMScheduler.from_config(decoder.scheduler.config)
    rows = []
    with torch.no_grad():
        for t in timesteps:
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
            ts = torch.full((frames,), t)
            noisy = scheduler.add_noise(x0, noise, ts)
            row = {"t": t}
            for name, (context, key_mask, pooled) in contexts.items():
                out = decoder.predict(noisy, ts, context, key_mask, pooled)
                alphas = scheduler.alphas_cumprod[t]
                if decoder.prediction_type == "epsilon":
                    out = (noisy - (1 - alphas) ** 0.5 * out) / alphas**0.5
                elif decoder.prediction_type == "v_prediction":
                    out = alphas**0.5 * noisy - (1 - alphas) ** 0.5 * out
                err = (out - x0) ** 2
                row[name] = (float(err[inside].mean()), float(err[~inside].mean()))
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--clip", default=None, help="CLIP folder for the descriptor (default: the encoder's).")
    parser.add_argument("--frames", type=int, default=64)
    args = parser.parse_args()
    print("| t | character region: full / tokens / null | background: full / tokens / null |")
    print("|---:|---|---|")
    for row in region_errors(args.checkpoint, args.clip, args.frames, (100, 300, 500, 700, 900)):
        names = ("full", "tokens", "null")
        print(f"| {row['t']} | " + " / ".join(f"{row[n][0]:.3f}" for n in names) + " | "
              + " / ".join(f"{row[n][1]:.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
