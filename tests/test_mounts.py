"""Mount syscalls and the mount table, on real bind mounts in the test's mount namespace."""

from __future__ import annotations

import ctypes
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


def test_is_mount_point_answers_as_the_mount_table_does(tmp_path: Path, source: Path) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert not mounts.is_mount_point(str(target))
    mounts.bind_readonly(str(source), str(target))
    try:
        assert mounts.is_mount_point(str(target))
        assert not mounts.is_mount_point(str(target / "file"))
        assert not mounts.is_mount_point(str(tmp_path))
        assert not mounts.is_mount_point(str(link))  # as in mountinfo: the link itself is no mount point
    finally:
        mounts.unmount(str(target))
    assert not mounts.is_mount_point(str(target))
    assert not mounts.is_mount_point(str(tmp_path / "missing"))


def test_is_mount_point_sees_same_file_system_binds_and_stacked_mounts(tmp_path: Path, source: Path) -> None:
    """A bind from the same file system keeps st_dev, so only the kernel's mount root flag can tell."""
    target = tmp_path / "mount"
    target.mkdir()
    mounts.bind_readonly(str(source), str(target))
    mounts.bind_readonly(str(source), str(target))
    mounts.unmount(str(target))
    assert mounts.is_mount_point(str(target))
    mounts.unmount(str(target))
    assert not mounts.is_mount_point(str(target))


def _refused(*_args: object) -> int:
    ctypes.set_errno(errno.EPERM)  # as a seccomp profile answers
    return -1


@pytest.mark.parametrize("why", ["no-mount-root-attribute", "no-statx-in-libc", "statx-refused"])
def test_is_mount_point_falls_back_to_the_table_when_statx_cannot_say(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """Kernels before 5.8 do not report STATX_ATTR_MOUNT_ROOT, glibc before 2.28 has no statx,
    a seccomp profile may refuse it: the table decides there."""
    if why == "no-mount-root-attribute":
        monkeypatch.setattr(mounts, "_mount_root_flag", lambda path: None)
    else:
        monkeypatch.setattr(mounts, "_statx", None if why == "no-statx-in-libc" else _refused)
    target = tmp_path / "mount"
    target.mkdir()
    assert not mounts.is_mount_point(str(target))
    mounts.bind_readonly(str(source), str(target))
    try:
        assert mounts.is_mount_point(str(target))
    finally:
        mounts.unmount(str(target))
