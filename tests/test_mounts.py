"""Mount syscalls and the mount table, on real bind mounts in the test's mount namespace."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from csi_driver import mounts


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("content")
    return src


def test_bind_readonly_is_ro_nosuid_nodev_even_with_odd_names(tmp_path: Path, source: Path) -> None:
    target = tmp_path / "a dir\twith\\odd names"
    target.mkdir()
    mounts.bind_readonly(str(source), str(target))
    info = mounts.find_mount(str(target))
    assert info is not None
    assert {"ro", "nosuid", "nodev"} <= info.options
    assert (target / "file").read_text() == "content"
    with pytest.raises(OSError) as excinfo:
        (target / "new").write_text("x")
    assert excinfo.value.errno == errno.EROFS
    mounts.unmount(str(target))
    assert mounts.find_mount(str(target)) is None


def test_find_mount_ignores_prefixes_of_the_path(tmp_path: Path, source: Path) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    mounts.bind_readonly(str(source), str(target))
    try:
        assert mounts.find_mount(str(tmp_path / "moun")) is None
        assert mounts.find_mount(str(tmp_path)) is None
    finally:
        mounts.unmount(str(target))


def test_unmount_of_a_path_not_mounted_or_missing_is_ok(tmp_path: Path) -> None:
    mounts.unmount(str(tmp_path))
    mounts.unmount(str(tmp_path / "missing"))


def test_mount_table_unescapes_octal_fields(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text("36 35 98:0 /mnt\\040x /a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n")
    (info,) = mounts.mount_table(str(table))
    assert (info.mount_point, info.root, info.fs_type) == ("/a b", "/mnt x", "ext3")
