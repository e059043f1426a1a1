"""The size gate of `make check`: no package module over 500 lines, no function over 60.

A module that passes 500 lines wants splitting along a seam a reader would name; a function
that passes 60 does several things. The exceptions are straight-line code whose length is its
content (argument parsers that declare one flag after another, graph builders that emit one
node after another), listed in ALLOWED with why.

    python scripts/check_sizes.py          # exit 1 and the offenders when any
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("adaptive", "agent", "common", "fleet", "models", "tui")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

ALLOWED: dict[str, str] = {}
"""`path:function` -> why its length is its content."""


def offenders(root: Path = ROOT) -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            rel = path.relative_to(root).as_posix()
            source = path.read_text()
            lines = len(source.splitlines())
            if lines > MAX_MODULE_LINES:
                found.append(f"{rel}: {lines} lines (at most {MAX_MODULE_LINES})")
            for node in ast.walk(ast.parse(source, rel)):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES and f"{rel}:{node.name}" not in ALLOWED:
                    found.append(f"{rel}:{node.lineno} {node.name}(): {length} lines (at most {MAX_FUNCTION_LINES})")
    return found


def main() -> int:
    found = offenders()
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
