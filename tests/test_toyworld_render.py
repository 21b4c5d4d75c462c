"""Toy-world rendering: keyframes, clips, face photos and face boxes."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from mdream.toyworld import (
    CAMERAS,
    FACE_SIZE,
    SKIN_TONES,
    CastMember,
    ShotSpec,
    face_boxes,
    head_mask,
    lookalike_mask,
    lookalike_shares,
    make_episode,
    make_world,
    render_clip,
    render_face_photo,
    render_keyframe,
    render_keyframe_with_figures,
)

WORLD = make_world(0)


def _shot(action: str = "stand", camera: str = "wide", position: str = "left", scene: str = "park", who: int = 0):
    return ShotSpec(scene, (CastMember(WORLD.characters[who].id, position, action, "happy"),), camera)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_keyframe_shape_and_determinism(size):
    shot = make_episode(WORLD, 0, 10).shots[3]
    a = render_keyframe(WORLD, shot, size, np.random.default_rng(1))
    b = render_keyframe(WORLD, shot, size, np.random.default_rng(1))
    c = render_keyframe(WORLD, shot, size, np.random.default_rng(2))
    assert a.shape == (size, size, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # Same shot, different jitter: still nearly the same picture.
    assert np.abs(a.astype(int) - c.astype(int)).mean() < 40


def test_bad_size_is_rejected():
    with pytest.raises(ValueError):
        render_keyframe(WORLD, _shot(), 48, np.random.default_rng(0))


def test_scenes_and_cameras_look_different():
    rng = np.random.default_rng(0)
    frames = {(s.id, cam): render_keyframe(WORLD, ShotSpec(s.id, (), cam), 32, rng).astype(float)
              for s in WORLD.scenes for cam in CAMERAS}
    for (k1, f1), (k2, f2) in itertools.combinations(frames.items(), 2):
        assert np.abs(f1 - f2).mean() > 3, (k1, k2)


def test_characters_are_distinguishable_at_32px():
    """Any two characters at the same spot differ visibly, single-attribute pairs included (except eyes,
    which only show in close-ups and photos)."""
    renders = {}
    for c in WORLD.characters:
        shot = ShotSpec("park", (CastMember(c.id, "center", "stand", "neutral"),), "medium")
        renders[c.id] = render_keyframe(WORLD, shot, 32, np.random.default_rng(0)).astype(float)
    for a, b, attribute in WORLD.single_attribute_pairs:
        if attribute == "eye_colour":
            continue
        assert np.abs(renders[a] - renders[b]).max() > 30, (a, b, attribute)


def test_clip_motion_matches_action():
    def figure_mask(action, camera="wide"):
        shot = _shot(action, camera)
        empty = ShotSpec(shot.scene_id, (), camera)
        # Same rng state: identical background, jitter and noise, so the difference is the figure.
        clip = render_clip(WORLD, shot, 64, 8, np.random.default_rng(3)).astype(int)
        bg = render_clip(WORLD, empty, 64, 8, np.random.default_rng(3)).astype(int)
        return np.abs(clip - bg).sum(-1) > 30  # [T, H, W]

    def centroid(mask):  # per frame (x, y)
        ys, xs = np.mgrid[0:64, 0:64]
        return np.array([[xs[m].mean(), ys[m].mean()] for m in mask])

    clip = render_clip(WORLD, _shot("walk"), 32, 8, np.random.default_rng(0))
    assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8
    assert all(not np.array_equal(clip[t], clip[t + 1]) for t in range(7))
    walk = centroid(figure_mask("walk"))
    assert walk[-1, 0] - walk[0, 0] > 4            # the walker on the left walks right
    jump = centroid(figure_mask("jump"))
    assert jump[:, 1].max() - jump[:, 1].min() > 2  # the jumper bounces
    stand = centroid(figure_mask("stand"))
    # The wide camera pans by 5% of the frame (3.2 px): the stander moves only that much.
    assert np.abs(stand - stand[0]).max() < 4.0
    assert (walk[-1, 0] - walk[0, 0]) - (stand[-1, 0] - stand[0, 0]) > 4
    wave = figure_mask("wave", "medium")
    assert (wave[0] != wave[3]).sum() > 10           # the arm moves
    sit = centroid(figure_mask("sit"))
    assert sit[-1, 1] > sit[0, 1]                    # the sitter lowers


@pytest.mark.parametrize("camera", CAMERAS)
def test_clip_first_frame_is_the_keyframe(camera):
    shot = _shot("jump", camera)
    key = render_keyframe(WORLD, shot, 64, np.random.default_rng(5))
    clip = render_clip(WORLD, shot, 64, 8, np.random.default_rng(5))
    assert np.array_equal(key, clip[0])
    # The next frame continues from it as smoothly as the frames after (no jump of the background).
    step = [np.abs(clip[t + 1].astype(float) - clip[t]).mean() for t in range(3)]
    assert step[0] < 1.5 * max(step[1], step[2])


def test_face_photos_vary_but_keep_identity():
    photos = {c.id: [render_face_photo(WORLD, c.id, np.random.default_rng([i, k])).astype(np.float32)
                     for k in range(3)] for i, c in enumerate(WORLD.characters)}
    p = photos[WORLD.characters[0].id][0]
    assert p.shape == (FACE_SIZE, FACE_SIZE, 3)
    flat = [x.tobytes() for xs in photos.values() for x in xs]
    assert len(set(flat)) == len(flat)  # never the same twice
    same = np.mean([np.abs(a - b).mean() for xs in photos.values() for a, b in itertools.combinations(xs, 2)])
    ids = list(photos)
    diff = np.mean([np.abs(photos[a][0] - photos[b][1]).mean() for a, b in itertools.combinations(ids, 2)])
    assert same < 0.8 * diff


def test_face_box_crop_looks_like_a_face_photo():
    """A close-up's face box, resized to 112, lines up with the photo: the eyes on the same rows."""
    from PIL import Image

    c = next(c for c in WORLD.characters if c.hair_colour not in ("white", "blonde") and c.outfit_colour != "white")
    shot = ShotSpec("beach", (CastMember(c.id, "center", "stand", "neutral"),), "close-up")
    frame = render_keyframe(WORLD, shot, 128, np.random.default_rng(0))
    (_, box), = face_boxes(shot, 128, WORLD, clip=False)
    crop = np.asarray(Image.fromarray(frame).crop(box).resize((FACE_SIZE, FACE_SIZE))).astype(int)
    white = (crop.min(-1) > 200)[25:85, 30:82]  # eye whites: central part (the sky may be white too)
    rows = 25 + np.nonzero(white.sum(1) >= 2)[0]
    assert rows.size and abs(np.median(rows) - 51.6) < 6


