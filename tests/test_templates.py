"""What a developer sees of templates: the shipped ones preview as they stand, and an edited
template goes out without restarting the worker."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from worker import render
from worker.render import Renderer

from .conftest import ROOT, VENV_BIN

SHIPPED = sorted(p.name for p in (ROOT / "templates").iterdir() if (p / "subject.txt").is_file())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_template_previews_with_its_sample_context(name: str) -> None:
    out = subprocess.run([str(VENV_BIN / "beanmail"), "render", name, "--to", "Ana <ana@example.com>"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "\nSubject: " in out.stdout and "To: Ana <ana@example.com>" in out.stdout


def test_the_preview_greets_the_recipient_given_with_to() -> None:
    out = subprocess.run([str(VENV_BIN / "beanmail"), "render", "password_reset", "--part", "text",
                          "--to", "Ana <ana@example.com>"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Hello Ana,")


def _touch_later(path: Path, text: str) -> None:
    """Write ``text`` with an mtime clearly after the last one (as a human edit would have)."""
    before = path.stat().st_mtime if path.exists() else 0.0
    path.write_text(text)
    os.utime(path, (before + 2, before + 2))


def test_an_edited_template_is_rendered_anew_without_a_restart(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "RELOAD_CHECK", 0.0)
    folder = tmp_path / "hello"
    folder.mkdir()
    (folder / "subject.txt").write_text("Hi {{ name }}")
    (folder / "body.txt").write_text("Old text for {{ name }}\n")
    renderer = Renderer(str(tmp_path))
    assert renderer.render("hello", {"name": "Zoë"}).text == "Old text for Zoë\n"
    _touch_later(folder / "body.txt", "New text for {{ name }}\n")
    assert renderer.render("hello", {"name": "Zoë"}).text == "New text for Zoë\n"
    assert renderer.render("hello", {"name": "Zoë"}).html is None
    (folder / "body.html").write_text("<p>{{ name }}</p>")  # a new part: the folder changed
    os.utime(folder, (folder.stat().st_mtime + 2,) * 2)
    assert renderer.render("hello", {"name": "<Zoë>"}).html == "<p>&lt;Zoë&gt;</p>"


def test_templates_are_checked_at_most_once_a_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "RELOAD_CHECK", 3600.0)
    folder = tmp_path / "hello"
    folder.mkdir()
    (folder / "subject.txt").write_text("Hi")
    (folder / "body.txt").write_text("one\n")
    renderer = Renderer(str(tmp_path))
    assert renderer.render("hello", {}).text == "one\n"
    _touch_later(folder / "body.txt", "two\n")
    assert renderer.render("hello", {}).text == "one\n"  # within the period: the compiled copy, no stat
