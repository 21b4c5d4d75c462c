"""The static KV cache and its CUDA graphs (``mdream.models.static_decode``) against transformers' dynamic cache.

The tiny random Llama of ``test_models_keyframe_ar`` (hidden 32, 2 layers, grouped KV heads). On CPU the static path
runs eagerly; the graph path is exercised where a CUDA device is present (``benchmarks/gpu_check.sh`` runs this file
there).
"""

from __future__ import annotations

import pytest
import torch

from mdream.errors import InputError
from mdream.models.static_decode import StaticDecoder
from tests import test_models_keyframe_ar as ar
from tests.test_models_keyframe_ar import D, N, make_model, movie, shot

backbone_folder = ar.backbone_folder  # the tiny Llama folder fixture

CUDA = torch.cuda.is_available()


def movie_kwargs(tokens: torch.Tensor, window: int) -> dict:
    given = [None] * tokens.shape[0]
    given[1] = tokens[1]
    given[5] = tokens[5]
    return {"given": given, "references": tokens[:1], "prefix_text": "harbor", "window": window}


@pytest.mark.parametrize("window, slide", [(512, "shift"), (48, "shift"), (48, "recompute")])
def test_static_cache_generates_what_the_dynamic_cache_does(backbone_folder, window, slide):
    model = make_model(backbone_folder).eval()
    shots, tokens = movie(24, seed=4)
    kwargs = movie_kwargs(tokens, window)
    dynamic = model.generate_movie(shots, generator=torch.Generator().manual_seed(1), temperature=0.8, slide=slide,
                                   **kwargs)
    static = model.generate_movie(shots, generator=torch.Generator().manual_seed(1), temperature=0.8, slide=slide,
                                  decode="static", **kwargs)
    torch.testing.assert_close(static.tokens, dynamic.tokens, rtol=1e-4, atol=1e-4)
    assert static.cache_lengths == dynamic.cache_lengths
    assert static.rebuilds == dynamic.rebuilds and (static.rebuilds > 0) == (slide == "recompute" and window < 512)


def test_the_window_slides_in_the_static_cache(backbone_folder):
    """Over 200 shots in a 64-position window the static cache shifts in place and never holds more than the
    window; the MovieSession's positions and the static cache's agree after every shot."""
    model = make_model(backbone_folder).eval()
    g = torch.Generator().manual_seed(0)
    session = model.start_movie(references=torch.randn(1, N, D, generator=g), prefix_text="harbor", window=64,
                                decode="static")
    generator = torch.Generator().manual_seed(0)
    for i in range(200):
        session.step(shot(i, g), temperature=1.0, generator=generator)
        assert session.static.length == session.cache_length == session.prefix.shape[0] + session.history - 1
        assert session.static.length <= 64
    assert session.shifts > 5 and session.rebuilds == 0 and session.cache is None


def test_padding_to_a_bucket_changes_nothing(backbone_folder):
    """A chunk padded to its bucket (the padding written after it, then overwritten) gives the hidden states an
    unpadded run gives, and a later chunk sees only the real positions."""
    model = make_model(backbone_folder).eval()
    g = torch.Generator().manual_seed(5)
    first, second = torch.randn(11, 32, generator=g), torch.randn(3, 32, generator=g)
    outputs = []
    # exact lengths; padded to 16 (5 positions of padding), then to 16 again; longer than every bucket (run at its
    # own length), then padded to 4
    for buckets in ((11, 3), (16, 64), (4,)):
        static = StaticDecoder(model.decoder, 40, torch.device("cpu"), torch.float32, buckets=buckets)
        outputs.append((static(first), static(second), static.length))
    (a1, a2, la), (b1, b2, lb), (c1, c2, lc) = outputs
    for x1, x2 in ((a1, a2), (c1, c2)):
        torch.testing.assert_close(x1, b1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x2, b2, rtol=1e-5, atol=1e-5)
    assert la == lb == lc == 14
    with torch.no_grad():  # the same two chunks through transformers' own dynamic cache
        hidden, cache = model.run_backbone(first[None], use_cache=True)
        hidden2, _ = model.run_backbone(second[None], cache=cache, use_cache=True)
    torch.testing.assert_close(b1, hidden[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b2, hidden2[0], rtol=1e-5, atol=1e-5)


def test_static_decode_is_checked(backbone_folder):
    model = make_model(backbone_folder).eval()
    with pytest.raises(InputError, match="decode must be"):
        model.start_movie(decode="fast")
    with pytest.raises(InputError, match="use_cache"):
        model.start_movie(decode="static", use_cache=False)
    if not CUDA:
        with pytest.raises(InputError, match="CUDA device"):
            model.start_movie(decode="graphs")
    static = StaticDecoder(model.decoder, 16, torch.device("cpu"), torch.float32)
    static(torch.zeros(10, 32))
    with pytest.raises(InputError, match="holds 16 positions"):
        static(torch.zeros(7, 32))


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_replay_what_the_dynamic_cache_computes(backbone_folder):
    model = make_model(backbone_folder).to("cuda").eval()
    shots, tokens = movie(40, seed=6)
    kwargs = movie_kwargs(tokens.cuda(), 64)
    runs = {}
    for decode in ("dynamic", "static", "graphs"):
        runs[decode] = model.generate_movie(shots, generator=torch.Generator("cuda").manual_seed(1), temperature=0.0,
                                            decode=decode, **kwargs)
    torch.testing.assert_close(runs["graphs"].tokens, runs["dynamic"].tokens, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(runs["static"].tokens, runs["dynamic"].tokens, rtol=1e-3, atol=1e-3)
