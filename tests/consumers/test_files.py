"""Files replaced whole (consumers._files): only regular files are replaced, and errors name the file and folder."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import pytest

from consumers._files import NotReplaceableError, refusal, replaced_atomically, write_atomically


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


def test_a_replaced_file_keeps_its_permission_bits_and_a_new_one_follows_the_umask(tmp_path: Path) -> None:
    private = tmp_path / "private.html"
    private.write_bytes(b"old")
    private.chmod(0o600)
    shared = tmp_path / "shared.html"
    shared.write_bytes(b"old")
    shared.chmod(0o664)
    old_umask = os.umask(0o027)
    try:
        for path in (private, shared, tmp_path / "new.html"):
            write_atomically(path, b"data")
    finally:
        os.umask(old_umask)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "private.html": 0o600, "shared.html": 0o664, "new.html": 0o640}


def test_the_export_output_keeps_the_mode_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from consumers.export import open_output  # the same replacement: export and report share it

    monkeypatch.chdir(tmp_path)
    Path("run.ndjson.gz").write_bytes(b"old")
    Path("run.ndjson.gz").chmod(0o600)
    with open_output("run.ndjson.gz") as out:
        out.write(b"{}\n")
    assert stat.S_IMODE(Path("run.ndjson.gz").stat().st_mode) == 0o600
    assert gzip.decompress(Path("run.ndjson.gz").read_bytes()) == b"{}\n"


def test_a_name_of_255_bytes_is_written_through_a_short_temporary_name(tmp_path: Path) -> None:
    longest = tmp_path / ("y" * 250 + ".html")  # NAME_MAX: the temporary name beside it must be shorter
    seen: list[str] = []
    with replaced_atomically(longest) as f:
        seen = [p.name for p in tmp_path.iterdir()]
        f.write(b"data")
    assert longest.read_bytes() == b"data"
    (temporary,) = seen
    assert temporary.startswith(".yyyy") and temporary.endswith(".partial") and len(temporary.encode()) < 64
    assert [p.name for p in tmp_path.iterdir()] == [longest.name]
