"""Draw the face photos of the example scripts (examples/scripts/faces/*.png).

Simple deterministic cartoon faces (skin tone, hair colour and style, eye colour, outfit colour),
two photos per character that differ in pose, expression and background, so that the scripts
validate and the encoders have something to embed. The toy world will replace them with faces
drawn by its own renderer.

    python examples/make_example_faces.py [--out examples/scripts/faces] [--size 112]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw


@dataclass(frozen=True)
class FaceLook:
    """What makes one character recognisable."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    eyes: tuple[int, int, int]
    outfit: tuple[int, int, int]
    hair_style: str  # "short", "long", "bald", "braids", "curly"
    beard: bool = False
    hat: tuple[int, int, int] | None = None


# Ids match the `faces:` entries of examples/scripts/*.yaml.
LOOKS: dict[str, FaceLook] = {
    # short.yaml
    "mira": FaceLook((241, 194, 160), (190, 60, 30), (60, 140, 70), (40, 130, 60), "curly"),
    "theo": FaceLook((150, 100, 70), (30, 25, 20), (90, 60, 30), (40, 70, 160), "short", beard=True),
    "june": FaceLook((255, 220, 190), (230, 200, 90), (60, 110, 200), (230, 200, 40), "long"),
    # long.yaml
    "ada": FaceLook((225, 175, 135), (20, 20, 25), (70, 45, 25), (235, 190, 30), "short"),
    "bram": FaceLook((235, 190, 165), (235, 235, 235), (80, 110, 160), (130, 85, 45), "bald", beard=True),
    "cleo": FaceLook((245, 205, 175), (200, 50, 30), (40, 120, 70), (40, 90, 200), "braids"),
    "dov": FaceLook((120, 80, 55), (60, 40, 30), (40, 30, 20), (110, 110, 110), "short", hat=(40, 120, 50)),
    "elsie": FaceLook((230, 185, 160), (150, 150, 160), (100, 80, 140), (120, 50, 140), "long"),
}

BACKGROUNDS = ((214, 226, 236), (236, 228, 210))


def draw_face(look: FaceLook, variant: int, size: int = 112) -> Image.Image:
    """One photo of a character; `variant` shifts the pose, expression and background."""
    scale = size / 112  # everything below is laid out on a 112-pixel canvas

    def s(*values: float) -> list[float]:
        return [v * scale for v in values]

    image = Image.new("RGB", (size, size), BACKGROUNDS[variant % len(BACKGROUNDS)])
    draw = ImageDraw.Draw(image)
    dx = (-5, 5)[variant % 2]  # head turned a little left / right
    dy = (0, 3)[variant % 2]
    cx, cy = 56 + dx, 54 + dy

    draw.rectangle(s(cx - 38, cy + 36, cx + 38, 112), fill=look.outfit)  # shoulders / outfit
    draw.rectangle(s(cx - 9, cy + 26, cx + 9, cy + 40), fill=look.skin)  # neck
    if look.hair_style in ("long", "braids"):  # hair behind the head
        draw.rectangle(s(cx - 31, cy - 20, cx + 31, cy + 32), fill=look.hair)
    if look.hair_style == "braids":
        for side in (-1, 1):
            draw.ellipse(s(cx + side * 30 - 7, cy + 18, cx + side * 30 + 7, cy + 46), fill=look.hair)
    draw.ellipse(s(cx - 27, cy - 32, cx + 27, cy + 32), fill=look.skin)  # head
    draw.ellipse(s(cx - 32, cy - 4, cx - 24, cy + 10), fill=look.skin)  # ears
    draw.ellipse(s(cx + 24, cy - 4, cx + 32, cy + 10), fill=look.skin)
    if look.hair_style in ("short", "long", "braids"):
        draw.chord(s(cx - 28, cy - 35, cx + 28, cy + 5), 180, 360, fill=look.hair)
    elif look.hair_style == "curly":
        for k in range(7):
            x = cx - 27 + k * 9
            draw.ellipse(s(x - 8, cy - 38 + abs(k - 3) * 3, x + 8, cy - 20 + abs(k - 3) * 3), fill=look.hair)
    elif look.hair_style == "bald":
        draw.chord(s(cx - 29, cy - 12, cx - 18, cy + 8), 90, 270, fill=look.hair)
        draw.chord(s(cx + 18, cy - 12, cx + 29, cy + 8), 270, 90, fill=look.hair)
    if look.hat is not None:
        draw.rectangle(s(cx - 32, cy - 22, cx + 32, cy - 16), fill=look.hat)
        draw.rectangle(s(cx - 22, cy - 44, cx + 22, cy - 20), fill=look.hat)

    for side in (-1, 1):  # eyes: white, iris, pupil
        ex, ey = cx + side * 11, cy - 2
        draw.ellipse(s(ex - 7, ey - 5, ex + 7, ey + 5), fill=(250, 250, 250))
        draw.ellipse(s(ex - 4 + dx / 5, ey - 4, ex + 4 + dx / 5, ey + 4), fill=look.eyes)
        draw.ellipse(s(ex - 1.5 + dx / 5, ey - 1.5, ex + 1.5 + dx / 5, ey + 1.5), fill=(15, 15, 15))
        draw.line(
            s(ex - 7, ey - 10, ex + 7, ey - 10 - variant), fill=look.hair, width=max(1, round(2 * scale))
        )
    draw.line(s(cx, cy + 1, cx - 3, cy + 10, cx + 1, cy + 10), fill=(120, 70, 50), width=1)  # nose
    if look.beard:
        draw.chord(s(cx - 24, cy + 2, cx + 24, cy + 34), 0, 180, fill=look.hair)
    mouth = (150, 40, 40)
    if variant % 2 == 0:  # neutral
        draw.line(s(cx - 8, cy + 17, cx + 8, cy + 17), fill=mouth, width=max(1, round(2 * scale)))
    else:  # smiling
        draw.arc(s(cx - 10, cy + 8, cx + 10, cy + 22), 20, 160, fill=mouth, width=max(1, round(2 * scale)))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "scripts" / "faces")
    parser.add_argument("--size", type=int, default=112, help="photo width and height in pixels")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for character_id, look in LOOKS.items():
        for variant in (0, 1):
            path = args.out / f"{character_id}_{variant + 1}.png"
            draw_face(look, variant, args.size).save(path, optimize=True)
            print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
