"""The house by floors (DESIGN.md, Layout): every import points down, and modules stay
small. ``transport`` <- ``processes`` <- ``actors`` <- ``supervision`` <- the package
root; no floor imports one above it, not inside a function, not under TYPE_CHECKING."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import torchtroupe

FLOORS = ("transport", "processes", "actors", "supervision")
PACKAGE = Path(torchtroupe.__file__).parent
MAX_LINES = 550  # "about 500": a module past this wants splitting by concept


def _floor(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 1 and parts[0] == "torchtroupe" and parts[1] in FLOORS:
        return parts[1]
    return None


def _module_name(path: Path, root: Path) -> list[str]:
    parts = ["torchtroupe", *path.relative_to(root).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """Every module ``path`` (in the package at ``root``) imports, as absolute names."""
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, *(node.module or "").split(".")]).rstrip(".")
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def climbing_imports(root: Path) -> list[str]:
    """``path:line floor -> higher floor`` for every import that climbs."""
    climbing = []
    for path in sorted(root.rglob("*.py")):
        mine = _floor(".".join(_module_name(path, root)) + ".x")
        if mine is None:
            continue
        for line, target in imports_of(path, root):
            theirs = _floor(target)
            if theirs is not None and FLOORS.index(theirs) > FLOORS.index(mine):
                climbing.append(f"{path.relative_to(root)}:{line} {mine} -> {theirs}")
    return climbing


def test_no_floor_imports_one_above_it() -> None:
    assert climbing_imports(PACKAGE) == []


def test_the_check_finds_an_import_that_climbs(tmp_path: Path) -> None:
    sneaky = tmp_path / "transport" / "sneaky.py"
    sneaky.parent.mkdir()
    sneaky.write_text(
        "from typing import TYPE_CHECKING\n"
        "def f():\n"
        "    from ..actors import group\n"
        "if TYPE_CHECKING:\n"
        "    import torchtroupe.supervision.policy\n"
    )
    assert climbing_imports(tmp_path) == [
        "transport/sneaky.py:3 transport -> actors",
        "transport/sneaky.py:3 transport -> actors",
        "transport/sneaky.py:5 transport -> supervision",
    ]


@pytest.mark.parametrize("floor", FLOORS)
def test_every_floor_exists_and_its_init_only_re_exports(floor: str) -> None:
    init = PACKAGE / floor / "__init__.py"
    tree = ast.parse(init.read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, f"{init} does more than re-export"


def test_no_module_is_much_over_five_hundred_lines() -> None:
    big = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert big == {}


# -- Notes ---------------------------------------------------------------------------------

_SOURCES = ("*.py", "*.c", "*.h", "*.pyi")
_NOTE_HEADING = re.compile(r"^\s*(?:#\s*)?(Note \[([^\]]+)\])\s*$")
_NOTE_REFERENCE = re.compile(r"Note \[([^\]]+)\]")


def _source_files() -> list[Path]:
    return sorted(path for pattern in _SOURCES for path in PACKAGE.rglob(pattern))


def note_headings(paths: list[Path]) -> tuple[dict[str, str], list[str]]:
    """Every Note defined in ``paths`` (title -> place), and the headings not in the
    one shape: ``Note [Title]`` alone on its line, underlined by as many dashes."""
    defined: dict[str, str] = {}
    misshapen: list[str] = []
    for path in paths:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            match = _NOTE_HEADING.match(line)
            if match is None:
                continue
            heading, title = match.groups()
            underline = (
                lines[number + 1].strip().lstrip("#").strip() if number + 1 < len(lines) else ""
            )
            if underline != "-" * len(heading):
                misshapen.append(f"{path.name}:{number + 1} {heading}")
            defined[title] = f"{path.name}:{number + 1}"
    return defined, misshapen


def test_every_note_has_the_one_shape_and_every_reference_names_a_note() -> None:
    paths = _source_files()
    defined, misshapen = note_headings(paths)
    assert misshapen == []
    docs = sorted((PACKAGE.parent / "docs").rglob("*.md"))
    dangling = set()
    for path in [*paths, *docs]:
        # References may wrap across lines, comment markers included.
        text = re.sub(r"\s*\n\s*(?:#|\*|//)?\s*", " ", path.read_text())
        dangling |= {
            f"{path.name}: {title}"
            for title in _NOTE_REFERENCE.findall(text)
            if title not in defined and title != "..."  # "Note [...]": the form itself
        }
    assert sorted(dangling) == []


def test_the_note_check_finds_a_misshapen_heading(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text('"""\nNote [A rule]\n~~~~~~~~~~~~~\nWhy.\n"""\n')
    assert note_headings([source]) == ({"A rule": "module.py:2"}, ["module.py:2 Note [A rule]"])
