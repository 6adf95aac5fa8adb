"""SaveWatch on a real inotify: one report per save, whatever the editor's way of saving."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from localmesh.errors import LocalmeshError
from localmesh.filewatch import MAX_DELAY, SaveWatch

WITHIN = 5.0  # bound on waiting for an event that must come


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


async def test_in_place_write_and_rename_over_are_saves(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("a")
    with SaveWatch(path) as saves:
        path.write_text("b")
        async with asyncio.timeout(WITHIN):
            await saves.next()
        save_by_rename(path, "c")
        async with asyncio.timeout(WITHIN):
            await saves.next()


async def test_a_burst_of_events_is_one_save(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    with SaveWatch(path) as saves:
        for i in range(20):  # queued before anything reads them: one burst
            save_by_rename(path, str(i))
        async with asyncio.timeout(WITHIN):
            await saves.next()
        assert await no_save_within(saves, 3 * MAX_DELAY)


async def test_other_files_in_the_directory_are_not_saves(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("a")
    with SaveWatch(path) as saves:
        (tmp_path / "notes.txt").write_text("x")
        save_by_rename(tmp_path / "other.yaml", "y")
        assert await no_save_within(saves, 3 * MAX_DELAY)


async def test_the_file_going_away_and_coming_back_are_saves(tmp_path: Path) -> None:
    path = tmp_path / "services.yaml"
    path.write_text("a")
    with SaveWatch(path) as saves:
        path.unlink()
        async with asyncio.timeout(WITHIN):
            await saves.next()
        path.write_text("b")
        async with asyncio.timeout(WITHIN):
            await saves.next()


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), SaveWatch(tmp_path / "gone" / "services.yaml"):
        pass


def test_without_inotify_watching_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable() -> None:
        raise AttributeError("inotify_init1")  # what asyncinotify raises off Linux

    monkeypatch.setattr("localmesh.filewatch.Inotify", unavailable)
    with pytest.raises(LocalmeshError, match="--watch needs inotify"):
        SaveWatch(tmp_path / "services.yaml")
