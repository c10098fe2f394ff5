"""The shape of the codebase, checked on its source (import-linter checks the layers in `make test`):
Prefect's private names only in the one version-guarded module, no imports by string, flows that read like
the design, and each vendor SDK in its own blocks/ module."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("deployments", "webhook", "flows", "tasks", "blocks")
#: The one module allowed Prefect's private names; it checks the Prefect version before importing them.
GUARDED = Path("deployments/inprocess.py")
VENDOR_SDKS = {
    "anthropic": "blocks/anthropic.py",
    "slack_sdk": "blocks/slack.py",
    "boto3": "blocks/ses.py",
    "botocore": "blocks/ses.py",
    "pymongo": "blocks/mongo.py",
}


def sources() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path.relative_to(REPO), ast.parse(path.read_text(), filename=str(path))


def imported_modules(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


def is_private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def test_prefect_private_names_only_in_the_guarded_module() -> None:
    found = [
        f"{path}:{line} {name}"
        for path, tree in sources()
        if path != GUARDED
        for line, name in imported_modules(tree)
        if name.split(".")[0] == "prefect" and is_private(name)
    ]
    assert found == []


def test_no_private_attribute_of_a_prefect_object_is_used() -> None:
    # e.g. `Block._load_from_block_document(...)`: a private method reached through a public import
    found = []
    for path, tree in sources():
        if path == GUARDED:
            continue
        prefect_names = {
            (alias.asname or alias.name)
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prefect"
            for alias in node.names
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in prefect_names
                and is_private(node.attr)
                and not node.attr.startswith("_block_type")  # a Block's declared class attributes
            ):
                found.append(f"{path}:{node.lineno} {node.value.id}.{node.attr}")
    assert found == []


def test_nothing_is_imported_by_string() -> None:
    # import-linter sees every `import` statement (inside functions too), not `importlib.import_module("x")`
    found = [
        f"{path}:{node.lineno}"
        for path, tree in sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
        )
    ]
    assert found == []


def test_each_vendor_sdk_is_imported_by_its_own_block_module_only() -> None:
    found = [
        f"{path}:{line} {name}"
        for path, tree in sources()
        for line, name in imported_modules(tree)
        if (owner := VENDOR_SDKS.get(name.split(".")[0])) is not None and str(path) != owner
    ]
    assert found == []


def test_flows_package_imports_nothing() -> None:
    tree = ast.parse((REPO / "flows/__init__.py").read_text())
    assert list(imported_modules(tree)) == []


@pytest.mark.parametrize("package", ["flows", "webhook"])
def test_no_function_is_longer_than_100_lines(package: str) -> None:
    lengths = {
        f"{path}:{node.name}": node.end_lineno - node.lineno + 1  # type: ignore[operator]
        for path, tree in sources()
        if path.parts[0] == package
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    assert {name: n for name, n in lengths.items() if n > 100} == {}