def test_face_photo_eyes_are_aligned():
    # Eye rows: the iris colour must be near the template's eye line (y ~ 51.6) in every photo.
    c = next(c for c in WORLD.characters if c.hair_colour not in ("white", "blonde") and c.outfit_colour != "white")
    for k in range(3):
        photo = render_face_photo(WORLD, c.id, np.random.default_rng(k)).astype(int)
        white = (photo.min(-1) > 170).astype(float)[:, 30:82]  # eye whites, central columns
        rows = np.nonzero(white.sum(1) >= 2)[0]
        assert rows.size and abs(np.median(rows) - 51.6) < 8


@pytest.mark.parametrize("camera", CAMERAS)
def test_face_boxes_are_inside_the_frame_and_on_the_face(camera):
    episode = make_episode(WORLD, 1, 60)
    for shot in episode.shots:
        for size in (32, 64):
            for cid, (x0, y0, x1, y1) in face_boxes(shot, size, WORLD):
                assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
                assert cid in shot.character_ids
    # Unclipped boxes are squares, one per member, and clip to the clipped ones.
    for shot in episode.shots[:20]:
        full = face_boxes(shot, 64, WORLD, clip=False)
        assert [cid for cid, _ in full] == list(shot.character_ids)
        assert all(x1 - x0 == y1 - y0 > 0 for _, (x0, y0, x1, y1) in full)
        clipped = dict(face_boxes(shot, 64, WORLD))
        for cid, (x0, y0, x1, y1) in full:
            if cid in clipped:
                assert clipped[cid] == (max(x0, 0), max(y0, 0), min(x1, 64), min(y1, 64))
    # The box holds the face: much more skin inside it than in the rest of the frame (on a beach,
    # where nothing else has a skin tone).
    for c in WORLD.characters[:6]:
        shot = ShotSpec("beach", (CastMember(c.id, "center", "stand", "neutral"),), camera)
        frame = render_keyframe(WORLD, shot, 128, np.random.default_rng(0)).astype(float)
        (cid, (x0, y0, x1, y1)), = face_boxes(shot, 128, WORLD)
        is_skin = np.abs(frame - np.array(SKIN_TONES[c.skin])).max(-1) < 15  # [128, 128]
        inside = is_skin[y0:y1, x0:x1].mean()
        outside = (is_skin.sum() - is_skin[y0:y1, x0:x1].sum()) / (is_skin.size - (y1 - y0) * (x1 - x0))
        assert inside > 0.08 and inside > 3 * outside, (camera, c.id, inside, outside)


