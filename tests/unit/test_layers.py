"""The layers of STYLE.md hold (issue 14): the web layer never reaches past the services."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "dicomweb_server"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.name}: {name}"
        for path in sorted((PACKAGE / folder).glob("*.py"))
        for name in sorted(_imports(path))
        if name.startswith(forbidden)
    ]


def test_web_imports_no_storage_index_or_server() -> None:
    forbidden = (
        "dicomweb_server.storage",
        "dicomweb_server.index",
        "dicomweb_server.serve",
        "uvicorn",
    )
    assert _offenders("web", forbidden) == []


def test_services_import_no_web_server_or_driver() -> None:
    forbidden = (
        "dicomweb_server.web",
        "dicomweb_server.serve",
        "starlette",
        "asyncpg",
        "aiobotocore",
        "uvicorn",
    )
    assert _offenders("services", forbidden) == []


def test_domain_imports_nothing_of_ours_but_domain_and_errors() -> None:
    ours = [
        name
        for path in sorted((PACKAGE / "domain").glob("*.py"))
        for name in _imports(path)
        if name.startswith("dicomweb_server.")
        and not name.startswith(("dicomweb_server.domain", "dicomweb_server.errors"))
    ]
    assert ours == []


def test_only_serve_imports_uvicorn() -> None:
    users = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(name.startswith("uvicorn") for name in _imports(path))
    )
    assert all(user.startswith("serve/") for user in users), users
