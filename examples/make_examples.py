"""Write the bundled example scripts with mdream's toy world (deterministic: same files every run).

    python examples/make_examples.py            # rewrite examples/scripts/
    python examples/make_examples.py --check    # exit 1 if examples/scripts/ differs from a fresh write

* ``short.yaml``: 10 shots, 3 main characters, 2 scenes;
* ``long.yaml``: 60 shots, characters leaving and coming back after 20+ shots;
* ``storyboard.yaml``: ``short.yaml`` with every shot's ground-truth keyframe given (the
  ``keyframe:`` field), which the bundled toy models can render today.

Face photos go to ``faces/<example>/``, ground-truth keyframes to ``keyframes/<example>/``.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from mdream.toyworld import make_episode, make_world
from mdream.toyworld.script_writer import write_script

HERE = Path(__file__).resolve().parent / "scripts"
#: name -> (episode seed, shots, main cast)
EXAMPLES = {"short": (11, 10, 3), "long": (7, 60, 5)}


def _relocate(data: dict, name: str) -> dict:
    """Point a written script's files at the shared examples folder's per-example subfolders."""
    for character in data["characters"]:
        character["faces"] = [f.replace("faces/", f"faces/{name}/", 1) for f in character["faces"]]
    for arc in data["arcs"]:
        for shot in arc["shots"]:
            if "keyframe" in shot:
                shot["keyframe"] = shot["keyframe"].replace("groundtruth/keyframes/", f"keyframes/{name}/", 1)
    return data


def write_examples(target: Path) -> None:
    world = make_world(0)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (seed, shots, cast) in EXAMPLES.items():
            episode = make_episode(world, seed=seed, n_shots=shots, main_cast=cast)
            given = name == "short"
            out = Path(tmp) / name
            script = write_script(world, episode, out, f"Toy example: {name}", seed, size=64, given_keyframes=given)
            shutil.copytree(out / "faces", target / "faces" / name, dirs_exist_ok=True)
            data = yaml.safe_load(script.read_text())
            header = f"# Written by examples/make_examples.py with the toy world (episode seed {seed}).\n"
            if given:
                shutil.copytree(out / "groundtruth" / "keyframes", target / "keyframes" / name, dirs_exist_ok=True)
                board = _relocate(yaml.safe_load(script.read_text()), name)
                board["title"] = "Toy example: storyboard"
                (target / "storyboard.yaml").write_text(header + yaml.safe_dump(board, sort_keys=False, width=110))
                for arc in data["arcs"]:
                    for shot in arc["shots"]:
                        shot.pop("keyframe")
            (target / f"{name}.yaml").write_text(header + yaml.safe_dump(_relocate(data, name), sort_keys=False, width=110))


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b, ignore=[".mdream", "__pycache__"])  # a cache left by `make demo` is not an example
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    match, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def main() -> None:
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            write_examples(Path(tmp))
            sys.exit(0 if _same_tree(Path(tmp), HERE) else "examples/scripts differs from a fresh write")
    for entry in HERE.glob("*"):  # keep a .mdream cache; rewrite the rest
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    write_examples(HERE)


if __name__ == "__main__":
    main()
