"""``mdream``: the command line. Each ``<verb>_cli`` parses options and calls a plain function.

Exit codes: 0 ok, 1 runtime failure, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mdream.cli._apps import LazySubcommand, lazy_group, mdream_app
from mdream.cli._common import (
    CacheDirOpt,
    DeviceOpt,
    ForceOpt,
    FromStageOpt,
    JsonOpt,
    OffloadOpt,
    QuietOpt,
    ScriptArg,
    SeedOpt,
    print_json,
    run_cli,
    stdout,
)
from mdream.errors import InputError
from mdream.stages.registry import names_text

#: Sub-commands that live beside their packages, imported only when run (``mdream --help`` imports none).
SUBCOMMANDS = {
    "train": LazySubcommand(
        "mdream.training.cli:app",
        "Train mdream's models (toy CLIP, keyframe tokenizer, keyframe AR model, video model, the evaluator's analyser, motion reader and face embedder).",
    ),
    "toyworld": LazySubcommand(
        "mdream.toyworld.cli:app", "The procedural toy movie world: ground-truth scripts, training sets and a preview."
    ),
    "cache": LazySubcommand(
        "mdream.cli.cache_cli:app",
        "Inspect an artifact cache and prune its debris (quarantined artifacts, dead writers' temp folders).",
    ),
    "models": LazySubcommand(
        "mdream.cli.models_cli:app",
        "List model bundles and show each one's components: class, source, size, presence, defaults.",
    ),
    "eval": LazySubcommand(
        "mdream.eval.cli:app", "Score a generated movie against its script: adherence, identity consistency, continuity, toy-FID, diversity; with --frames clips also the motion of every shot (its cast's actions, its camera)."
    ),
}


def _route_library_warnings() -> None:
    """Show the cache's warnings (a corrupt artifact quarantined, ...) on stderr, one line each."""
    import logging

    from rich.logging import RichHandler

    from mdream.cli._common import stderr as console

    logger = logging.getLogger("mdream")
    if not logger.handlers:
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


_route_library_warnings()

app = mdream_app(
    "mdream",
    "Turn a multimodal movie script into a movie: encode -> keyframes -> render -> video.",
    cls=lazy_group(SUBCOMMANDS),
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        import mdream

        print(f"mdream {mdream.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print mdream's version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    """Turn a multimodal movie script into a movie: encode -> keyframes -> render -> video."""


def _options(cache_dir, device, seed, force, from_stage, quiet, offload):
    """A factory, so that bad option values raise inside run_cli (located message, exit 2)."""
    from mdream.stages.options import RunOptions

    return lambda: RunOptions(cache_dir=cache_dir, device=device, seed=seed, force=force, from_stage=from_stage,
                              quiet=quiet, offload=offload)


@app.command("script-validate")
def script_validate_cli(
    scripts: Annotated[list[Path], typer.Argument(help="Scripts to check (YAML or JSON).", show_default=False)],
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Validate scripts: every problem at once, each with file:line:column, field and hint."""
    from mdream.cli._display import show_validation
    from mdream.stages.validate import validate_scripts

    results = run_cli(validate_scripts, scripts, as_json=json_out)
    if json_out:
        print_json([r.to_dict() for r in results])
    else:
        show_validation(results, quiet=quiet)
    if not all(r.ok for r in results):
        raise typer.Exit(max(r.error.exit_code for r in results if r.error))


@app.command("script-schema")
def script_schema_cli() -> None:
    """Print the script format's JSON Schema (for editors)."""
    from mdream.stages.validate import script_schema

    print_json(run_cli(script_schema))


OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", show_default=False,
        help="Movie folder for the keyframes (a tokens file: folder for the PNGs) "
        "\\[default: SCRIPT_NAME.movie/ beside the script; TOKENS_NAME/ beside a tokens file].",
    ),
]
OutAliasOpt = Annotated[Path | None, typer.Option("--out", hidden=True, help="Same as --output.")]

