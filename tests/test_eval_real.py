"""The real-data path (transformers CLIP + an insightface recognition ONNX) with tiny random models.

Nothing comes from a hub: the CLIP model, its tokenizer (trained here with `tokenizers`) and its
image processor are saved to a temp folder and loaded back through the same from_pretrained code
that loads a real checkpoint.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mdream.eval.evaluate import evaluate_movie
from mdream.eval.face_embedder import FaceEmbedderConfig, FaceEmbedderNet, export_onnx
from mdream.script import load_script, plan_script
from mdream.toyworld.commands import toy_script


def _tiny_clip_folder(folder, texts: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>", model_max_length=48)
    config = CLIPConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=48, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def real_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    script = toy_script(root / "script", seed=5, shots=12, size=64)
    plan = plan_script(load_script(script))
    clip_dir = _tiny_clip_folder(root / "clip", [s.descriptor for s in plan.shots])
    torch.manual_seed(1)
    face_model = export_onnx(FaceEmbedderNet(FaceEmbedderConfig(widths=(8, 8, 16, 16), head_channels=8)).eval(),
                             root / "tiny_recognition.onnx")
    return {"script": script, "movie": root / "script" / "groundtruth", "clip": clip_dir, "face": face_model,
            "plan": plan}


def test_real_backend_with_tiny_random_models(real_setup):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    r = evaluate_movie(real_setup["movie"], real_setup["script"], backend="real",
                       clip_model=str(real_setup["clip"]), face_model=real_setup["face"])
    assert r.backend == "real" and r.n_shots == 12
    assert r.scene_accuracy is None and r.toy_fid is None  # toy-only metrics
    assert r.clip_score is not None and 0.0 <= r.clip_score <= 100.0
    assert r.diversity is not None and r.copy_fraction is not None
    assert r.n_faces > 0 and r.identity_accuracy is not None and r.identity_margin is not None

    # The per-shot CLIP score equals 100 * max(cos, 0) computed through CLIPModel.forward.
    model = CLIPModel.from_pretrained(real_setup["clip"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(real_setup["clip"])
    processor = CLIPImageProcessor.from_pretrained(real_setup["clip"])
    shot = real_setup["plan"].shots[3]
    image = Image.open(real_setup["movie"] / "keyframes" / "0003.png").convert("RGB")
    with torch.no_grad():
        out = model(**tokenizer([shot.descriptor], return_tensors="pt", truncation=True, max_length=48),
                    pixel_values=processor(images=[image], return_tensors="pt")["pixel_values"])
    cosine = (out.logits_per_image / model.logit_scale.exp()).item()
    assert r.shots[3].clip_score == pytest.approx(100 * max(cosine, 0.0), abs=1e-3)


def test_real_backend_face_model_only(real_setup):
    r = evaluate_movie(real_setup["movie"], real_setup["script"], backend="real", face_model=real_setup["face"])
    assert r.clip_score is None and r.identity_short_term is not None
    assert any("clip" in note.lower() for note in r.notes)


def test_real_backend_missing_clip_folder_is_input_error(real_setup, tmp_path):
    from mdream.errors import InputError

    with pytest.raises(InputError, match="CLIP"):
        evaluate_movie(real_setup["movie"], real_setup["script"], backend="real", clip_model=str(tmp_path / "none"))


def test_positions_give_crops_without_toy_layout():
    from mdream.eval.evaluate import _position_boxes

    class Member:
        def __init__(self, id, position):
            self.id, self.position = id, position

    class Shot:
        cast = (Member("a", "left"), Member("b", "right"), Member("c", None))

    boxes = dict(_position_boxes(Shot(), 96, 96))
    assert set(boxes) == {"a", "b"}
    assert boxes["a"][2] <= 48 <= boxes["b"][0]
    assert np.isclose(boxes["a"][2] - boxes["a"][0], boxes["a"][3] - boxes["a"][1])
