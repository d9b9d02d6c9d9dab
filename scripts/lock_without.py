"""Print a pip-compile lock without the named packages (and their hash lines).

The CPU image of the backend installs torch and torchvision from PyTorch's CPU index and then the rest
of the backend's lock; the lock itself holds the default (CUDA) build of torch and the CUDA libraries it
pulls in, which the CPU image must not download. Names are fnmatch patterns on normalised names:

    python scripts/lock_without.py requirements.txt torch torchvision triton 'nvidia-*' 'cuda-*'
"""

from __future__ import annotations

import fnmatch
import re
import sys
from pathlib import Path

_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(text: str) -> list[list[str]]:
    """The lock's lines grouped per entry: a requirement line with its continuation and comment lines."""
    groups: list[list[str]] = [[]]
    for line in text.splitlines():
        if _NAME.match(line):
            groups.append([])
        groups[-1].append(line)
    return groups


def without(text: str, patterns: list[str]) -> str:
    """``text`` (a lock) with every entry whose normalised name matches one of ``patterns`` left out."""
    kept = []
    for group in entries(text):
        m = _NAME.match(group[0]) if group else None
        if m and any(fnmatch.fnmatchcase(normalise(m.group(1)), normalise(p)) for p in patterns):
            continue
        kept.extend(group)
    return "\n".join(kept) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(without(Path(argv[0]).read_text(), argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
