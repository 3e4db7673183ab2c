"""Mount syscalls and the mount table, on real bind mounts in the test's mount namespace."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from propagation import assert_read_only

from csi_driver.mounts import kernel


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("content")
    return src


def test_bind_readonly_is_ro_nosuid_nodev_even_with_odd_names(tmp_path: Path, source: Path) -> None:
    target = tmp_path / "a dir\twith\\odd names"
    target.mkdir()
    kernel.bind_readonly(str(source), str(target))
    info = kernel.find_mount(str(target))
    assert info is not None
    assert {"ro", "nosuid", "nodev"} <= info.options
    assert (target / "file").read_text() == "content"
    with pytest.raises(OSError) as excinfo:
        (target / "new").write_text("x")
    assert excinfo.value.errno == errno.EROFS
    kernel.unmount(str(target))
    assert kernel.find_mount(str(target)) is None


def test_every_propagated_copy_of_a_bind_is_read_only(shared_kubelet_root: tuple[Path, Path], source: Path) -> None:
    """The copies propagated to the host's namespace are born read-only, not only the driver's own:
    else a write through the host's copy would change the tree every pod of the digest shares."""
    kubelet, peer = shared_kubelet_root
    (kubelet / "target").mkdir()
    kernel.bind_readonly(str(source), str(kubelet / "target"))
    assert_read_only(kubelet / "target", "file")
    assert_read_only(peer / "target", "file")
    assert sorted(os.listdir(source)) == ["file"] and (source / "file").read_text() == "content"
    kernel.unmount(str(kubelet / "target"))
    assert kernel.find_mount(str(peer / "target")) is None


def test_a_bind_onto_a_mount_point_stacks_on_top_and_propagates_read_only(
    shared_kubelet_root: tuple[Path, Path], source: Path, tmp_path: Path
) -> None:
    """What the repair of a dead volume relies on: the new bind goes on top of the old mount (and
    so reaches the copies of it), read-only everywhere; unmounting twice removes both."""
    kubelet, peer = shared_kubelet_root
    target = kubelet / "target"
    target.mkdir()
    kernel.bind_readonly(str(source), str(target))
    repaired = tmp_path / "repaired"
    repaired.mkdir()
    (repaired / "file").write_text("repaired")
    kernel.bind_readonly(str(repaired), str(target))
    for path in (target, peer / "target"):
        assert (path / "file").read_text() == "repaired"
        assert_read_only(path, "file")
    kernel.unmount(str(target))
    assert (peer / "target" / "file").read_text() == "content"
    kernel.unmount(str(target))
    assert not kernel.is_mount_point(str(target)) and kernel.find_mount(str(peer / "target")) is None


def test_a_symlink_at_the_target_is_refused_not_followed(tmp_path: Path, source: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    with pytest.raises(OSError) as excinfo:
        kernel.bind_readonly(str(source), str(tmp_path / "link"))
    assert excinfo.value.errno == errno.EINVAL
    assert not kernel.is_mount_point(str(elsewhere))


def kernel_without(first_missing: int, real: Callable[..., int]) -> Callable[..., int]:
    """``kernel._syscall`` as on a kernel from before ``first_missing`` was added: ENOSYS."""

    def old_kernel(number: int, what: str, path: str, *args: object) -> int:
        if number >= first_missing:
            raise OSError(errno.ENOSYS, f"{what} {path}: {os.strerror(errno.ENOSYS)}")
        return real(number, what, path, *args)

    return old_kernel


@pytest.mark.parametrize("first_missing", [kernel.SYS_OPEN_TREE, kernel.SYS_MOUNT_SETATTR], ids=["5.1", "5.11"])
def test_kernels_without_mount_setattr_get_the_bind_and_remount_of_old(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, first_missing: int
) -> None:
    """Before Linux 5.12 the flags can only be set by a remount: read-only in the driver's own
    namespace, with a warning that the host's copies are not; no clone is left open."""
    monkeypatch.setattr(kernel, "_syscall", kernel_without(first_missing, kernel._syscall))
    kernel._warn_no_mount_setattr.cache_clear()
    target = tmp_path / "mount"
    target.mkdir()
    open_fds = os.listdir("/proc/self/fd")
    kernel.bind_readonly(str(source), str(target))
    try:
        assert_read_only(target, "file")
        assert len(os.listdir("/proc/self/fd")) == len(open_fds)
        assert "lacks mount_setattr" in caplog.text
    finally:
        kernel.unmount(str(target))


def test_a_refused_mount_api_call_is_an_error_not_a_writable_fallback(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seccomp profile that refuses the new calls answers EPERM: the publish fails, and nothing
    is mounted, rather than a bind whose host copies are writable."""

    def refused(number: int, what: str, path: str, *args: object) -> int:
        raise OSError(errno.EPERM, f"{what} {path}: {os.strerror(errno.EPERM)}")

    monkeypatch.setattr(kernel, "_syscall", refused)
    target = tmp_path / "mount"
    target.mkdir()
    with pytest.raises(OSError) as excinfo:
        kernel.bind_readonly(str(source), str(target))
    assert excinfo.value.errno == errno.EPERM
    assert not kernel.is_mount_point(str(target))


def test_find_mount_ignores_prefixes_of_the_path(tmp_path: Path, source: Path) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    kernel.bind_readonly(str(source), str(target))
    try:
        assert kernel.find_mount(str(tmp_path / "moun")) is None
        assert kernel.find_mount(str(tmp_path)) is None
    finally:
        kernel.unmount(str(target))


def test_unmount_of_a_path_not_mounted_or_missing_is_ok(tmp_path: Path) -> None:
    kernel.unmount(str(tmp_path))
    kernel.unmount(str(tmp_path / "missing"))


def test_mount_table_unescapes_octal_fields(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text("36 35 98:0 /mnt\\040x /a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n")
    (info,) = kernel.mount_table(str(table))
    assert (info.mount_point, info.root, info.fs_type) == ("/a b", "/mnt x", "ext3")


def test_is_mount_point_answers_as_the_mount_table_does(tmp_path: Path, source: Path) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert not kernel.is_mount_point(str(target))
    kernel.bind_readonly(str(source), str(target))
    try:
        assert kernel.is_mount_point(str(target))
        assert not kernel.is_mount_point(str(target / "file"))
        assert not kernel.is_mount_point(str(tmp_path))
        assert not kernel.is_mount_point(str(link))  # as in mountinfo: the link itself is no mount point
    finally:
        kernel.unmount(str(target))
    assert not kernel.is_mount_point(str(target))
    assert not kernel.is_mount_point(str(tmp_path / "missing"))


def test_is_mount_point_sees_same_file_system_binds_and_stacked_mounts(tmp_path: Path, source: Path) -> None:
    """A bind from the same file system keeps st_dev, so only the kernel's mount root flag can tell."""
    target = tmp_path / "mount"
    target.mkdir()
    kernel.bind_readonly(str(source), str(target))
    kernel.bind_readonly(str(source), str(target))
    kernel.unmount(str(target))
    assert kernel.is_mount_point(str(target))
    kernel.unmount(str(target))
    assert not kernel.is_mount_point(str(target))


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
        monkeypatch.setattr(kernel, "_mount_root_flag", lambda path: None)
    else:
        monkeypatch.setattr(kernel, "_statx", None if why == "no-statx-in-libc" else _refused)
    target = tmp_path / "mount"
    target.mkdir()
    assert not kernel.is_mount_point(str(target))
    kernel.bind_readonly(str(source), str(target))
    try:
        assert kernel.is_mount_point(str(target))
    finally:
        kernel.unmount(str(target))
