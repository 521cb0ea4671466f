"""The floors of the code, checked over the source with ``ast``: no import runs from a lower
floor back up, and no module imports another's private (``_name``) names.

Floors, lowest first: ``producer/`` (what a web app imports: never ``worker``); the worker's
basics (outcomes, identity, journal, logs, redact); ``worker/storage/`` (the store's owners:
never the pipeline, the loop, the console, the facade ``worker/store.py`` or any stage); then
everything else in ``worker/``. Run alone: ``.venv/bin/pytest -q tests/test_layers.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
BASICS = {"worker.outcomes", "worker.identity", "worker.journal", "worker.logs", "worker.redact"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import in ``path``, relative
    ones resolved against the file's package; imports inside functions count too."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [alias.name for alias in node.names]
            if node.module is None:  # `from . import a, b`: each is a module of the package
                found += [(f"{base}.{name}", [], node.lineno) for name in names]
            else:
                found.append((base, names, node.lineno))
    return found


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def within(module: str, allowed: set[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def upward(files: list[Path], allowed: set[str]) -> list[str]:
    """Imports of ``worker`` modules outside ``allowed``, as ``file:line -> module``."""
    return [f"{p.relative_to(ROOT)}:{line} -> {module}"
            for p in files for module, _, line in imports(p)
            if within(module, {"worker"}) and not within(module, allowed)]


# producer/testing.py's ``render`` renders a captured delivery through the worker's templates,
# imported inside the function and only where the worker is installed (its docstring says so)
OPTIONAL_UP = {"producer/testing.py -> worker.render"}


def test_the_producer_never_imports_the_worker() -> None:
    assert sources("producer")
    found = {line.split(":")[0] + " -> " + line.split(" -> ")[1] for line in upward(sources("producer"), set())}
    assert found - OPTIONAL_UP == set()


def test_the_worker_basics_import_only_each_other() -> None:
    basics = [ROOT / (m.replace(".", "/") + ".py") for m in sorted(BASICS)]
    assert upward(basics, BASICS) == []


def test_the_store_owners_never_import_the_floors_above_them() -> None:
    """worker/storage/ may use the basics and itself: not the pipeline, the loop, the console,
    a stage, nor worker/store.py (the facade that composes it)."""
    files = sources("worker/storage")
    assert len(files) >= 10
    assert upward(files, BASICS | {"worker.storage"}) == []


def test_no_module_imports_a_private_name_of_the_store() -> None:
    """The store's owners are used through their public methods (digest records included)."""
    private = [f"{p.relative_to(ROOT)}:{line} -> {module}.{name}"
               for p in sources("producer", "worker", "bench", "tests")
               for module, names, line in imports(p)
               for name in names
               if within(module, {"worker.store", "worker.storage"}) and name.startswith("_")
               and not name.startswith("__") and module != module_name(p)]
    assert private == []


def private_uses_of_a_store(source: str) -> list[str]:
    """``store._name`` (or ``x.store._name``): a private member of a store used from outside."""
    return [f"{node.lineno} .{node.attr}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            and ((isinstance(node.value, ast.Name) and node.value.id == "store")
                 or (isinstance(node.value, ast.Attribute) and node.value.attr == "store"))]


def test_no_module_outside_the_store_uses_its_private_members() -> None:
    reaching = [f"{p.relative_to(ROOT)}:{use}" for p in sources("producer", "worker", "bench")
                if "storage" not in p.parts for use in private_uses_of_a_store(p.read_text(encoding="utf-8"))]
    assert reaching == []
    # what digest/records.py did before the split is what this finds
    assert private_uses_of_a_store("with self.store._transaction():\n    self.store._db.execute(q)\n") == [
        "1 ._transaction", "2 ._db"]


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The checks above would pass on a checker that saw nothing: it sees the imports it must."""
    probe = ROOT / "worker" / "storage" / "ledger.py"
    found = {module for module, _, _ in imports(probe)}
    assert {"worker.identity", "worker.journal", "worker.storage.database"} <= found
    assert upward([ROOT / "worker" / "pipeline.py"], BASICS | {"worker.storage"})  # pipeline imports worker.store