def _stage_cli(stage: str):
    """The generated ``mdream STAGE SCRIPT`` command of a per-shot stage of the pipeline."""

    def command(
        script: ScriptArg,
        cache_dir: CacheDirOpt = None,
        device: DeviceOpt = "auto",
        offload: OffloadOpt = False,
        seed: SeedOpt = None,
        force: ForceOpt = False,
        from_stage: FromStageOpt = None,
        json_out: JsonOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        _call_stage(stage, script, _options(cache_dir, device, seed, force, from_stage, quiet or json_out, offload), json_out, quiet)

    return command


def _call_stage(stage: str, script: Path, options_factory, json_out: bool, quiet: bool, movie_dir: Path | None = None) -> None:
    """Run one stage of a script (and the per-movie steps that follow it), then show the reports."""
    from mdream.cli._display import show_reports
    from mdream.stages.run import run_stages

    reports = run_cli(lambda: run_stages(script, stage, options_factory(), movie_dir=movie_dir)[1], as_json=json_out)
    if json_out:
        print_json([r.to_dict() for r in reports])
    elif not quiet:
        show_reports(reports)


def encode_cli(
    inputs: Annotated[
        list[Path], typer.Argument(help="A script, or images / folders / video files.", show_default=False)
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Media mode: the tokens file to write (.safetensors).")
    ] = Path("tokens.safetensors"),
    bundle: Annotated[str, typer.Option("--bundle", help="Media mode: model bundle name or folder.")] = "toy",
    keyframes_per_shot: Annotated[
        int, typer.Option("--keyframes-per-shot", help="Media mode: keyframes taken in each video shot.")
    ] = 1,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    offload: OffloadOpt = False,
    seed: SeedOpt = None,
    force: ForceOpt = False,
    from_stage: FromStageOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Encode a script's faces and descriptors, or images/videos into keyframe tokens (shots cut by PySceneDetect)."""
    from mdream.stages.media import encode_media, is_script

    if len(inputs) == 1 and is_script(inputs[0]):
        _call_stage("encode", inputs[0], _options(cache_dir, device, seed, force, from_stage, quiet or json_out, offload), json_out, quiet)
        return
    report = run_cli(
        lambda: encode_media(inputs, output, bundle, cache_dir, device, keyframes_per_shot, force, offload),
        as_json=json_out
    )
    if json_out:
        print_json(report.to_dict())
    elif not quiet:
        stdout.print(
            f"wrote [bold]{report.output}[/]: {report.items} keyframes, tokens {list(report.token_shape)} "
            f"({report.encoded} encoded, {report.reused} from the cache)"
        )


def render_cli(
    source: Annotated[Path, typer.Argument(help="A script, or a tokens file from `mdream encode`.", show_default=False)],
    out: OutOpt = None,
    out_alias: OutAliasOpt = None,
    bundle: Annotated[str, typer.Option("--bundle", help="Tokens mode: model bundle name or folder.")] = "toy",
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Tokens mode: sampling steps \\[default: the bundle's]. Scripts set output.sampling.", show_default=False)] = None,
    guidance_scale: Annotated[float | None, typer.Option("--guidance-scale", min=0.0, help="Tokens mode: classifier-free guidance (1 = none) \\[default: the bundle's].", show_default=False)] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help="Tokens mode: ddim, ddpm, euler or dpmpp \\[default: the bundle's].", show_default=False)] = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    offload: OffloadOpt = False,
    seed: SeedOpt = None,
    force: ForceOpt = False,
    from_stage: FromStageOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Render keyframes from tokens, faces and descriptors into the movie folder (or a tokens file to PNGs)."""
    out = out or out_alias
    if source.suffix == ".safetensors":
        from mdream.stages.media import render_tokens

        target = out or source.with_suffix("")
        paths = run_cli(lambda: render_tokens(source, target, bundle, device, seed or 0, steps, guidance_scale, sampler,
                                              offload),
                        as_json=json_out)
        if json_out:
            print_json({"images": [str(p) for p in paths]})
        elif not quiet:
            stdout.print(f"wrote {len(paths)} images to [bold]{target}[/]")
        return
    if steps is not None or guidance_scale is not None or sampler is not None:

        def refuse() -> None:
            raise InputError("--steps, --guidance-scale and --sampler are for a tokens file.",
                             hint="A script sets them in output.sampling (steps, guidance_scale, sampler), so that "
                                  "its cache keys and `mdream status` see them.")

        run_cli(refuse, as_json=json_out)
    options = _options(cache_dir, device, seed, force, from_stage, quiet or json_out, offload)
    _call_stage("render", source, options, json_out, quiet, movie_dir=out)


#: Stages whose command also takes media files besides a script (written by hand above).
MEDIA_COMMANDS = {"encode": encode_cli, "render": render_cli}


def _register_stage_commands() -> None:
    """One command per per-shot stage of the pipeline, in pipeline order (mdream/stages/registry.py)."""
    from mdream.stages.registry import pipeline

    for stage in pipeline():
        if stage.per_movie:
            continue  # per-movie steps run after their upstream stages
        if stage.name in MEDIA_COMMANDS:
            app.command(stage.name)(MEDIA_COMMANDS[stage.name])
        else:
            app.command(stage.name, help=stage.help or None)(_stage_cli(stage.name))


_register_stage_commands()


@app.command("generate")
def generate_cli(
    scripts: Annotated[list[Path], typer.Argument(help="One or more movie scripts (YAML or JSON).", show_default=False)],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", show_default=False,
                     help="One script: the movie file to write (mp4) \\[default: movie.mp4]. Several scripts: a folder "
                     "that gets SCRIPT_NAME.mp4 for each \\[default: each movie beside its script, SCRIPT_NAME.mp4]. "
                     "The run report goes beside each movie: NAME.report.json."),
    ] = None,
    until: Annotated[
        str, typer.Option("--until", help=f"Stop after this stage: {names_text()} (render: the keyframes and previews in the movie folder; video: the movie too).")
    ] = "video",
    transition: Annotated[
        str | None, typer.Option("--transition", help="How shots join in the movie: cut or crossfade (default: the script's output.transition, else cut).", show_default=False)
    ] = None,
    cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto",
    offload: OffloadOpt = False,
    seed: SeedOpt = None,
    force: ForceOpt = False,
    from_stage: FromStageOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run report (a list of them for several scripts) as JSON on stdout, and nothing else.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Run every stage and write the movie and its run report (resumes from the cache after a failure).

    Several processes (or machines sharing the cache folder) may run the same command at once: they
    split the shots between them, each artifact made once (see docs/batch.md).
    """
    from mdream.cli._display import show_generate
    from mdream.stages.run import generate_many

    def call():
        options = _options(cache_dir, device, seed, force, from_stage, quiet or json_out, offload)()
        return generate_many(scripts, output, options, until, transition)

    results = run_cli(call, as_json=json_out)
    if json_out:
        print_json(results[0].to_dict() if len(results) == 1 else [r.to_dict() for r in results])
    elif not quiet:
        for result in results:
            show_generate(result)


@app.command("status")
def status_cli(
    script: ScriptArg,
    cache_dir: CacheDirOpt = None,
    json_out: JsonOpt = False,
    verify: Annotated[bool, typer.Option("--verify", help="Check every artifact's checksum (slower).")] = False,
) -> None:
    """Show, per stage and shot, whether its artifact is done, stale or missing."""
    from mdream.cli._display import show_status
    from mdream.stages.options import RunOptions
    from mdream.stages.status import script_status

    report = run_cli(lambda: script_status(script, RunOptions(cache_dir=cache_dir), verify=verify), as_json=json_out)
    if json_out:
        print_json(report.to_dict())
    else:
        show_status(report)


def main() -> None:
    from mdream.cli import install_interrupt_handler

    install_interrupt_handler()
    app()


if __name__ == "__main__":
    main()
