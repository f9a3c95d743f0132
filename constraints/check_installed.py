"""Fail unless every package of a constraints file is installed at exactly its version.

``make test-min`` runs it first: pip may satisfy a constraint with a wheel
already present or skip one it does not need, and then the tests would not
be testing the minimum at all.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path


def main(path: str) -> int:
    wrong = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, wanted = line.partition("==")
        try:
            installed = metadata.version(name.strip())
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != wanted.strip():
            wrong.append(f"{name.strip()}: want {wanted.strip()}, found {installed}")
    for problem in wrong:
        print(f"check_installed: {problem}", file=sys.stderr)
    if not wrong:
        print(f"check_installed: every package of {path} is at its minimum")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
