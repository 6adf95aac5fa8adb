"""The demo's try-commands, as text (tests/e2e/test_demo.py pastes them into bash)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmesh.cli.demo import try_commands


def test_try_commands_have_comments_on_their_own_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDITOR", "nano")
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no grpcurl, no kubectl, no localmesh
    services = tmp_path / "my services.yaml"
    text = try_commands(8080, services, tmp_path / "kubeconfig")
    lines = text.splitlines()
    assert f"nano '{services}'" in lines
    assert not any("grpcurl" in line or "kubectl" in line for line in lines)
    assert any(line.endswith("-m localmesh status --name demo") for line in lines)
    for line in lines:
        assert line.startswith("#") or "#" not in line, line


def test_without_an_editor_the_edit_is_a_comment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDITOR", raising=False)
    monkeypatch.delenv("VISUAL", raising=False)
    services = tmp_path / "services.yaml"
    last = try_commands(8080, services, tmp_path / "kubeconfig").splitlines()[-1]
    assert last == f"# edit {services}: changes apply live, Envoy is not restarted"
