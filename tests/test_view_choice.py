"""``--mode auto`` (the default) picks erofs where the kernel mounts a probe image, else fuse where
/dev/fuse exists, else bind, and says why (docs/views.md "Choosing one").

The probe is the real one (``erofsmount.probe``: write a one-file image in the state dir, mount it,
read it back, file-backed, else over loop devices); a kernel without EROFS is simulated by asking
``fsopen`` for a file system type the kernel does not have, so the refusal is the kernel's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from csi_driver.views import choose, erofsmount
from driver import run_driver
from test_erofs_mount import refuse_file_backed_mounts


@pytest.fixture
def no_erofs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel answers as one without EROFS: ``fsopen("erofs")`` fails with ENODEV."""
    real = erofsmount._syscall

    def syscall(name: str, *args: object) -> int:
        if name == "fsopen":
            args = (b"erofs-not-in-this-kernel", *args[1:])
        return real(name, *args)

    monkeypatch.setattr(erofsmount, "_syscall", syscall)


def test_auto_picks_erofs_where_the_kernel_mounts_the_probe_image(tmp_path: Path) -> None:
    mode, why, backing = choose.choose("auto", tmp_path)
    assert (mode, backing) == ("erofs", "file"), why
    assert "work" in why and "auto" in why
    assert list((tmp_path / "tmp").iterdir()) == []  # the probe cleans up after itself


def test_auto_picks_erofs_over_loop_devices_where_file_backed_mounts_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on Linux 6.4-6.11, where the kernel refuses a regular file as the source."""
    refuse_file_backed_mounts(monkeypatch)
    mode, why, backing = choose.choose("auto", tmp_path)
    assert (mode, backing) == ("erofs", "loop"), why
    assert why.startswith("EROFS file-backed mounts do not work here: ")
    assert why.endswith("; EROFS loop-backed mounts with extra devices work (auto: the first choice)")


def test_auto_falls_back_to_fuse_without_erofs_and_says_why(no_erofs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = tmp_path / "fuse"
    device.touch()
    monkeypatch.setattr(choose, "FUSE_DEVICE", str(device))
    mode, why, _ = choose.choose("auto", tmp_path)
    assert mode == "fuse"
    assert "EROFS file-backed mounts do not work here" in why and "EROFS loop-backed mounts do not work here" in why
    assert "No such device" in why and f"{device} exists" in why


def test_auto_falls_back_to_bind_without_erofs_or_fuse(no_erofs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choose, "FUSE_DEVICE", str(tmp_path / "no-fuse"))
    mode, why, _ = choose.choose("auto", tmp_path)
    assert mode == "bind"
    assert f"there is no {tmp_path / 'no-fuse'}" in why


def test_auto_falls_back_when_the_kernel_refuses_an_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel whose erofs lacks what the image needs refuses a mount option: the probe catches it."""
    real = erofsmount._syscall

    def syscall(name: str, *args: object) -> int:
        if name == "fsconfig" and args[2] == b"device":
            args = (args[0], args[1], b"no-such-option", *args[3:])
        return real(name, *args)

    monkeypatch.setattr(erofsmount, "_syscall", syscall)
    monkeypatch.setattr(choose, "FUSE_DEVICE", str(tmp_path / "no-fuse"))
    mode, why, _ = choose.choose("auto", tmp_path)
    assert mode == "bind" and "Invalid argument" in why, why


def test_an_explicit_erofs_mode_the_kernel_refuses_stops_serve(no_erofs, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as excinfo:
        choose.choose("erofs", tmp_path)
    assert "--mode erofs: EROFS file-backed mounts do not work here" in str(excinfo.value)
    assert "EROFS loop-backed mounts do not work here" in str(excinfo.value)


@pytest.mark.parametrize("mode", ["fuse", "bind"])
def test_an_explicit_mode_is_taken_without_probing(mode: str, no_erofs, tmp_path: Path) -> None:
    assert choose.choose(mode, tmp_path) == (mode, f"--mode {mode}", "")


def test_serve_logs_the_view_auto_chose_and_why(tmp_path: Path, registry: str) -> None:
    with run_driver(tmp_path, registry, "auto") as driver:
        pass
    log = driver.log.read_text()
    assert "data plane: erofs view, because EROFS file-backed mounts with extra devices work (auto: the first choice)" in log


def test_serve_logs_an_erofs_view_over_loop_devices(tmp_path: Path, registry: str) -> None:
    with run_driver(tmp_path, registry, "auto", env={erofsmount.FORCE_BACKING: "loop"}) as driver:
        pass
    log = driver.log.read_text()
    assert "data plane: erofs view, because EROFS loop-backed mounts with extra devices work (auto: the first choice)" in log
