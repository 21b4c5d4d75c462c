"""The shipped toy face embedder: an insightface recognition model that tells the world's look-alikes apart."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from mdream.errors import InputError
from mdream.eval.evaluate import TOY_FACE_MODEL
from mdream.eval.face_embedder import FaceEmbedderConfig, FaceEmbedderNet, export_onnx, normalise_faces
from mdream.models.face_embedder import FaceIdentityEmbedder
from mdream.toyworld import make_world, render_face_photo


@pytest.fixture(scope="module")
def embedder() -> FaceIdentityEmbedder:
    return FaceIdentityEmbedder(TOY_FACE_MODEL)


def test_shipped_onnx_loads_as_an_insightface_recognition_model(embedder):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    model = get_model(str(TOY_FACE_MODEL), providers=["CPUExecutionProvider"])
    assert isinstance(model, ArcFaceONNX) and model.taskname == "recognition"
    assert model.input_size == (112, 112)
    # insightface guesses the normalisation from the graph: ours must get (x - 127.5) / 127.5.
    assert (model.input_mean, model.input_std) == (127.5, 127.5)
    graph = onnx.load(str(TOY_FACE_MODEL)).graph
    assert [o.name for o in graph.output] == ["embedding"]
    assert TOY_FACE_MODEL.stat().st_size < 4_000_000
    emb = embedder.embed(np.zeros((3, 112, 112, 3), np.uint8))
    assert emb.shape == (3, 512) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_separates_single_attribute_pairs_on_fresh_photos(embedder):
    """Same-identity cosine beats different-identity cosine for every look-alike pair of world 0.

    Pairs that differ only in height are left out: an aligned face photo is scale-normalised, so
    height is invisible in it (as for real faces).
    """
    world = make_world(0)
    rng = np.random.default_rng(12345)  # fresh photos: the training stream never used this seed
    pairs = [(a, b, attr) for a, b, attr in world.single_attribute_pairs if attr != "height"]
    assert len(pairs) >= 6
    for a, b, attr in pairs:
        photos_a = np.stack([render_face_photo(world, a, rng) for _ in range(4)])
        photos_b = np.stack([render_face_photo(world, b, rng) for _ in range(4)])
        ea, eb = embedder.embed(photos_a), embedder.embed(photos_b)
        same = [(ea @ ea.T)[np.triu_indices(4, 1)].mean(), (eb @ eb.T)[np.triu_indices(4, 1)].mean()]
        different = (ea @ eb.T).mean()
        assert min(same) > different, f"{a} vs {b} ({attr}): same {same}, different {different:.3f}"


def test_insightface_preprocessing_matches_training(tmp_path):
    """insightface feeds the graph exactly what training fed the network (RGB, (x-127.5)/127.5)."""
    torch.manual_seed(0)
    net = FaceEmbedderNet(FaceEmbedderConfig(widths=(8, 8, 8, 8), head_channels=4)).eval()
    path = export_onnx(net, tmp_path / "tiny.onnx")
    faces = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    faces[:, :, :, 0] = 255  # a strong red channel: a BGR/RGB mix-up would show
    with torch.no_grad():
        expected = net(normalise_faces(faces)).numpy()
    got = FaceIdentityEmbedder(path).embed(faces)
    assert np.abs(got - expected).max() < 1e-4


def test_bad_models_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        FaceIdentityEmbedder(tmp_path / "missing.onnx")

    class Tiny(torch.nn.Module):  # 64 px input: insightface routes it to nothing
        def forward(self, x):
            return x.mean(dim=(2, 3))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Tiny(), (torch.zeros(1, 3, 64, 64),), str(tmp_path / "small.onnx"), dynamo=False,
                          input_names=["x"], output_names=["y"])
    with pytest.raises(InputError, match="not an insightface recognition model"):
        FaceIdentityEmbedder(tmp_path / "small.onnx")
