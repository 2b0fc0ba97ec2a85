"""The layout rules of docs/architecture.md: commands come from COMMAND_MODULES, only the CLI imports
a method, and importing the CLI stays light (no torch, no method) so `pathseg --help` is fast."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import typer
from typer.main import get_command

import pathseg
from pathseg import cli

SRC = Path(pathseg.__file__).parent
EXPECTED = {
    "train",
    "evaluate",
    "predict",
    "models",
    "pretrain",
    "demo",
    "data",
    "weak",
    "ambiguous",
    "nuclei",
}
NOT_COMMAND_MODULES = {"__init__", "__main__", "common"}


def command_names(app: typer.Typer) -> set[str]:
    return set(get_command(app).commands)


def fresh_app() -> typer.Typer:
    """An empty app; its callback keeps typer from collapsing a single command into the app."""
    app = typer.Typer()
    app.callback()(lambda: None)
    return app


def test_every_listed_module_registers_commands() -> None:
    seen: dict[str, str] = {}
    for name in cli.COMMAND_MODULES:
        module = importlib.import_module(f"pathseg.cli.{name}")
        assert Path(module.__file__).parent == SRC / "cli", name
        assert callable(getattr(module, "register", None)), f"pathseg.cli.{name} has no register(app)"
        fresh = fresh_app()
        module.register(fresh)
        added = command_names(fresh)
        assert added, f"pathseg.cli.{name}.register added no command"
        clashes = added & seen.keys()
        assert not clashes, f"{name} registers {clashes}, already from {[seen[c] for c in clashes]}"
        seen.update(dict.fromkeys(added, name))
    assert set(seen) == EXPECTED


def test_app_commands_are_exactly_the_registered_ones() -> None:
    assert command_names(cli.app) == EXPECTED
    fresh = fresh_app()
    for name in cli.COMMAND_MODULES:
        importlib.import_module(f"pathseg.cli.{name}").register(fresh)
    assert command_names(fresh) == command_names(cli.app)


def test_every_cli_module_is_listed() -> None:
    """A command module missing from COMMAND_MODULES would silently add nothing."""
    modules = {path.stem for path in (SRC / "cli").glob("*.py")} - NOT_COMMAND_MODULES
    assert modules == set(cli.COMMAND_MODULES)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names (relative imports resolved, imports
    inside functions included); ``from a import b`` counts as ``a`` and ``a.b``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def test_only_the_cli_imports_a_method() -> None:
    """Outside pathseg.cli nothing imports pathseg.methods; a method package may import its own
    modules, never another method."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        importer = _module_name(path)
        if importer == "pathseg.cli" or importer.startswith("pathseg.cli."):
            continue
        own = ".".join(importer.split(".")[:3]) if importer.startswith("pathseg.methods.") else None
        for target in _imported(path):
            if target != "pathseg.methods" and not target.startswith("pathseg.methods."):
                continue
            method = ".".join(target.split(".")[:3])
            if method == own or (target == "pathseg.methods" and own is not None):
                continue
            offenders.append(f"{path.relative_to(SRC.parent)} imports {target}")
    assert not offenders, "\n".join(offenders)


def test_the_import_check_sees_methods_imports() -> None:
    """_imported resolves the import forms the rule must catch."""
    names = _imported(SRC / "cli" / "weak.py")
    assert "pathseg.methods.weak" in names  # from pathseg.methods import weak (inside functions)
    assert "pathseg.methods.weak.config" in _imported(SRC / "methods" / "weak" / "pipeline.py")


def test_importing_the_cli_stays_light() -> None:
    code = (
        "import sys, pathseg.cli\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('pathseg.methods'))\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"importing pathseg.cli loads {done.stdout.strip()}"
