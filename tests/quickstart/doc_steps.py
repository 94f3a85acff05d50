"""The quick start of docs/django.md as steps a test can run: its code blocks, in order.

- a ``bash`` block runs in the reader's first terminal (one shell for all of them, so ``cd``,
  the activated venv and variables carry over), unless its first line is ``# terminal N: …``:
  then it runs on its own, in the background, from the directory the reader started in;
- a ``python`` block whose first line is ``# file: PATH`` replaces that file, ``# append to:
  PATH`` appends to it; an ``html`` block starting ``<!-- file: PATH -->`` replaces that file
  (paths are relative to the first terminal's directory at that point).

Nothing else in the section is code. ``substitute`` makes the only changes the test makes: the
checkout path in ``export GATEWAY_SRC=…`` and the port numbers (the test's own free ports).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SECTION = "## Quick start: a new Django project"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)
_FILE = re.compile(r"^(?:# file: |<!-- file: )(\S+?)(?: -->)?$")
_APPEND = re.compile(r"^# append to: (\S+)$")
_TERMINAL = re.compile(r"^# terminal \d+: ")


@dataclass(frozen=True)
class Step:
    kind: str  # "shell", "background", "write" or "append"
    text: str
    path: str | None = None


def section(markdown: str) -> str:
    start = markdown.index(SECTION)
    end = markdown.find("\n## ", start + len(SECTION))
    return markdown[start : end if end != -1 else None]


def steps(markdown: str) -> list[Step]:
    out = []
    for language, body in _FENCE.findall(section(markdown)):
        first, _, rest = body.partition("\n")
        if language == "bash":
            kind = "background" if _TERMINAL.match(first) else "shell"
            out.append(Step(kind, body))
        elif (match := _FILE.match(first)) is not None:
            out.append(Step("write", rest, match.group(1)))
        elif (match := _APPEND.match(first)) is not None:
            out.append(Step("append", rest, match.group(1)))
        else:
            raise ValueError(f"a {language} block the quick start test cannot place:\n{body}")
    return out


def substitute(text: str, checkout: Path, ports: dict[int, int]) -> str:
    text = re.sub(r"^export GATEWAY_SRC=.*$", f"export GATEWAY_SRC={checkout}", text, flags=re.M)
    for documented, used in ports.items():
        text = re.sub(rf"\b{documented}\b", str(used), text)
    return text
