"""The usage example under "## Usage example" (README.md, else docs/losses.md) runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEADING = "## Usage example"


def _example_source() -> tuple[Path, str]:
    for path in (REPO / "README.md", REPO / "docs" / "losses.md"):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        if HEADING not in (line.strip() for line in lines):
            continue
        start = [line.strip() for line in lines].index(HEADING) + 1
        section, in_fence = [], False
        for line in lines[start:]:
            if line.lstrip().startswith("```"):
                in_fence = not in_fence
            elif not in_fence and re.match(r"^#{1,2} ", line):
                break  # the next section (headings inside code blocks are comments, not headings)
            section.append(line)
        match = re.search(r"```python\n(.*?)```", "\n".join(section) + "\n", flags=re.S)
        if match is None:
            pytest.fail(f"{path}: the '{HEADING}' section has no ```python code block")
        return path, match.group(1)
    pytest.fail(f"neither README.md nor docs/losses.md has a '{HEADING}' heading")


def test_usage_example_runs():
    path, source = _example_source()
    namespace: dict = {"__name__": "__usage_example__"}
    exec(compile(source, f"{path.name}:{HEADING}", "exec"), namespace)
