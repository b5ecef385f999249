"""The dependency lock (constraints.txt): check a venv against it, write it, or show drift.

    python .ci/lock.py check constraints.txt   # exit 1 when an installed version is not the lock's
    python .ci/lock.py write constraints.txt   # the lock, from what this venv has installed
    python .ci/lock.py diff  constraints.txt   # what this venv has that differs (exit 1 if any)

Run with the venv's own python. torch is left out (the Makefile pins it, and it must be installed
before anything else pulls a CUDA build), and so is the project itself.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

UNLOCKED = {"torch", "rmft-api"}
HEADER = """\
# The exact versions `make check` passes with, used by `make install` as pip constraints.
# Regenerate with `make lock` after a deliberate upgrade (`make upgrade-check` shows what moved).
# torch is pinned in the Makefile (installed first: the CPU build), so it is not listed here.
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, tuple[str, str]]:
    """Canonical name → (name as published, version) for every distribution of this venv."""
    found: dict[str, tuple[str, str]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonical(name) not in UNLOCKED:
            found[canonical(name)] = (name, dist.version)
    return found


def read_lock(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            sys.exit(f"{path}:{number}: expected name==version, got {line!r}")
        pins[canonical(name)] = version.strip()
    return pins


def differences(lock: dict[str, str], have: dict[str, tuple[str, str]]) -> list[str]:
    lines = []
    for key in sorted(set(lock) | set(have)):
        want, got = lock.get(key), have.get(key, (key, None))[1]
        if want == got:
            continue
        if want is None:
            lines.append(f"  + {have[key][0]}=={got} (installed, not in the lock)")
        elif got is None:
            lines.append(f"  - {key}=={want} (in the lock, not installed)")
        else:
            lines.append(f"  ~ {have[key][0]}: lock {want}, installed {got}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in {"check", "write", "diff"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, path = argv[0], Path(argv[1])
    have = installed()
    if command == "write":
        body = "".join(
            f"{name}=={version}\n"
            for name, version in sorted(have.values(), key=lambda p: canonical(p[0]))
        )
        path.write_text(HEADER + body)
        print(f"wrote {len(have)} pins to {path}")
        return 0
    diff = differences(read_lock(path), have)
    # An extra that is not installed leaves its pins unused: only versions that differ and
    # packages the lock does not know are errors for `check`.
    if command == "check":
        diff = [line for line in diff if not line.startswith("  -")]
    if diff:
        print(f"this venv differs from {path}:", *diff, sep="\n")
        return 1
    if command == "diff":
        print(f"this venv matches {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