@pytest.mark.parametrize("camera", ["wide", "close-up"])
def test_figure_mask_marks_the_cast_and_keeps_the_keyframe_pixels(camera):
    world = make_world(0)
    shot = _shot(camera=camera, position="center")
    frame, mask = render_keyframe_with_figures(world, shot, 32, np.random.default_rng(5))
    # the same rng state: exactly render_keyframe's pixels
    np.testing.assert_array_equal(frame, render_keyframe(world, shot, 32, np.random.default_rng(5)))
    assert mask.shape == (32, 32) and mask.dtype == bool
    assert 0.02 < mask.mean() < 0.8
    # a centre figure: its mask lies around the middle columns, not at the frame's sides
    columns = np.nonzero(mask.any(axis=0))[0]
    assert 8 < columns.mean() < 24
    # a close-up's figure covers more of the frame than a wide shot's
    if camera == "close-up":
        wide = _shot(camera="wide", position="center")
        _, wide_mask = render_keyframe_with_figures(world, wide, 32, np.random.default_rng(5))
        assert mask.sum() > wide_mask.sum()
    empty = dataclasses.replace(shot, cast=())
    _, none = render_keyframe_with_figures(world, empty, 32, np.random.default_rng(5))
    assert not none.any()


def test_lookalike_mask_marks_what_tells_siblings_apart():
    """An eye-colour pair differs in a few head pixels, a height pair in most of the figure; no sibling, no pixels."""
    pairs = {attribute: (a, b) for a, b, attribute in WORLD.single_attribute_pairs}
    index = {c.id: i for i, c in enumerate(WORLD.characters)}
    for a, b in pairs.values():
        assert b in WORLD.lookalikes(a) and a in WORLD.lookalikes(b)
    loners = [i for i, c in enumerate(WORLD.characters) if not WORLD.lookalikes(c.id)]
    # the one of the eye-colour pair that has no other sibling (the other may differ from a third in hair)
    only_eyes = next(c for c in pairs["eye_colour"] if len(WORLD.lookalikes(c)) == 1)
    eyes = _shot(camera="close-up", who=index[only_eyes])
    tall = _shot(camera="medium", who=index[pairs["height"][0]])
    alone = _shot(camera="close-up", who=loners[0])
    sizes = {}
    for name, shot in (("eyes", eyes), ("height", tall), ("alone", alone)):
        rng = np.random.default_rng(3)
        state = rng.bit_generator.state
        frame, figure = render_keyframe_with_figures(WORLD, shot, 32, np.random.default_rng(3))
        mask = lookalike_mask(WORLD, shot, 32, rng)
        assert rng.bit_generator.state == state  # rng not advanced
        np.testing.assert_array_equal(mask, lookalike_mask(WORLD, shot, 32, np.random.default_rng(3), frame))
        sizes[name] = int(mask.sum())
        if name == "eyes":  # the irises: inside the head, a small part of it
            heads = head_mask(shot, 32, WORLD)
            assert not (mask & ~heads).any() and 0 < mask.sum() < 0.25 * heads.sum()
        if name == "height":
            assert mask.sum() > 0.5 * figure.sum()
    assert sizes["alone"] == 0


