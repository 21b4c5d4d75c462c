"""The shared training loop, YAML recipes, saved settings of removed options, frame sources."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mdream.errors import InputError
from mdream.training.cli import app
from mdream.training.config import flatten, load_recipe, resumed_config, save_config
from mdream.training.tokenizer import TokenizerTrainingConfig, ToyLossWeights

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def test_the_packaged_tokenizer_recipe_is_how_the_shipped_weights_were_trained():
    """The shipped weights were fine-tuned with tokenizer-toy-hidden from weights trained with tokenizer-toy-cpu."""
    shipped = json.loads((ROOT / "mdream" / "assets" / "models" / "toy-tokenizer" / "train_config.json").read_text())
    path, values = load_recipe(TokenizerTrainingConfig, "tokenizer-toy-hidden", "tokenizer")
    assert path.name == "tokenizer-toy-hidden.yaml"
    config = resumed_config(TokenizerTrainingConfig, ROOT / "mdream/assets/models/toy-tokenizer/train_config.json",
                            TokenizerTrainingConfig(), given=[])

    def recipe_config(values):
        return TokenizerTrainingConfig(**{k: v for k, v in values.items() if "." not in k},
                                       toy_loss=ToyLossWeights(**{k.split(".")[1]: v for k, v in values.items() if "." in k}))

    saved, from_recipe = flatten(config), flatten(recipe_config(values))
    # every setting the shipped run recorded (but the two removed ones, at the values the code kept) is the recipe's
    recorded = {f"{k}.{sub}": v for k, group in shipped.items() if isinstance(group, dict) for sub, v in group.items()}
    recorded.update({k: v for k, v in shipped.items() if not isinstance(v, dict)})
    for key, value in recorded.items():
        if key in ("head_weight", "lookalike_split"):
            continue
        path = f"toy_loss.{key}" if key in ("character_weight", "lookalike_share") else key
        assert from_recipe[path] == value == saved[path], key
    # the fine-tune differs from the from-scratch recipe only where a fine-tune must
    _, scratch = load_recipe(TokenizerTrainingConfig, "tokenizer-toy-cpu", "tokenizer")
    from_scratch = flatten(recipe_config(scratch))
    assert {k for k, v in from_recipe.items() if from_scratch[k] != v} == {"init", "lr", "warmup", "max_minutes"}
    # the defaults are the from-scratch recipe, but for its 2-hour CPU budget
    defaults = flatten(TokenizerTrainingConfig())
    assert {k for k, v in from_scratch.items() if defaults[k] != v} == {"max_minutes"}


TINY_CLIP = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "patch_size": 8, "projection_dim": 16,
             "batch_size": 16, "num_frames": 64, "val_frames": 32, "checkpoint_every": 1, "steps": 2}


def test_a_recipe_loads_and_an_option_typed_overrides_it(tmp_path):
    import yaml

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"trainer": "clip", **TINY_CLIP, "lr": 0.005}))
    out = tmp_path / "run"
    result = runner.invoke(app, ["clip", "--config", str(recipe), "--out", str(out), "--steps", "1"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["steps"] == 1 and saved["lr"] == 0.005 and saved["hidden_size"] == 16
    assert (out / "checkpoints" / "step-0000001" / "state.json").is_file()
    # on resume the recipe's settings count as given; an option typed now still wins over both
    result = runner.invoke(app, ["clip", "--config", str(recipe), "--out", str(out), "--lr", "0.001"])
    assert result.exit_code == 0 and "resumed from" in result.output, result.output
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["steps"] == 2 and saved["lr"] == 0.001


@pytest.mark.parametrize(("text", "message"), [
    ("steps: 1\nbatch_sise: 4\n", "unknown setting 'batch_sise'"),
    ("steps: ten\n", "'steps' must be an int"),
    ("toy_loss:\n  character_weight: 0\n", "'toy_loss.character_weight': --character-weight must be > 0"),
    ("character_weight: 4\n", "unknown setting 'character_weight'"),
    ("toy_loss:\n  lookalike_split: pixel\n", "no longer a setting"),
    ("trainer: clip\nsteps: 1\n", "a recipe for `mdream train clip`"),
    ("attention_heads: 3\n", "must divide"),
    ("[1, 2]\n", "expected a mapping"),
])
def test_a_bad_recipe_exits_2_naming_the_file_and_the_setting(tmp_path, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    result = runner.invoke(app, ["tokenizer", "--config", str(recipe), "--out", str(tmp_path / "run")],
                           terminal_width=400)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert message in output and str(recipe) in output and "Traceback" not in output
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_unknown_settings_get_a_hint_and_unknown_recipes_list_the_packaged_ones(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("batch_sise: 4\ntoy_loss:\n  character_weight: 2\n")
    with pytest.raises(InputError) as err:
        load_recipe(TokenizerTrainingConfig, str(recipe), "tokenizer")
    assert "batch_size" in err.value.hint
    recipe.write_text("character_weight: 2\n")
    with pytest.raises(InputError) as err:
        load_recipe(TokenizerTrainingConfig, str(recipe), "tokenizer")
    assert "toy_loss:" in err.value.hint
    result = runner.invoke(app, ["tokenizer", "--config", "no-such-recipe", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "tokenizer-toy-cpu" in result.output


def test_a_saved_run_with_a_removed_setting_resumes_only_where_the_behaviour_is_kept(tmp_path):
    saved = tmp_path / "train_config.json"
    # an older, flat record: the toy loss weights at the top, the two removed settings at the values the code kept
    saved.write_text(json.dumps({"steps": 7, "character_weight": 2.0, "lookalike_share": 0.1, "head_weight": 0.0,
                                 "lookalike_split": "pair"}))
    config = resumed_config(TokenizerTrainingConfig, saved, TokenizerTrainingConfig(steps=9), given=["steps"])
    assert (config.steps, config.toy_loss.character_weight, config.toy_loss.lookalike_share) == (9, 2.0, 0.1)
    for removed in ({"head_weight": 8.0}, {"lookalike_split": "pixel"}):
        saved.write_text(json.dumps({"steps": 7, **removed}))
        with pytest.raises(InputError, match="no longer exists"):
            resumed_config(TokenizerTrainingConfig, saved, TokenizerTrainingConfig(), given=[])
    # the nested form this version writes reads back as it was
    save_config(config, saved)
    assert resumed_config(TokenizerTrainingConfig, saved, TokenizerTrainingConfig(), given=[]) == config


class _LinearTask:
    """A tiny regression through fit(): y = x @ w on one fixed batch (so only the training state decides the
    weights); ``crash_at``: raise in that call of ``sample``, as an interrupted run stops."""

    unit = "rows"

    def __init__(self, crash_at: int | None = None):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)
        self.x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.calls, self.crash_at = 0, crash_at

    def sample(self, rng: np.random.Generator, size: int):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt
        return self.x, self.y

    def loss(self, model, batch):
        x, y = batch
        return {"loss": nn.functional.mse_loss(model(x), y)}


def _fit(out: Path, task: _LinearTask, resume: bool):
    from mdream.training.common import make_accelerator, resolve_resume
    from mdream.training.loop import LoopConfig, fit

    config = LoopConfig(steps=5, batch_size=8, lr=0.05, warmup=2, ema_decay=0.9, checkpoint_every=1,
                        keep_checkpoints=2, log_every=100)
    accelerator = make_accelerator("no", 1)
    start = resolve_resume("auto", out) if resume else None
    return fit(task, config, out, accelerator, resume_from=start, name="linear")


def test_fit_resumes_the_step_count_optimizer_and_ema_exactly(tmp_path):
    """A run stopped after its step-3 checkpoint and resumed ends where five steps in one go end: the weights, the
    optimizer's moments and the EMA (its average and its step count) all continue."""
    straight = _fit(tmp_path / "a", _LinearTask(), resume=False)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "b", _LinearTask(crash_at=4), resume=False)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step-0000003"
    resumed = _fit(tmp_path / "b", _LinearTask(), resume=True)
    assert resumed.step == straight.step == 5
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    from safetensors.torch import load_file

    def ema_of(run: Path) -> dict:
        return torch.load(run / "checkpoints" / "step-0000005" / "train" / "custom_checkpoint_1.pkl", weights_only=True)

    a, b = ema_of(tmp_path / "a"), ema_of(tmp_path / "b")
    assert a["optimization_step"] == b["optimization_step"] == 5
    for x, y in zip(a["shadow_params"], b["shadow_params"], strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a["shadow_params"][0], straight.model.weight)  # the EMA is its own average
    state = json.loads((tmp_path / "b" / "checkpoints" / "step-0000005" / "state.json").read_text())
    assert state["step"] == 5 and state["elapsed_s"] > 0
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step-*")) == ["step-0000004", "step-0000005"]
    weights = load_file(tmp_path / "b" / "checkpoints" / "step-0000005" / "train" / "model.safetensors")
    assert torch.equal(weights["weight"], resumed.model.weight)


