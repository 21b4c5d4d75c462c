"""``mdream toyworld``: the procedural toy movie world (scripts, training sets, a preview sheet)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mdream.cli._apps import mdream_app
from mdream.cli._common import JsonOpt, QuietOpt, print_json, run_cli, stdout

app = mdream_app("toyworld", "The procedural toy movie world: ground-truth scripts, training sets and a preview.")

OutDirOpt = Annotated[Path, typer.Option("--output", "-o", help="Output folder.", show_default=False)]
SizeHelp = "Frame width and height in pixels: 32, 64 or 128."
WorldSeedOpt = Annotated[
    int, typer.Option("--world-seed", help="Seed of the world's catalogue (the toy models are trained on 0).")
]


@app.command("script")
def script_cli(
    output: OutDirOpt,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the episode.")] = 0,
    shots: Annotated[int, typer.Option("--shots", help="Number of shots.")] = 60,
    size: Annotated[int, typer.Option("--size", help=SizeHelp)] = 64,
    faces: Annotated[int, typer.Option("--faces", help="Face photos per character.")] = 2,
    title: Annotated[str | None, typer.Option("--title", help="Movie title \\[default: 'Toy episode SEED'].")] = None,
    clips: Annotated[bool, typer.Option("--clips", help="Also write ground-truth clips/*.mp4 and movie.mp4.")] = False,
    given_keyframes: Annotated[
        bool, typer.Option("--given-keyframes", help="Give every shot its ground-truth keyframe (a storyboard to render from).")
    ] = False,
    independent_hidden: Annotated[
        bool, typer.Option("--independent-hidden",
                           help="Also write independent/: the ground truth with every shot's hidden state drawn anew "
                                "(the chance floor of `mdream eval`'s continuity).")
    ] = False,
    world_seed: WorldSeedOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a toy episode as an mdream script, with face photos and the ground-truth movie folder."""
    from mdream.toyworld.commands import toy_script

    path = run_cli(toy_script, output, seed=seed, shots=shots, size=size, faces_per_character=faces,
                   world_seed=world_seed, title=title, clips=clips, progress=not (quiet or json_out),
                   given_keyframes=given_keyframes, independent_hidden=independent_hidden,
                   as_json=json_out)
    if json_out:
        print_json({"script": str(path), "groundtruth": str(path.parent / "groundtruth"),
                    **({"independent": str(path.parent / "independent")} if independent_hidden else {})})
    elif not quiet:
        stdout.print(f"wrote [bold]{path}[/] ({shots} shots) and the ground truth in {path.parent / 'groundtruth'}")


@app.command("dataset")
def dataset_cli(
    output: OutDirOpt,
    episodes: Annotated[int, typer.Option("--episodes", help="Number of episodes.")] = 200,
    shots_per_episode: Annotated[int, typer.Option("--shots-per-episode", help="Shots per episode.")] = 50,
    size: Annotated[int, typer.Option("--size", help=SizeHelp)] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the episodes and renders.")] = 0,
    clips: Annotated[bool, typer.Option("--clips", help="Also store a motion clip per shot.")] = False,
    clip_frames: Annotated[int, typer.Option("--clip-frames", help="Frames per clip (with --clips).")] = 8,
    faces_per_shot: Annotated[int, typer.Option("--faces-per-shot", help="Face photos stored per row.")] = 0,
    shard_size: Annotated[int, typer.Option("--shard-size", help="Rows per shard file.")] = 1000,
    workers: Annotated[int | None, typer.Option("--workers", help="Processes \\[default: up to 2].")] = None,
    world_seed: WorldSeedOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a training set of toy shots in shards (frames, labels, texts; optional clips and faces)."""
    from mdream.toyworld.commands import toy_dataset

    info = run_cli(toy_dataset, output, episodes=episodes, shots_per_episode=shots_per_episode, size=size,
                   seed=seed, clip_frames=clip_frames if clips else 0, faces_per_shot=faces_per_shot,
                   shard_size=shard_size, world_seed=world_seed, workers=workers,
                   progress=not (quiet or json_out), as_json=json_out)
    if json_out:
        print_json({"dir": str(output), "shots": info.n_shots, "shards": len(info.shards), "seconds": info.seconds})
    elif not quiet:
        stdout.print(f"wrote {info.n_shots} shots in {len(info.shards)} shards to [bold]{output}[/] "
                     f"in {info.seconds:.1f} s")


@app.command("preview")
def preview_cli(
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")] = Path("toyworld.png"),
    size: Annotated[int, typer.Option("--size", help=SizeHelp)] = 64,
    world_seed: WorldSeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Save a contact sheet of the world: every character (face + medium shot) and scene (3 cameras)."""
    from mdream.toyworld.commands import toy_preview

    path = run_cli(toy_preview, output, size=size, world_seed=world_seed)
    if not quiet:
        stdout.print(f"wrote [bold]{path}[/]")
