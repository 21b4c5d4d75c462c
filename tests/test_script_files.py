"""Face photos and reference frames: missing, unreadable, not images, outside the script's folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from script_helpers import BASE_SCRIPT, edit, line_of, problems_of, the_problem, write_png, write_script_text

from mdream import files
from mdream.script import load_script

BO_FACES_LINE = "faces: [faces/bo_1.png, faces/bo_2.png]"


def _face_problem(tmp_path, text=BASE_SCRIPT, field="characters[1].faces[1]"):
    problems = problems_of(tmp_path / "movie" / "script.yaml")
    assert [p.field for p in problems] == [field], [str(p) for p in problems]
    return the_problem(problems, field)


def test_missing_face_photo(tmp_path):
    path = write_script_text(tmp_path / "movie")
    (tmp_path / "movie" / "faces" / "bo_2.png").unlink()
    problem = _face_problem(tmp_path)
    assert problem.message == "face photo file 'faces/bo_2.png' not found"
    assert problem.line == line_of(BASE_SCRIPT, BO_FACES_LINE)
    assert problem.column == BASE_SCRIPT.splitlines()[problem.line - 1].index("faces/bo_2.png") + 1
    assert path.name in problem.file


def test_misspelt_face_photo_suggests_the_file(tmp_path):
    text = edit(BASE_SCRIPT, "faces: [faces/ada.png]", "faces: [faces/adaa.png]")
    write_script_text(tmp_path / "movie", text)
    problem = _face_problem(tmp_path, field="characters[0].faces[0]")
    assert "not found" in problem.message
    assert problem.hint == "did you mean 'faces/ada.png'?"
    assert problem.line == line_of(text, "faces/adaa.png")


def test_face_photo_that_is_not_an_image(tmp_path):
    write_script_text(tmp_path / "movie")
    (tmp_path / "movie" / "faces" / "bo_2.png").write_text("not a picture")
    problem = _face_problem(tmp_path)
    assert "'faces/bo_2.png' is not an image" in problem.message
    assert problem.line == line_of(BASE_SCRIPT, BO_FACES_LINE)


def test_truncated_face_photo(tmp_path):
    write_script_text(tmp_path / "movie")
    face = tmp_path / "movie" / "faces" / "bo_2.png"
    write_png(face, size=64)
    face.write_bytes(face.read_bytes()[:-40])  # cut into the image data
    problem = _face_problem(tmp_path)
    assert "'faces/bo_2.png' is damaged" in problem.message
    assert problem.line == line_of(BASE_SCRIPT, BO_FACES_LINE)


def test_face_photo_that_is_a_folder(tmp_path):
    write_script_text(tmp_path / "movie")
    face = tmp_path / "movie" / "faces" / "bo_2.png"
    face.unlink()
    face.mkdir()
    problem = _face_problem(tmp_path)
    assert "is a folder, not an image file" in problem.message
    assert problem.line == line_of(BASE_SCRIPT, BO_FACES_LINE)


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_unreadable_face_photo(tmp_path, monkeypatch):
    write_script_text(tmp_path / "movie")
    face = tmp_path / "movie" / "faces" / "bo_2.png"
    face.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make opening this one fail as it would for a user
        real_open = os.open

        def open_as_user(path, *args, **kwargs):
            if Path(path).name == face.name:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(files.os, "open", open_as_user)
    try:
        problem = _face_problem(tmp_path)
    finally:
        face.chmod(0o644)
    assert "cannot be read (permission denied)" in problem.message
    assert problem.line == line_of(BASE_SCRIPT, BO_FACES_LINE)


def test_absolute_face_path(tmp_path):
    outside = tmp_path / "elsewhere" / "bo.png"
    write_png(outside)
    text = edit(BASE_SCRIPT, "faces/bo_2.png", str(outside))
    write_script_text(tmp_path / "movie", text)
    problem = _face_problem(tmp_path)
    assert problem.message == f"face photo path '{outside}' is absolute"
    assert "relative to the script's folder" in problem.hint
    assert problem.line == line_of(text, str(outside))


def test_face_path_escaping_the_folder(tmp_path):
    write_png(tmp_path / "outside.png")
    text = edit(BASE_SCRIPT, "faces/bo_2.png", "../outside.png")
    write_script_text(tmp_path / "movie", text)
    problem = _face_problem(tmp_path)
    assert problem.message == "face photo path '../outside.png' points outside the script's folder"
    assert problem.line == line_of(text, "../outside.png")


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_symlink_escaping_the_folder(tmp_path):
    write_png(tmp_path / "outside.png")
    write_script_text(tmp_path / "movie")
    face = tmp_path / "movie" / "faces" / "bo_2.png"
    face.unlink()
    face.symlink_to(tmp_path / "outside.png")
    problem = _face_problem(tmp_path)
    assert (
        problem.message
        == "face photo path 'faces/bo_2.png' is a symlink that points outside the script's folder"
    )
    assert problem.line == line_of(BASE_SCRIPT, BO_FACES_LINE)


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_symlink_inside_the_folder_is_fine(tmp_path):
    path = write_script_text(tmp_path / "movie")
    face = tmp_path / "movie" / "faces" / "bo_2.png"
    face.unlink()
    face.symlink_to(tmp_path / "movie" / "faces" / "bo_1.png")
    script = load_script(path)
    assert script.face_paths("bo")[1] == (tmp_path / "movie" / "faces" / "bo_1.png").resolve()


def test_missing_reference_frame(tmp_path):
    text = edit(
        BASE_SCRIPT,
        "seed: 3\n",
        "seed: 3\nstyle:\n  text: storybook\n  reference_frames: [refs/a.png, refs/b.png]\n",
    )
    write_script_text(tmp_path / "movie", text)
    write_png(tmp_path / "movie" / "refs" / "a.png")
    problem = _face_problem(tmp_path, field="style.reference_frames[1]")
    assert problem.message == "reference frame file 'refs/b.png' not found"
    assert problem.line == line_of(text, "reference_frames:")


def test_resolved_paths(tmp_path):
    text = edit(
        BASE_SCRIPT, "seed: 3\n", "seed: 3\nstyle:\n  text: storybook\n  reference_frames: [refs/a.png]\n"
    )
    path = write_script_text(tmp_path / "movie", text)
    write_png(tmp_path / "movie" / "refs" / "a.png")
    script = load_script(path)
    assert script.root == (tmp_path / "movie").resolve()
    assert script.source == path.resolve()
    assert script.face_paths("bo") == [script.root / "faces" / "bo_1.png", script.root / "faces" / "bo_2.png"]
    assert script.resolve(script.style.reference_frames[0]).is_file()
