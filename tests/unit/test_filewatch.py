"""SaveWatch on real file systems events: one report per save, whatever the editor's way of
saving, with each backend (inotify, and watchfiles, macOS's, which runs on Linux too)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from localmesh.errors import LocalmeshError
from localmesh.filewatch import (
    BACKEND_ENV_VAR,
    BACKENDS,
    MAX_DELAY,
    InotifySaveWatch,
    SaveWatch,
    WatchfilesSaveWatch,
    default_backend,
)

WITHIN = 5.0  # bound on waiting for an event that must come


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def no_save_within(saves: SaveWatch, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await saves.next()
    except TimeoutError:
        return True
    return False


def save_by_rename(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_in_place_write_and_rename_over_are_saves(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("a")
    with SaveWatch(path, backend=backend) as saves:
        path.write_text("b")
        async with asyncio.timeout(WITHIN):
            await saves.next()
        save_by_rename(path, "c")
        async with asyncio.timeout(WITHIN):
            await saves.next()


async def test_a_burst_of_events_is_one_save(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "services.yaml"
    with SaveWatch(path, backend=backend) as saves:
        for i in range(20):  # queued before anything reads them: one burst
            save_by_rename(path, str(i))
        async with asyncio.timeout(WITHIN):
            await saves.next()
        assert await no_save_within(saves, 3 * MAX_DELAY)


async def test_other_files_in_the_directory_are_not_saves(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("a")
    with SaveWatch(path, backend=backend) as saves:
        (tmp_path / "notes.txt").write_text("x")
        save_by_rename(tmp_path / "other.yaml", "y")
        assert await no_save_within(saves, 3 * MAX_DELAY)


async def test_the_file_going_away_and_coming_back_are_saves(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("a")
    with SaveWatch(path, backend=backend) as saves:
        path.unlink()
        async with asyncio.timeout(WITHIN):
            await saves.next()
        path.write_text("b")
        async with asyncio.timeout(WITHIN):
            await saves.next()


def test_a_missing_directory_is_an_error(tmp_path: Path, backend: str) -> None:
    missing = tmp_path / "gone" / "services.yaml"
    with pytest.raises(FileNotFoundError), SaveWatch(missing, backend=backend):
        pass


def test_without_inotify_watching_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable() -> None:
        raise AttributeError("inotify_init1")  # what asyncinotify raises off Linux

    monkeypatch.setattr("asyncinotify.Inotify", unavailable)
    with pytest.raises(LocalmeshError, match="--watch needs inotify") as info:
        SaveWatch(tmp_path / "services.yaml", backend="inotify")
    assert f"{BACKEND_ENV_VAR}=watchfiles" in str(info.value)


def test_the_backend_fits_the_platform(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    assert default_backend("linux") == "inotify"
    assert default_backend("darwin") == "watchfiles"
    assert default_backend("freebsd14") == "watchfiles"
    monkeypatch.setattr("sys.platform", "darwin")
    with SaveWatch(tmp_path / "services.yaml") as saves:
        assert isinstance(saves, WatchfilesSaveWatch)
    monkeypatch.setattr("sys.platform", "linux")
    with SaveWatch(tmp_path / "services.yaml") as saves:
        assert isinstance(saves, InotifySaveWatch)
    monkeypatch.setenv(BACKEND_ENV_VAR, "watchfiles")
    with SaveWatch(tmp_path / "services.yaml") as saves:
        assert isinstance(saves, WatchfilesSaveWatch)
    monkeypatch.setenv(BACKEND_ENV_VAR, "fsevents")
    with pytest.raises(LocalmeshError, match="unknown file watch backend 'fsevents'"):
        SaveWatch(tmp_path / "services.yaml")


async def test_a_cancelled_wait_loses_no_save(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("a")
    with SaveWatch(path, backend=backend) as saves:
        assert await no_save_within(saves, 2 * MAX_DELAY)  # cancels a pending wait
        save_by_rename(path, "b")
        async with asyncio.timeout(WITHIN):
            await saves.next()


async def ln_sfn(target: str, link: Path) -> None:
    """`ln -sfn`, as users swap a link (unlink, then symlink: not atomic)."""
    proc = await asyncio.create_subprocess_exec("ln", "-sfn", target, str(link))
    assert await proc.wait() == 0


async def test_symlink_swaps_are_followed(tmp_path: Path, backend: str) -> None:
    # services.yaml -> v1/services.yaml; `ln -sfn` to v2, then edits of v2 and a swap of a
    # symlinked directory on the way (how ConfigMap mounts update).
    for version in ("v1", "v2", "v3", "v4"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "services.yaml").write_text(version)
    link = tmp_path / "services.yaml"
    link.symlink_to("v1/services.yaml")
    with SaveWatch(link, backend=backend) as saves:
        await ln_sfn("v2/services.yaml", link)
        async with asyncio.timeout(WITHIN):
            await saves.next()
        (tmp_path / "v1" / "services.yaml").write_text("old target: not ours any more")
        assert await no_save_within(saves, 3 * MAX_DELAY)
        (tmp_path / "v2" / "services.yaml").write_text("edited in place")
        async with asyncio.timeout(WITHIN):
            await saves.next()
        # Now through a symlinked directory: services.yaml -> data/services.yaml, data -> v3.
        (tmp_path / "data").symlink_to("v3")
        await ln_sfn("data/services.yaml", link)
        async with asyncio.timeout(WITHIN):
            await saves.next()
        swap = tmp_path / "data.new"
        swap.symlink_to("v4")
        os.replace(swap, tmp_path / "data")
        async with asyncio.timeout(WITHIN):
            await saves.next()
        (tmp_path / "v4" / "services.yaml").write_text("v4 edited")
        async with asyncio.timeout(WITHIN):
            await saves.next()
    assert link.read_text() == "v4 edited"
