"""``mdream train ...``: train the toy CLIP, the keyframe tokenizer and the evaluator's models; measure a tokenizer.

Each command's options are generated from its training-config dataclass (one option per setting,
its help the field's one-line docstring, litgpt style), so ``--help`` always matches the settings
that are saved beside the checkpoints. ``--config`` loads a YAML recipe of those settings first.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Annotated

import typer

from mdream.cli._apps import mdream_app
from mdream.cli._common import print_json, run_cli, stdout

app = mdream_app("train", "Train mdream's models (toy CLIP, keyframe tokenizer, keyframe AR model, video model, the evaluator's analyser, motion reader and face embedder).")

OUT_HELP = "Run folder: train_config.json and checkpoints/ (checkpoints/latest names the newest) are written here."
RESUME_HELP = "auto (newest checkpoint under --output, else start fresh), never, or a checkpoint folder."
CONFIG_HELP = ("A recipe: a YAML file of these settings, or the name of a packaged one (tokenizer-toy-cpu, clip-toy, "
               "analyser-toy, motion-reader-toy, ar-toy-cpu, video-toy-cpu); options typed here override it.")


def config_command(name: str, config_cls: type, run: typing.Callable[..., object], help_text: str,
                   extra: list[inspect.Parameter] | None = None, after_options: list[inspect.Parameter] | None = None,
                   after: typing.Callable[[object, dict[str, object]], None] | None = None) -> None:
    """Register ``name`` with one option per setting of ``config_cls`` (+ --config, --out, --resume, ``extra``, which
    ``run`` takes, and ``after_options``).

    Options are grouped in ``--help`` by the config class that declares them (``help_panel``); a section's settings
    (``toy_loss.character_weight``) are plain options (``--character-weight``). ``after(result, after_values)``
    runs once training is done (e.g. ``--install``).
    """
    from mdream.training.config import settings_docs, settings_fields, settings_panels

    docs, panels = settings_docs(config_cls), settings_panels(config_cls)
    leaves = settings_fields(config_cls)
    params = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                          default=typer.Option(..., "--output", "-o", "--out", help=OUT_HELP, show_default=False)),
        inspect.Parameter("recipe", inspect.Parameter.KEYWORD_ONLY, annotation=typing.Optional[str],  # noqa: UP045
                          default=typer.Option(None, "--config", help=CONFIG_HELP, show_default=False)),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                          default=typer.Option("auto", "--resume", help=RESUME_HELP)),
        *(extra or []),
        *(after_options or []),
    ]
    names = {}
    for path, tp, f in leaves:
        leaf = path.rsplit(".", 1)[-1]
        names[leaf] = path
        flag = "--" + leaf.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if tp is bool else [flag]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        params.append(inspect.Parameter(
            leaf, inspect.Parameter.KEYWORD_ONLY, annotation=tp,
            default=typer.Option(default, *decls, help=docs.get(path, ""), rich_help_panel=panels.get(path)),
        ))

    def command(ctx: typer.Context, **kwargs: object) -> None:
        out, resume, recipe = kwargs.pop("out"), kwargs.pop("resume"), kwargs.pop("recipe")
        extra_values = {p.name: kwargs.pop(p.name) for p in extra or []}
        after_values = {p.name: kwargs.pop(p.name) for p in after_options or []}
        result = run_cli(_run_with_settings, ctx, config_cls, name, names, kwargs, recipe, run, out, resume, extra_values)
        if after is not None:
            run_cli(after, result, after_values)
        stdout.print(f"done: {result}", highlight=False)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help_text
    app.command(name, help=help_text)(command)


def _run_with_settings(ctx: typer.Context, config_cls: type, name: str, names: dict[str, str], options: dict[str, object],
                       recipe: str | None, run: typing.Callable[..., object], out: Path, resume: str,
                       extra_values: dict[str, object]) -> object:
    """The settings: defaults, then the recipe, then the options typed on the command line; then ``run``."""
    from mdream.training.config import load_recipe, with_values

    values: dict[str, object] = {}
    if recipe:
        _, values = load_recipe(config_cls, recipe, name)
    # the options typed on the command line override the recipe and a resumed run's saved settings, even at their
    # defaults; compared by name: typer vendors its own copy of click, whose ParameterSource enum is private
    typed = {names[k]: v for k, v in options.items()
             if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    values |= typed
    config = with_values(config_cls(), values)
    return run(config, out, resume=resume, given=list(values), **extra_values)


def _register() -> None:
    from mdream.training.analyser import (
        AnalyserTrainingConfig,
        FaceTrainingConfig,
        install_face_embedder,
        install_frame_analyser,
        train_face_embedder,
        train_frame_analyser,
    )
    from mdream.training.ar import ARTrainingConfig, train_ar
    from mdream.training.clip import ClipTrainingConfig, train_clip
    from mdream.training.motion_reader import (
        MotionReaderTrainingConfig,
        install_motion_reader,
        train_motion_reader,
    )
    from mdream.training.tokenizer import TokenizerTrainingConfig, train_tokenizer
    from mdream.training.video import VideoTrainingConfig, train_video

    config_command(
        "clip", ClipTrainingConfig, train_clip,
        "Train the toy CLIP contrastively on toy-world frames and descriptors.",
        extra=[inspect.Parameter("export", inspect.Parameter.KEYWORD_ONLY, annotation=typing.Optional[Path],  # noqa: UP045
                                 default=typer.Option(None, "--export", help="Also write the final CLIP folder here."))],
    )
    config_command(
        "ar", ARTrainingConfig, train_ar,
        "Train the keyframe AR model (script -> keyframe tokens) on encoded toy-world episodes.",
        extra=[inspect.Parameter("export", inspect.Parameter.KEYWORD_ONLY, annotation=typing.Optional[Path],  # noqa: UP045
                                 default=typer.Option(None, "--export", help="Also write the final keyframe AR folder here."))],
    )
    config_command(
        "tokenizer", TokenizerTrainingConfig, train_tokenizer,
        "Train the keyframe tokenizer (token compressor + ID-preserving renderer) with CLIP frozen.",
    )
    config_command(
        "video", VideoTrainingConfig, train_video,
        "Train the toy image-to-video model (SVD-class UNet) on toy-world motion clips.",
        extra=[inspect.Parameter("export", inspect.Parameter.KEYWORD_ONLY, annotation=typing.Optional[Path],  # noqa: UP045
                                 default=typer.Option(None, "--export", help="Also write the final video model folder here."))],
    )
    install = inspect.Parameter("install", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                default=typer.Option(False, "--install", help="Copy the result into mdream/assets/eval/."))
    config_command(
        "analyser", AnalyserTrainingConfig, train_frame_analyser,
        "Train the evaluator's toy frame analyser (scene + who is where) on fresh toy renders.",
        after_options=[install], after=lambda folder, opts: install_frame_analyser(folder) if opts["install"] else None,
    )
    config_command(
        "motion-reader", MotionReaderTrainingConfig, train_motion_reader,
        "Train the evaluator's toy motion reader (each slot's action, the camera's motion) on toy ground-truth clips.",
        after_options=[install], after=lambda folder, opts: install_motion_reader(folder) if opts["install"] else None,
    )
    config_command(
        "face-embedder", FaceTrainingConfig, train_face_embedder,
        "Train the evaluator's toy face-identity embedder (ArcFace loss) and export it to ONNX.",
        after_options=[install], after=lambda onnx, opts: install_face_embedder(onnx) if opts["install"] else None,
    )


_register()


@app.command("bundle")
def bundle_cli(
    out: Annotated[Path, typer.Option("--out", "-o", "--output", help="Folder of the step runs (OUT/clip, OUT/tokenizer, ...), the staged models (OUT/bundle) and manifest.json.", show_default=False)],
    dest: Annotated[Path | None, typer.Option(help="Where the models are written (an assets tree: models/, eval/, bundles/toy/bundle.yaml) \\[default: the package's mdream/assets, i.e. the shipped bundle].", show_default=False)] = None,
    resume: Annotated[str, typer.Option(help="auto: skip finished steps, resume unfinished ones from their checkpoints; never: retrain every step.")] = "auto",
    smoke: Annotated[bool, typer.Option("--smoke", help="Tiny budgets (a few steps per component on a little data): checks the orchestration in minutes; the models are useless.")] = False,
    fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="Store the shipped weights as float16 safetensors (they load back into float32).")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
) -> None:
    """Train every toy model from scratch in dependency order (CLIP, face embedder, tokenizer and its fine-tuning for
    the hidden state, keyframe AR, frame analyser, motion reader, video) and write them into one toy bundle; rerun to
    resume."""
    from rich.table import Table

    from mdream.training.toy_bundle import ASSETS, STEPS, train_toy_bundle

    report = run_cli(train_toy_bundle, out, dest if dest is not None else ASSETS, resume=resume, smoke=smoke,
                     fp16=fp16, as_json=json_out)
    if json_out:
        print_json(report.to_dict())
        return
    expected = {s.name: s.expected_minutes for s in STEPS}
    table = Table(title=f"toy bundle{' (smoke)' if smoke else ''}: {report.out}")
    for column in ("step", "minutes", "full recipe, 2 cores", "result"):
        table.add_column(column, justify="right" if column in ("minutes", "full recipe, 2 cores") else "left")
    for step in report.steps:
        full = f"{expected[step.name]:.0f}" if expected.get(step.name) else "-"
        table.add_row(step.name, f"{step.minutes:.2f}", full, step.status + (f": {step.note}" if step.note else ""))
    stdout.print(table)
    stdout.print(f"manifest: {report.manifest}", highlight=False)
    if report.dest is not None:
        stdout.print(f"models written to {report.dest}", highlight=False)


@app.command("export")
def export_cli(
    checkpoint: Annotated[Path, typer.Argument(help="A tokenizer, CLIP, keyframe AR or video checkpoint (RUN/checkpoints/step-N), a model folder (RUN/final) or a run folder (its newest checkpoint).", show_default=False)],
    dest: Annotated[Path, typer.Argument(help="The model folder to write (e.g. mdream/assets/models/toy-tokenizer).", show_default=False)],
    clip_reference: Annotated[str | None, typer.Option(help="Tokenizer: the encoder's CLIP, relative to DEST/encoder (e.g. ../../toy-clip) or a hub id \\[default: a CLIP with the same weights beside DEST, else a copy in DEST/clip].", show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(help="Tokenizer: sampling steps saved with the decoder \\[default: eval.json's, else the decoder's].", show_default=False)] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="Tokenizer: classifier-free guidance scale saved with the decoder (1 = none) \\[default: eval.json's, else the decoder's].", show_default=False)] = None,
    identity_guidance: Annotated[float | None, typer.Option(help="Tokenizer: identity guidance saved with the decoder (0 = off) \\[default: eval.json's, else the decoder's].", show_default=False)] = None,
    scheduler: Annotated[str | None, typer.Option(help="Tokenizer: sampler saved with the decoder: ddim, ddpm, euler or dpmpp \\[default: eval.json's, else the decoder's].", show_default=False)] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Store the weights as float16 safetensors (half the size); they load back into float32.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
) -> None:
    """Write a checkpoint as a portable model folder: relative references, full sampling settings, no machine paths."""
    from mdream.training.export import export_model

    result = run_cli(export_model, checkpoint, dest, clip_reference=clip_reference, num_inference_steps=steps,
                     guidance_scale=guidance_scale, identity_guidance_scale=identity_guidance, scheduler=scheduler,
                     fp16=fp16, as_json=json_out)
    if json_out:
        print_json(result.to_dict())
        return
    stdout.print(f"exported the {result.kind} {result.source} to {result.dest}", highlight=False)
    if result.clip_reference is not None:
        stdout.print(f"  CLIP: {result.clip_reference}", highlight=False)
    if result.sampling is not None:
        stdout.print("  sampling: " + ", ".join(f"{k} {v}" for k, v in result.sampling.items()), highlight=False)
    for note in result.notes:
        stdout.print(f"  note: {note}", highlight=False)


@app.command("tokenizer-eval")
def tokenizer_eval_cli(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (OUT/checkpoints/step-N) or a folder with encoder/ and decoder/.", show_default=False)],
    frames: Annotated[int, typer.Option(help="Held-out frames to reconstruct.")] = 256,
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 20,
    guidance_scale: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = none).")] = 1.0,
    identity_guidance: Annotated[float, typer.Option(help="Identity guidance: the full context against it without faces (0 = off).")] = 0.0,
    conditions: Annotated[str, typer.Option(help="Comma-separated: tokens, tokens+faces, tokens+faces+text, faces+text, null.")] = "tokens,tokens+faces,tokens+faces+text,faces+text,null",
    seed: Annotated[int, typer.Option(help="Seed of the held-out shots and the sampling noise.")] = 12345,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
    save: Annotated[Path | None, typer.Option(help="Also write the JSON report here.")] = None,
    grid: Annotated[Path | None, typer.Option(help="Write a PNG: ground truth, then one row of renders per context.")] = None,
    probe_frames: Annotated[int, typer.Option(help="Frames to fit the linear probe on the tokens (0: skip).")] = 2048,
    scheduler: Annotated[str | None, typer.Option(help="Sampler: ddim, ddpm, euler or dpmpp (default: the decoder's own).", show_default=False)] = None,
    analyser: Annotated[Path | None, typer.Option(help="Frame analyser folder (config.json + model.safetensors) instead of the shipped one; scores compare only within one analyser.", show_default=False)] = None,
) -> None:
    """Reconstruct held-out toy frames through the tokens and score scene, cast and identity."""
    from mdream.training.evaluate_tokenizer import evaluate_checkpoint

    report = run_cli(evaluate_checkpoint, checkpoint, frames=frames, num_inference_steps=steps,
                     guidance_scale=guidance_scale, identity_guidance_scale=identity_guidance, seed=seed, conditions=conditions, out_json=save, grid=grid,
                     probe_train_frames=probe_frames, scheduler=scheduler, analyser=analyser, as_json=json_out)
    if json_out:
        print_json(report.to_dict())
        return
    from rich.table import Table

    table = Table(title=f"tokenizer reconstruction: {report.frames} held-out frames, {report.scheduler} {report.steps} steps, "
                  f"cfg {report.guidance_scale}, identity guidance {report.identity_guidance_scale}")
    columns = sorted({k for row in report.results.values() for k in row})
    table.add_column("context")
    for c in columns:
        table.add_column(c, justify="right")
    for name, row in report.results.items():
        table.add_row(name, *("n/a" if row.get(c) is None else f"{row[c]:.3f}" for c in columns))
    stdout.print(table)
    for name, errors in report.errors.items():
        cameras = ", ".join(f"{k} {v['cast']:.2f}" for k, v in errors["by_camera"].items())
        misread = ", ".join(f"{c['true']}->{c['read']}" + (f" ({c['differs_in']})" if c["differs_in"] else "") + f" x{c['count']}"
                            for c in errors["confusions"][:4])
        stdout.print(f"{name}: cast by camera {cameras}; {errors['misread_slots']} slots misread"
                     + (f", most often {misread}" if misread else ""), highlight=False)
    if report.probe:
        stdout.print("linear probe on the tokens: " + ", ".join(f"{k} {v:.3f}" for k, v in report.probe.items()), highlight=False)
    if report.token_identity:
        stdout.print("identities read off the tokens by the run's identity head: "
                     + ", ".join(f"{k} {v:.3f}" for k, v in report.token_identity.items()), highlight=False)
