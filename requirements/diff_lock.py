"""Print the packages whose installed version differs from a lock: ``python diff_lock.py LOCK``.

CI's newest-versions venv runs it when the demo or the unit tests fail there, so the failure
names the releases that arrived since the lock was made (the fix: adapt, or a bounded pin in
pyproject.toml with a comment naming the release and the symptom).
"""

import re
import sys
from importlib.metadata import distributions

# Installed beside the lock on purpose: the venv's tools, torch (installed first) and the project.
NOT_LOCKED = {"pip", "setuptools", "wheel", "uv", "torch", "turbobatch"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: str) -> dict[str, str]:
    pins = (re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line) for line in open(path, encoding="utf-8"))
    return {canonical(m.group(1)): m.group(2) for m in pins if m}


def main(lock_path: str) -> int:
    lock = locked(lock_path)
    installed = {canonical(d.metadata["Name"]): d.version for d in distributions()}
    changed = [f"{n} {lock[n]} -> {installed[n]}" for n in sorted(lock) if n in installed and installed[n] != lock[n]]
    added = [f"{n} {installed[n]} (not in the lock)" for n in sorted(set(installed) - set(lock) - NOT_LOCKED)]
    for line in changed + added:
        print(f"  {line}")
    if not changed:
        print(f"  no locked package differs from {lock_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
