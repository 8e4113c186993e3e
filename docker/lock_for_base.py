"""The lock, minus what the base image already provides: what docker/install.sh installs in both images.

    python docker/lock_for_base.py split requirements/gpu.lock --out-dir /etc/megatron_moe [--base-constraint F]
    python docker/lock_for_base.py verify --out-dir /etc/megatron_moe

`split` reads the lock (`uv pip compile` output: `name==version` lines, each followed by `# via` comments naming
who requires it) and the distributions installed in this interpreter's environment, and writes to --out-dir:
  - install.txt    the lock entries to install, pinned as locked;
  - keep-base.txt  `name==version` of every lock entry the base already has (installed, or pinned by the base's
                   own pip constraint file, as NGC's /etc/pip/constraint.txt does): the base's version is kept,
                   and pip gets this file as constraints so that it cannot replace them.
A lock entry is dropped as well when everything that requires it is kept from the base (PyPI's torch requires
nvidia-* CUDA wheels; NGC's torch uses the CUDA of the image). The installer tools (pip, setuptools, wheel)
are installed as locked unless the base's constraint file pins them.

On a fresh virtual environment (the CPU image) nothing is kept and install.txt is the whole lock; on NGC's
PyTorch image torch, triton and NGC's other packages are kept. `verify` checks, after the install, that every
entry of install.txt is installed at its locked version and every kept one at the base's version.
Exit codes: 0 ok, 1 a check failed, 2 bad input.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
from pathlib import Path

# The locks are resolved for this Python (the Makefile's `uv pip compile --python-version`).
LOCK_PYTHON = (3, 11)
INSTALLER_TOOLS = frozenset({"pip", "setuptools", "wheel"})
# Triton's distribution name in PyTorch builds other than PyPI's (NGC and nightlies).
ALIASES = {"pytorch-triton": "triton"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


def canonical(name: str) -> str:
    """PEP 503 normalised name (`Foo_Bar` -> `foo-bar`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> tuple[dict[str, str], dict[str, set[str]], set[str]]:
    """(name -> locked version, name -> names that require it, names required directly by our requirement files).

    A `# via -r FILE` or `# via NAME (setup.py)` line makes the entry a direct requirement; `# via -c FILE` only
    says a constraint file pinned it and names no parent."""
    versions: dict[str, str] = {}
    parents: dict[str, set[str]] = {}
    direct: set[str] = set()
    current = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace() and not line.startswith("#"):
            m = _PIN.match(line)
            if not m:
                raise ValueError(f"not a pinned requirement: {line!r}")
            current = canonical(m.group(1))
            versions[current] = m.group(2)
            parents[current] = set()
            continue
        comment = line.strip().lstrip("#").strip()
        if current is None or not comment:
            continue
        comment = comment.removeprefix("via").strip()
        if not comment or comment.startswith("-c "):
            continue
        if comment.startswith("-r ") or comment.endswith("(setup.py)") or comment.endswith("(pyproject.toml)"):
            direct.add(current)
        else:
            parents[current].add(canonical(comment.split()[0]))
    if not versions:
        raise ValueError("the lock names no packages")
    return versions, parents, direct


def read_pins(paths: list[Path]) -> dict[str, str]:
    """`name==version` lines of pip constraint files (other lines are ignored: they cannot conflict with a pin)."""
    pins: dict[str, str] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            m = _PIN.match(line.strip())
            if m:
                pins[canonical(m.group(1))] = m.group(2)
    return pins


def installed_distributions() -> dict[str, str]:
    """name -> version of every distribution this interpreter can import from (first one on sys.path wins)."""
    found: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version)
    for alias, name in ALIASES.items():
        if alias in found and name not in found:
            found[name] = found[alias]
    return found


def split(lock: dict[str, str], parents: dict[str, set[str]], direct: set[str], installed: dict[str, str],
          base_pins: dict[str, str]) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """(to install: name -> locked version, kept from the base: name -> base version, dropped because only kept
    packages require them)."""
    kept: dict[str, str] = {}
    for name in lock:
        if name in base_pins:
            kept[name] = base_pins[name]
        elif name in installed and name not in INSTALLER_TOOLS:
            kept[name] = installed[name]
    gone = set(kept)
    only_for_kept: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name in lock:
            if (name not in gone and name not in direct and name not in INSTALLER_TOOLS and parents[name]
                    and parents[name] <= gone):
                gone.add(name)
                only_for_kept.add(name)
                changed = True
    install = {name: version for name, version in lock.items() if name not in gone}
    return install, kept, only_for_kept


def _write(path: Path, pins: dict[str, str], header: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    tmp.replace(path)


def cmd_split(args) -> int:
    versions, parents, direct = parse_lock(Path(args.lock).read_text())
    base_pins = read_pins([Path(p) for p in args.base_constraint])
    install, kept, dropped = split(versions, parents, direct, installed_distributions(), base_pins)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "install.txt", install, f"# {args.lock} minus what the base image provides (docker/lock_for_base.py)\n")
    _write(out / "keep-base.txt", kept, "# kept from the base image at its version (constraints for pip)\n")
    py = sys.version_info[:2]
    print(f"lock: {args.lock}, {len(versions)} packages; Python {sys.version.split()[0]}")
    if py != LOCK_PYTHON:
        print(f"warning: the lock is resolved for Python {'.'.join(map(str, LOCK_PYTHON))}; this base has "
              f"{'.'.join(map(str, py))}: pip installs the same pins where they have wheels for it")
    same = sorted(n for n in kept if same_version(kept[n], versions[n]))
    print(f"installing {len(install)} packages as locked; keeping {len(kept)} of the base, {len(same)} of them "
          f"at the locked version")
    for name in sorted(set(kept) - set(same)):
        print(f"kept from the base: {name}=={kept[name]} (lock: {versions[name]})")
    if dropped:
        print(f"not installed, only kept packages require them: {' '.join(sorted(dropped))}")
    return 0


def same_version(a: str | None, b: str) -> bool:
    """Equal as PEP 440 versions (`1.0-rc1` == `1.0rc1`) when `packaging` is importable, else as strings."""
    if a is None:
        return False
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return a == b
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def cmd_verify(args) -> int:
    out = Path(args.out_dir)
    installed = installed_distributions()
    bad = []
    for kind, name in (("locked", "install.txt"), ("kept", "keep-base.txt")):
        for pkg, want in read_pins([out / name]).items():
            have = installed.get(pkg)
            if not same_version(have, want):
                bad.append(f"{pkg}: {kind} {want}, installed {have or 'nothing'}")
    for line in bad:
        print(f"error: {line}", file=sys.stderr)
    if not bad:
        print(f"ok: every package of {out / 'install.txt'} and {out / 'keep-base.txt'} is installed at its version")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("split", help="write install.txt and keep-base.txt")
    p.add_argument("lock")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--base-constraint", action="append", default=[],
                   help="the base image's pip constraint file (its pins are kept); repeatable")
    p.set_defaults(run=cmd_split)
    p = sub.add_parser("verify", help="check the environment against install.txt and keep-base.txt")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(run=cmd_verify)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