def test_a_checkpoint_without_training_state_is_refused_clearly(tmp_path):
    from mdream.training.loop import check_resumable

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "state.pt").write_bytes(b"")
    with pytest.raises(InputError, match="no training state"):
        check_resumable(tmp_path)


def test_no_code_unpickles_with_weights_only_false():
    pattern = re.compile(r"weights_only\s*=\s*False")
    offenders = [str(p.relative_to(ROOT)) for folder in ("mdream", "benchmarks", "tests") for p in (ROOT / folder).rglob("*.py")
                 if p.name != Path(__file__).name and pattern.search(p.read_text())]
    assert offenders == []


def test_the_evaluator_never_imports_the_trainers():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "mdream" / "eval").rglob("*.py")
                 if re.search(r"(from|import)\s+mdream\.training", p.read_text())]
    assert offenders == []


def test_a_folder_of_images_is_a_frame_source(tmp_path):
    from PIL import Image

    from mdream.training.data import ImageFolderFrames, ToyWorldFrames, open_frame_source

    for i in range(5):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(tmp_path / f"frame{i}.png")
    (tmp_path / "frame1.txt").write_text("A wide shot of the harbour.\n")
    source = open_frame_source(str(tmp_path), world_seed=0, seed=0, holdout=2)
    assert isinstance(source, ImageFolderFrames) and not source.toy
    train = source.load(0, 16)
    assert train.frames.shape == (3, 16, 16, 3) and train.descriptors[:2] == ["", "A wide shot of the harbour."]
    assert (train.chars == -1).all() and (train.scene == -1).all()
    held = source.held_out(2, 16)
    assert held.frames.shape == (2, 16, 16, 3) and held.frames[0, 0, 0, 0] == 120  # frame3: never trained on
    with pytest.raises(InputError, match="figure masks"):
        source.load(0, 16, masks=("figures",))
    assert isinstance(open_frame_source("", 0, 0), ToyWorldFrames)
    with pytest.raises(InputError, match="no such folder"):
        open_frame_source(str(tmp_path / "nope"), 0, 0)


def test_the_analyser_trains_through_the_cli_and_resumes(tmp_path):
    tiny = ["analyser", "--out", str(tmp_path), "--pool-size", "16", "--batch-size", "8", "--refresh-per-step", "2",
            "--val-frames", "8"]
    result = runner.invoke(app, [*tiny, "--steps", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*tiny, "--steps", "2"])
    assert result.exit_code == 0 and "resumed from" in result.output, result.output
    assert json.loads((tmp_path / "frame_analyser" / "config.json").read_text())["steps"] == 2
    bad = runner.invoke(app, [*tiny, "--clean-fraction", "2"])
    assert bad.exit_code == 2 and "--clean-fraction must be in [0, 1]" in bad.output