def test_lookalike_shares_give_each_pair_an_equal_part():
    """An eye-colour pair beside a height pair: the iris holds half of the map, not its pixel count's sliver."""
    pairs = {attribute: (a, b) for a, b, attribute in WORLD.single_attribute_pairs}
    index = {c.id: i for i, c in enumerate(WORLD.characters)}
    only_eyes = next(c for c in pairs["eye_colour"] if len(WORLD.lookalikes(c)) == 1)
    tall = next(c for c in pairs["height"] if len(WORLD.lookalikes(c)) == 1)
    base = _shot(camera="medium", who=index[only_eyes])
    shot = dataclasses.replace(base, cast=(base.cast[0], dataclasses.replace(
        base.cast[0], character_id=tall, position="right" if base.cast[0].position != "right" else "left")))
    shares = lookalike_shares(WORLD, shot, 32, np.random.default_rng(4))
    assert shares.dtype == np.float32 and shares.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(shares > 0, lookalike_mask(WORLD, shot, 32, np.random.default_rng(4)))
    alone = [lookalike_mask(WORLD, dataclasses.replace(shot, cast=(m,)), 32, np.random.default_rng(4)) for m in shot.cast]
    iris, figure = alone  # each member's own swap, rendered alone
    assert 0 < iris.sum() < 0.2 * figure.sum()
    assert shares[iris & ~figure].sum() == pytest.approx(0.5, abs=0.05)  # half, though a few pixels
    assert not lookalike_shares(WORLD, dataclasses.replace(shot, cast=()), 32, np.random.default_rng(4)).any()


def test_lookalike_pixels_hold_a_set_share_of_the_loss_weight():
    """--lookalike-share moves that share of each frame's weight onto its look-alike pixels, never lowering one."""
    import torch

    from mdream.training.data import FrameSet
    from mdream.training.tokenizer import ToyLossWeights, loss_pixel_weight

    figures = np.zeros((3, 8, 8), bool)
    figures[:, 2:6, 2:6] = True  # 16 figure pixels per frame
    look = np.zeros_like(figures)
    look[0, 3, 3] = True  # one iris pixel
    look[1, 2:6, 2:6] = True  # a whole outfit: already over the share at the figure weight
    parts = (look / look.sum(axis=(1, 2), keepdims=True).clip(1)).astype(np.float32)
    frames = FrameSet(np.zeros((3, 8, 8, 3), np.uint8), ["", "", ""], np.zeros(3, np.int64), np.zeros((3, 3), np.int64),
                      0, figures=figures, lookalike_shares=parts)
    plain = loss_pixel_weight(frames, np.arange(3), ToyLossWeights(character_weight=4, lookalike_share=0))
    weight = loss_pixel_weight(frames, np.arange(3), ToyLossWeights(character_weight=4, lookalike_share=0.2))
    assert weight.shape == (3, 1, 8, 8) and (weight >= plain).all()
    share = (weight[:, 0] * torch.from_numpy(look)).sum(dim=(1, 2)) / weight.sum(dim=(1, 2, 3))
    assert share[0].item() == pytest.approx(0.2)
    assert torch.equal(weight[1], plain[1]) and torch.equal(weight[2], plain[2])  # nothing to add
    assert loss_pixel_weight(frames, np.arange(3), ToyLossWeights(character_weight=1, lookalike_share=0)) is None
    # two pairs in one frame: an iris (1 pixel) and a whole outfit (15 more): each pair holds half of the share
    two = np.zeros((1, 8, 8), np.float32)
    two[0, 3, 3] = 0.5
    two[0, 2:6, 2:6] += np.where(two[0, 2:6, 2:6] > 0, 0.0, 0.5 / 15)
    frames = FrameSet(np.zeros((1, 8, 8, 3), np.uint8), [""], np.zeros(1, np.int64), np.zeros((1, 3), np.int64), 0,
                      figures=figures[:1] | (two > 0), lookalike_shares=two)
    iris = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    iris[0, 0, 3, 3] = True
    pair = loss_pixel_weight(frames, np.arange(1), ToyLossWeights(character_weight=1.5, lookalike_share=0.5))
    assert pair[iris].item() > 10 * pair[0, 0, 2, 2].item()  # the iris pair's half on one pixel
    assert (pair[iris] / pair.sum()).item() == pytest.approx(0.25, abs=0.01)  # half of 0.5


