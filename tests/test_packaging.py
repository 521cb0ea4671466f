"""Installed as a package, not run from the checkout: a web app needs greenstalk alone, nothing
is written into the installed package, and a shadowing `producer` is refused in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT


@pytest.mark.server
def test_a_non_editable_install_runs_from_any_folder_and_writes_nothing_into_it(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=300)
    before = sorted(p.relative_to(target) for p in target.rglob("*") if "__pycache__" not in p.parts)
    work = tmp_path / "app"
    (work / "templates" / "hello").mkdir(parents=True)
    (work / "templates" / "hello" / "subject.txt").write_text("Hi {{ name }}")
    (work / "templates" / "hello" / "body.txt").write_text("Hello {{ name }}\n")
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))  # the venv's dependencies
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{target}:{site_packages}", "LANG": "C"}
    out = subprocess.run([sys.executable, "-c", "from worker.cli import main; raise SystemExit(main())",
                          "render", "hello", "--context", '{"name": "Zoë"}', "--part", "subject"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "Hi Zoë", out.stderr
    out = subprocess.run([sys.executable, "-c", "from worker.cli import main; raise SystemExit(main())",
                          "suppress", "list"], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (work / "var" / "beanmail.sqlite3").is_file()  # the store lands where the program runs
    after = sorted(p.relative_to(target) for p in target.rglob("*") if "__pycache__" not in p.parts)
    assert after == before


def test_the_producer_needs_only_greenstalk_and_idna() -> None:
    from importlib.metadata import requires

    assert [r for r in requires("beanmail") or [] if "extra ==" not in r] == ["greenstalk<3,>=2.0", "idna>=3.4"]
    code = ("import sys; import producer, producer.client, producer.hooks, producer.spool, producer.blobs, producer.outbox;"
            " bad = {'jinja2', 'structlog', 'dns', 'supervisor', 'email_validator', 'worker'} & set(sys.modules);"
            " assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_a_producer_package_of_another_distribution_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "producer").mkdir()
    (tmp_path / "producer" / "__init__.py").write_text("# some other project's producer\n")
    out = subprocess.run([sys.executable, "-c", "import worker"], env={"PYTHONPATH": f"{tmp_path}:{ROOT}"},
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 1
    assert "is not beanmail's: another distribution installs a top-level 'producer'" in out.stderr


def test_the_version_is_written_once_and_every_reader_agrees() -> None:
    import re
    from importlib.metadata import version

    import producer
    from worker.registry import VERSION

    written = [p for p in [*ROOT.glob("*.py"), *ROOT.glob("producer/**/*.py"), *ROOT.glob("worker/**/*.py")]
               if re.search(r'^(__version__|VERSION)\s*=\s*"\d+\.\d+\.\d+"', p.read_text(), re.M)]
    assert written == [ROOT / "producer" / "__init__.py"]
    assert version("beanmail") == producer.__version__ == VERSION


def test_the_secret_bearing_settings_file_is_never_committed() -> None:
    for path in ("beanmail.toml", "var/beanmail.sqlite3", "var/log/worker.log"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path
