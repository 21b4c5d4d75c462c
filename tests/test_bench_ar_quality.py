"""The few-shot benchmark's choice of reference frames and its pooled score."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks.bench_ar_quality import CLOSE_UP, pick_references, reference_following


def labelled(scene: int, chars: list[int], camera: int = 0) -> dict:
    return {"scene": scene, "chars": chars, "camera": camera}


def test_references_are_picked_to_show_the_scripts_scenes_then_its_characters():
    script = [labelled(0, [1, -1, -1]), labelled(1, [2, 3, -1]), labelled(2, [-1, 4, -1])]
    pool = [labelled(5, [1, 2, 3]),  # 3: a scene the script never shows, but 3 of its characters
            labelled(0, [-1, -1, -1]),  # 4: a scene of the script, nobody
            labelled(1, [2, -1, -1], CLOSE_UP),  # 5: a scene of the script, trousers cropped
            labelled(0, [4, -1, -1])]  # 6: the scene of shot 4 and a character not yet shown
    assert pick_references(script + pool, 3, 1) == [3]  # three characters outweigh one scene
    assert pick_references(script + pool, 3, 2) == [3, 6]  # a scene (counted twice) and a character
    assert pick_references(script + pool, 3, 3) == [3, 5, 6]  # a new scene, even in a close-up, before a seen one
    assert pick_references(script + pool, 3, 4) == [3, 4, 5, 6]
    assert pick_references(script + pool, 3, 9) == [3, 4, 5, 6]  # never more than the pool holds


def test_reference_following_pools_the_scripts():
    def report(palettes):
        return SimpleNamespace(shots=[SimpleNamespace(index=i, predicted_palette=p, predicted_trousers={})
                                      for i, p in enumerate(palettes)])

    def hidden(palettes, shown):
        return {"shots": [{"index": i, "palette": p, "scene_in_references": s, "cast": []}
                          for i, (p, s) in enumerate(zip(palettes, shown, strict=True))]}

    a = (report([0, 1, 2]), hidden([0, 0, 2], [True, True, False]))  # 1 of the 2 shown shots right
    b = (report([1, 1]), hidden([1, 1], [True, True]))  # 2 of 2
    scores = reference_following([a, b])
    assert scores["palette"] == (0.75, 4)
    assert scores["trousers"] == (None, 0)
