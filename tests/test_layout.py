"""The package's layout: the core at the top, `serve/` and `evaluation/` on it, imports one way."""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlx_ttsi"
PARTS = ("serve", "evaluation")
FRONT = {"mlx_ttsi.cli", "mlx_ttsi.__main__"}  # the command line: it fronts every part


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path):
    """Every mlx_ttsi module `path` imports, at the top or inside a function (relative ones resolved)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mlx_ttsi"}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            if module.split(".")[0] == "mlx_ttsi":
                found.add(module)
                found |= {f"{module}.{a.name}" for a in node.names}  # `from . import x`: x may be a module
    return found


def part(module):
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 2 and pieces[1] in PARTS else "core"


def imports_by_module():
    return {module_name(p): imported(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_resolver_sees_the_command_line_use_every_part():
    # the check below is only as good as this: cli imports the server and the evaluation lazily
    cli = {part(m) for m in imports_by_module()["mlx_ttsi.cli"]}
    assert {"core", "serve", "evaluation"} <= cli


@pytest.mark.parametrize("importer", ["core", *PARTS])
def test_imports_run_one_way(importer):
    # the core never imports serve/ or evaluation/; those two use the core and not each other
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in imports_by_module().items()
        if module not in FRONT and part(module) == importer
        for target in targets
        if part(target) not in ("core", importer)
    )
    assert not wrong


def test_each_part_is_a_folder_of_its_own():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert set(PARTS) <= folders
    assert not [p.name for p in PACKAGE.glob("*.py") if p.stem in ("server", "service", "evaluation", "report")]


def test_no_two_modules_import_each_other():
    # function-level imports count too: a circle there still ties the two modules into one
    imports = imports_by_module()
    circles = sorted(
        f"{module} <-> {target}"
        for module, targets in imports.items()
        for target in targets
        if module < target and target in imports and module in imports[target]
    )
    assert not circles


def test_the_circle_check_sees_a_circle(tmp_path, monkeypatch):
    # the check above is only as good as this: a circle through a function-level import is found
    package = tmp_path / "mlx_ttsi"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .a import g\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    with pytest.raises(AssertionError):
        test_no_two_modules_import_each_other()
