"""No top-level name of this checkout may shadow a module that an installed distribution provides.

`python -m ...`, `python -` and pytest put the checkout root (and, through tests/conftest.py, tests/ and each
tests/<dir>/) in front of site-packages on sys.path. On 2026-12-07 our old top-level package `kernels/` shadowed
Hugging Face's `kernels` distribution, which transformers 5.25 imports, and every README command failed.

The provided names come from the installed distributions' own metadata (top_level.txt and RECORD file lists),
not from a hand-written list, so the next collision is caught whatever package it comes from.
"""
import importlib.machinery
import importlib.metadata as md
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = {"megatron_moe", "moe_kernels"}  # our own packages; an editable install resolves them to this checkout
OUR_DIST = "megatron-moe"  # its metadata (an egg-info in the checkout lists SOURCES.txt: setup.py, ...) is skipped


def _top_level_names(dist) -> set[str]:
    """Import names a distribution installs at the top level, from top_level.txt and its file list."""
    names = set((dist.read_text("top_level.txt") or "").split())
    for f in dist.files or ():
        parts = Path(str(f)).parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".egg-info", ".data")):
            continue
        head = parts[0]
        if len(parts) == 1:  # a top-level file: only modules count (.py, extension modules), not .pth or scripts
            if head.endswith(".py"):
                names.add(head[:-3])
            elif head.endswith((".so", ".pyd")):
                names.add(head.split(".", 1)[0])
        else:
            names.add(head)
    return {n for n in names if n.isidentifier()}


def _provided() -> dict[str, set[str]]:
    """Top-level import name -> the installed distributions that provide it."""
    out: dict[str, set[str]] = {}
    for dist in md.distributions():
        if not dist.metadata or dist.metadata["Name"] is None:
            continue
        if dist.metadata["Name"].lower().replace("_", "-") == OUR_DIST:
            continue
        for name in _top_level_names(dist):
            out.setdefault(name, set()).add(dist.metadata["Name"])
    return out


def _search_dirs() -> list[Path]:
    """Directories of this checkout that get in front of site-packages: the root, tests/, tests/<dir>/."""
    tests = ROOT / "tests"
    return [ROOT, tests] + sorted(d for d in tests.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))


def _is_namespace(spec) -> bool:
    return spec.origin is None or spec.origin == "namespace"


def shadowing(provided: dict[str, set[str]], dirs: list[Path]) -> list[str]:
    """One line per checkout module that an import of an installed distribution's name would find first."""
    found = []
    for name in sorted(set(provided) - OURS):
        installed = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if "site-packages" in p])
        for d in dirs:
            spec = importlib.machinery.PathFinder.find_spec(name, [str(d)])
            if spec is None:
                continue
            # A folder without __init__.py is a namespace portion: a regular installed module or package wins over
            # it; only when the installed name is itself a namespace package would the two merge.
            if _is_namespace(spec) and not (installed is not None and _is_namespace(installed)):
                continue
            where = spec.origin if not _is_namespace(spec) else list(spec.submodule_search_locations)[0]
            found.append(f"{name}: {where} shadows distribution(s) {sorted(provided[name])}")
    return found


def test_names_are_computed_from_installed_distributions():
    """Guard against a vacuous pass: the metadata scan must see the packages we certainly have installed."""
    provided = _provided()
    for name, dist in [("torch", "torch"), ("transformers", "transformers"), ("yaml", "PyYAML"),
                       ("google", "protobuf")]:
        assert name in provided and any(d.lower() == dist.lower() for d in provided[name]), (name, provided.get(name))


def test_checkout_shadows_no_installed_module():
    problems = shadowing(_provided(), _search_dirs())
    assert not problems, "rename these or move them under a package:\n" + "\n".join(problems)


def test_the_check_catches_a_top_level_package(tmp_path):
    """The old layout: a regular package named like an installed distribution's module is reported."""
    (tmp_path / "transformers").mkdir()
    (tmp_path / "transformers" / "__init__.py").write_text("")
    (tmp_path / "yaml.py").write_text("")
    (tmp_path / "torch").mkdir()  # a bare folder: a namespace portion, which the installed regular package beats
    lines = shadowing(_provided(), [tmp_path])
    assert [line.split(":")[0] for line in lines] == ["transformers", "yaml"], lines
