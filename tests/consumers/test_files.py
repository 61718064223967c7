"""Files replaced whole (consumers._files): only regular files are replaced, and errors name the file and folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consumers._files import NotReplaceableError, refusal, write_atomically


def test_a_fifo_or_a_symlink_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target = tmp_path / "target"
    target.write_bytes(b"kept")
    link = tmp_path / "link"
    link.symlink_to(target)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for path, why in ((fifo, "it is not a regular file"), (link, "it is a symbolic link"),
                      (dangling, "it is a symbolic link"), (tmp_path, "it is a folder")):
        assert (refusal(path) or "").startswith(why), path
        with pytest.raises(NotReplaceableError):
            write_atomically(path, b"new")
    assert fifo.is_fifo() and link.is_symlink() and dangling.is_symlink() and target.read_bytes() == b"kept"
    assert not (tmp_path / "nowhere").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link", "pipe", "target"]  # no .partial


def test_a_regular_file_or_a_new_name_is_written(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"old")
    for name in ("old", "new"):
        assert refusal(tmp_path / name) is None
        write_atomically(tmp_path / name, b"data")
        assert (tmp_path / name).read_bytes() == b"data"


def test_a_folder_that_refuses_the_file_is_named_not_the_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "out.html"
    with pytest.raises(OSError) as e:
        write_atomically(path, b"data")
    assert e.value.strerror == f"cannot create a file in {path.parent}: No such file or directory"
    assert e.value.filename == str(path) and ".partial" not in str(e.value)


def test_a_path_under_a_file_is_not_refused_as_a_special_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    assert refusal(tmp_path / "file" / "x") is None  # the folder check says what is wrong
