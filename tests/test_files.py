"""atomic_write, which every save goes through: old file or whole new one, the permissions a
file would get from ``open``, links written through, any valid name."""

import os
import stat

import pytest

from msde_jax._files import atomic_write


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_permissions_follow_the_umask_and_an_existing_file(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "new.npz", b"x")
        assert _mode(tmp_path / "new.npz") == 0o644  # as open() makes it, readable by others
        (tmp_path / "kept.npz").write_bytes(b"old")
        os.chmod(tmp_path / "kept.npz", 0o640)
        atomic_write(tmp_path / "kept.npz", b"new")
        assert _mode(tmp_path / "kept.npz") == 0o640
        assert (tmp_path / "kept.npz").read_bytes() == b"new"
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_a_link_is_written_through(tmp_path):
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "v3.npz"
    target.write_bytes(b"old")
    link = tmp_path / "model.npz"
    link.symlink_to(target)
    assert atomic_write(link, b"new") == link
    assert link.is_symlink()
    assert target.read_bytes() == b"new"
    dangling = tmp_path / "next.npz"
    dangling.symlink_to(tmp_path / "runs" / "v4.npz")
    atomic_write(dangling, b"v4")
    assert dangling.is_symlink()
    assert (tmp_path / "runs" / "v4.npz").read_bytes() == b"v4"


@pytest.mark.skipif(os.name != "posix", reason="POSIX file name limits (255 bytes)")
def test_long_names_and_failures_leave_no_temporary_file(tmp_path):
    for long in ("😀" * 62 + ".npz", "m" * 250 + ".npz"):  # 252, 254 bytes: valid names
        atomic_write(tmp_path / long, b"x")
        assert (tmp_path / long).read_bytes() == b"x"
    (tmp_path / ("😀" * 62 + ".npz")).unlink()
    name = "m" * 250 + ".npz"

    def fails(f):
        f.write(b"half")
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        atomic_write(tmp_path / name, fails)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_bytes() == b"x"
    with pytest.raises(FileNotFoundError, match="no such folder"):
        atomic_write(tmp_path / "absent" / "a.npz", b"x")
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, b"x")


def test_a_progress_line_redrawn_shorter_leaves_nothing_behind(monkeypatch):
    """On a terminal the line is drawn over the last one: what that held beyond the new one is
    blanked (the end, without its time left, is shorter)."""
    import io

    from msde_jax import _progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(_progress.sys, "stderr", screen)
    progress = _progress.Progress(10, "embedding")
    for n, status in ((5, "loss 0.123456"), (4, "loss 0.1")):
        progress._last = float("-inf")  # drawn now, not 0.2 s later
        progress.update(n, status)
    progress.update(1)
    progress.close()
    drawn = screen.getvalue().split("\r")
    assert len(drawn) == 3
    assert len(drawn[1]) == len(drawn[0])
    assert drawn[1].rstrip().endswith("loss 0.1)")
    assert drawn[2].endswith("\n")
    assert drawn[2].rstrip().endswith("loss 0.1)")
    assert len(drawn[2]) - 1 >= len(drawn[1].rstrip())


@pytest.mark.skipif(os.name != "posix", reason="POSIX folders can be flushed")
@pytest.mark.parametrize("flush", [True, False])
def test_the_rename_is_flushed_with_its_folder(tmp_path, monkeypatch, flush):
    """With ``fsync`` the file is flushed before the rename and its folder after it (a rename
    not yet on disk is lost in a power cut); without it neither is."""
    flushed = []
    real = os.fsync

    def fsync(fd):
        flushed.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write(tmp_path / "model.npz", b"x", fsync=flush)
    assert flushed == ([False, True] if flush else [])
    assert (tmp_path / "model.npz").read_bytes() == b"x"