def test_trousers_shares_mark_each_members_legs_an_equal_part():
    """The pixels of each cast member's trousers: on the figure, below the head, an equal part per member; none in a
    shot without cast, and the map changes with the frame's rng state as the frame does."""
    from mdream.toyworld import trousers_shares

    base = _shot(camera="wide", who=0)
    other = dataclasses.replace(base.cast[0], character_id=WORLD.characters[1].id,
                                position="right" if base.cast[0].position != "right" else "left")
    shot = dataclasses.replace(base, cast=(base.cast[0], other))
    frame, figure = render_keyframe_with_figures(WORLD, shot, 32, np.random.default_rng(4))
    shares = trousers_shares(WORLD, shot, 32, np.random.default_rng(4))
    assert shares.dtype == np.float32 and shares.sum() == pytest.approx(1.0, abs=1e-5)
    legs = shares > 0
    assert legs.any() and not (legs & ~figure).any()  # on the figures only
    assert not (legs & head_mask(shot, 32, WORLD)).any()  # not on the heads
    assert legs.sum() < 0.5 * figure.sum()
    alone = [trousers_shares(WORLD, dataclasses.replace(shot, cast=(m,)), 32, np.random.default_rng(4)) > 0
             for m in shot.cast]
    for mask in alone:  # each member's trousers hold about half of the map (the other figure may cover a pixel)
        assert shares[mask].sum() == pytest.approx(0.5, abs=0.1)
    assert not trousers_shares(WORLD, dataclasses.replace(shot, cast=()), 32, np.random.default_rng(4)).any()
    np.testing.assert_array_equal(shares, trousers_shares(WORLD, shot, 32, np.random.default_rng(4), frame))


def test_trouser_pixels_hold_a_set_share_after_the_lookalikes():
    import torch

    from mdream.training.config import ConfigValueError
    from mdream.training.data import FrameSet
    from mdream.training.tokenizer import ToyLossWeights, loss_pixel_weight

    figures = np.zeros((2, 8, 8), bool)
    figures[:, 2:7, 2:6] = True
    legs = np.zeros_like(figures)
    legs[:, 5:7, 2:6] = True  # 8 trouser pixels
    look = np.zeros_like(figures)
    look[0, 3, 3] = True
    norm = lambda m: (m / m.sum(axis=(1, 2), keepdims=True).clip(1)).astype(np.float32)  # noqa: E731
    legs[1] = False  # a close-up: no trousers in view
    frames = FrameSet(np.zeros((2, 8, 8, 3), np.uint8), ["", ""], np.zeros(2, np.int64), np.zeros((2, 3), np.int64), 0,
                      figures=figures, lookalike_shares=norm(look), trousers_shares=norm(legs))
    assert ToyLossWeights(trousers_share=0.3).masks() == ("figures", "lookalikes", "trousers")
    plain = loss_pixel_weight(frames, np.arange(2), ToyLossWeights(lookalike_share=0.2))
    weight = loss_pixel_weight(frames, np.arange(2), ToyLossWeights(lookalike_share=0.2, trousers_share=0.3))
    assert (weight >= plain).all() and torch.equal(weight[1], plain[1])
    share = (weight[0, 0] * torch.from_numpy(legs[0])).sum() / weight[0].sum()
    assert share.item() == pytest.approx(0.3)
    with pytest.raises(ConfigValueError):
        ToyLossWeights(lookalike_share=0.5, trousers_share=0.5).check()
