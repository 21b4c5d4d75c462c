"""``mdream train ...``: train the toy CLIP and the keyframe tokenizer, and measure a tokenizer.

Each command's options are generated from its training-config dataclass (one option per field,
its help the field's one-line docstring, litgpt style), so ``--help`` always matches the settings
that are saved beside the checkpoints.
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

app = mdream_app("train", "Train mdream's models (toy CLIP, keyframe tokenizer).")

OUT_HELP = "Run folder: train_config.json and checkpoints/ (checkpoints/latest names the newest) are written here."
RESUME_HELP = "auto (newest checkpoint under --out, else start fresh), never, or a checkpoint folder."


def config_command(name: str, config_cls: type, run: typing.Callable[..., object], help_text: str,
                   extra: list[inspect.Parameter] | None = None) -> None:
    """Register ``name`` with one option per field of ``config_cls`` (+ --out, --resume and ``extra``)."""
    from mdream.training.common import field_docs

    docs = field_docs(config_cls)
    hints = typing.get_type_hints(config_cls)
    params = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                          default=typer.Option(..., "--out", "-o", help=OUT_HELP, show_default=False)),
        inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                          default=typer.Option("auto", "--resume", help=RESUME_HELP)),
        *(extra or []),
    ]
    for f in dataclasses.fields(config_cls):
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
            default=typer.Option(f.default, "--" + f.name.replace("_", "-"), help=docs.get(f.name, "")),
        ))

    def command(ctx: typer.Context, **kwargs: object) -> None:
        out, resume = kwargs.pop("out"), kwargs.pop("resume")
        extra_values = {p.name: kwargs.pop(p.name) for p in extra or []}
        config = config_cls(**kwargs)
        # the options typed on the command line override a resumed run's saved settings, even at their defaults;
        # compared by name: typer vendors its own copy of click, whose ParameterSource enum is private
        given = [name for name in kwargs if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"]
        result = run_cli(run, config, out, resume=resume, given=given, **extra_values)
        stdout.print(f"done: {result}", highlight=False)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help_text
    app.command(name, help=help_text)(command)


def _register() -> None:
    from mdream.training.clip import ClipTrainingConfig, train_clip
    from mdream.training.tokenizer import TokenizerTrainingConfig, train_tokenizer

    config_command(
        "clip", ClipTrainingConfig, train_clip,
        "Train the toy CLIP contrastively on toy-world frames and descriptors.",
        extra=[inspect.Parameter("export", inspect.Parameter.KEYWORD_ONLY, annotation=typing.Optional[Path],  # noqa: UP045
                                 default=typer.Option(None, "--export", help="Also write the final CLIP folder here."))],
    )
    config_command(
        "tokenizer", TokenizerTrainingConfig, train_tokenizer,
        "Train the keyframe tokenizer (token compressor + ID-preserving renderer) with CLIP frozen.",
    )


_register()


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
