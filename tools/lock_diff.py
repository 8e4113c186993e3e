"""Print how this environment's installed versions differ from a lock file (the upgrade canary's report).

    python tools/lock_diff.py requirements/cpu.lock
"""
import argparse
import importlib.metadata as md
import re
import sys

from packaging.utils import canonicalize_name


def read_lock(path: str) -> dict[str, str]:
    pins = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
            if m:
                pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lock")
    args = ap.parse_args(argv)
    locked = read_lock(args.lock)
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions() if d.metadata["Name"]}
    rows = [(n, locked.get(n, "-"), installed.get(n, "-")) for n in sorted(set(locked) | set(installed))
            if locked.get(n) != installed.get(n) and n != "megatron-moe"]
    print(f"{len(rows)} package(s) differ from {args.lock} (lock -> installed):")
    for name, old, new in rows:
        print(f"  {name:32s} {old:>16s} -> {new}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
