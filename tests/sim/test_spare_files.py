"""Step files made from spare inodes read, list and vanish as files made anew would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmbusops.sim.spare_files import LIMIT, SpareFiles


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    folder = tmp_path / "guests" / "web01" / "C" / "Windows" / "Temp" / "vmbusops"
    folder.mkdir(parents=True)
    return folder


def test_a_removed_file_s_inode_makes_the_next_file_with_only_its_own_text(tmp_path: Path, guest: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")
    first = guest / "run-1-0.ps1"
    spares.write(first, b"a long first step script " * 40)
    inode = first.stat().st_ino
    spares.remove(first)
    assert not first.exists()
    assert list(guest.iterdir()) == []

    second = guest / "run-2-0.ps1"
    spares.write(second, b"short")
    assert second.read_bytes() == b"short"
    assert second.stat().st_ino == inode
    assert [p.name for p in guest.iterdir()] == ["run-2-0.ps1"]


def test_a_file_with_another_link_is_removed_not_kept(tmp_path: Path, guest: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")
    step = guest / "run-1-0.ps1"
    spares.write(step, b"step one")
    kept = guest / "copy.ps1"
    os.link(step, kept)
    spares.remove(step)
    spares.write(guest / "run-2-0.ps1", b"step two")
    assert kept.read_bytes() == b"step one"
    assert list((tmp_path / "spare").iterdir()) == []


def test_what_is_not_a_plain_file_is_removed_as_unlink_removes_it(tmp_path: Path, guest: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")
    (guest / "folder.ps1").mkdir()
    with pytest.raises(IsADirectoryError):
        spares.remove(guest / "folder.ps1")
    spares.remove(guest / "never-written.ps1")  # missing_ok, as the invoker's unlink was
    (guest / "link.ps1").symlink_to(tmp_path / "elsewhere")
    spares.remove(guest / "link.ps1")
    assert list(guest.iterdir()) == [guest / "folder.ps1"]


def test_writing_where_write_bytes_fails_fails_the_same_and_keeps_the_spare(tmp_path: Path, guest: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")
    spares.write(guest / "a.ps1", b"a")
    spares.remove(guest / "a.ps1")
    with pytest.raises(FileNotFoundError):
        spares.write(guest / "missing" / "b.ps1", b"b")
    (guest / "dir.ps1").mkdir()
    with pytest.raises(IsADirectoryError):
        spares.write(guest / "dir.ps1", b"c")
    assert len(list((tmp_path / "spare").iterdir())) == 1
    spares.write(guest / "c.ps1", b"c")
    assert (guest / "c.ps1").read_bytes() == b"c"
    assert list((tmp_path / "spare").iterdir()) == []


def test_spares_left_by_another_store_are_taken_and_one_taken_first_is_skipped(tmp_path: Path, guest: Path) -> None:
    earlier = SpareFiles(tmp_path / "spare")
    for name in ("a.ps1", "b.ps1"):
        earlier.write(guest / name, name.encode())
    for name in ("a.ps1", "b.ps1"):
        earlier.remove(guest / name)
    later = SpareFiles(tmp_path / "spare")
    first, second = sorted((tmp_path / "spare").iterdir())
    first.unlink()  # as if a process sharing the store had just used it
    second_inode = second.stat().st_ino
    later.write(guest / "x.ps1", b"x")
    later.write(guest / "y.ps1", b"y")
    assert second_inode in {(guest / "x.ps1").stat().st_ino, (guest / "y.ps1").stat().st_ino}
    assert (guest / "x.ps1").read_bytes() == b"x" and (guest / "y.ps1").read_bytes() == b"y"


def test_no_more_than_the_limit_are_kept(tmp_path: Path, guest: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")
    names = [guest / f"s{i}.ps1" for i in range(LIMIT + 3)]
    for path in names:
        spares.write(path, b"x")
    for path in names:
        spares.remove(path)
    assert list(guest.iterdir()) == []
    assert len(list((tmp_path / "spare").iterdir())) == LIMIT


def test_step_files_and_spares_are_owner_only(tmp_path: Path, guest: Path) -> None:
    spares = SpareFiles(tmp_path / "spare")
    fresh = guest / "run-1-0.ps1"
    spares.write(fresh, b"one")
    assert fresh.stat().st_mode & 0o777 == 0o600
    taken = guest / "run-2-0.ps1"
    taken.write_bytes(b"a file the step's name already had")
    taken.chmod(0o644)
    spares.write(taken, b"two")
    spares.remove(taken)
    spares.remove(fresh)
    assert sorted(p.stat().st_mode & 0o777 for p in (tmp_path / "spare").iterdir()) == [0o600, 0o600]
    assert (tmp_path / "spare").stat().st_mode & 0o777 == 0o700
