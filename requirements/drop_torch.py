"""Drop torch, and every package that only torch's CUDA build needs, from a `uv pip compile` lock.

`make setup` installs torch first (the CPU wheel here, a CUDA build on a GPU machine: TORCH_SPEC),
so the lock must not pin torch's CUDA runtime (nvidia-*, triton: several GB). A package stays
when anything but a dropped package needs it (sympy, jinja2: other packages need them too).
Reads the lock (with uv's `# via` annotations) on stdin, writes it without them on stdout.
"""

import re
import sys


def parse(lines: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """The lock as (name, its lines, the packages it is `via`)."""
    entries: list[tuple[str, list[str], list[str]]] = []
    for line in lines:
        pin = re.match(r"^([A-Za-z0-9_.\-]+)==", line)
        if pin:
            entries.append((pin.group(1).lower(), [line], []))
        elif entries and line.startswith("    "):
            entries[-1][1].append(line)
            via = re.sub(r"^\s*#\s*(via\s*)?", "", line).strip()
            if via and not via.startswith("-r") and "(" not in via and not via.startswith("turbobatch"):
                entries[-1][2].append(via.lower())
            elif via:
                entries[-1][2].append("<keep>")
    return entries


def main() -> None:
    lines = sys.stdin.read().splitlines()
    header = [line for line in lines[: next(i for i, x in enumerate(lines) if "==" in x)]]
    entries = parse(lines)
    dropped = {"torch"}
    while True:
        more = {n for n, _, via in entries if n not in dropped and via and set(via) <= dropped}
        if not more:
            break
        dropped |= more
    print("\n".join(header))
    for name, block, _ in entries:
        if name not in dropped:
            print("\n".join(block))
    print(f"# dropped (installed with torch, before this lock): {', '.join(sorted(dropped))}", file=sys.stderr)


if __name__ == "__main__":
    main()
