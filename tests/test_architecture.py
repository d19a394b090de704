"""The package's shape, checked: imports go one way (no cycles, nothing below imports what sits above it), and
docs/architecture.md's module map names every module there is and states the import rules checked here.

Imports are read with ``ast`` from the source of every module under custom/fedgai, those inside functions
included: a lazy import still ties one module to another.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "custom"
PACKAGE = SOURCE / "fedgai"
MODULE_MAP = REPO / "docs" / "architecture.md"

# Cycles that exist today and are being removed, each with the issue that removes it. Nothing may be added here:
# a new cycle is fixed, not listed. Delete an entry when its cycle is gone (test_known_cycles_still_exist).
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()
FEDERATION = "fedgai.federated"
EVALUATION = "fedgai.evaluation"
# The application layers: they wire everything together, the federation included.
APP_LAYERS = ("fedgai.cli", "fedgai.studio_page")
# The studio's training: it must not depend on how its results are evaluated.
TRAINER = ("fedgai.trainer", "fedgai.objective", "fedgai.pair_features", "fedgai.features")


def module_name(path: Path) -> str:
    """``custom/fedgai/data/studio.py`` -> ``fedgai.data.studio``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_names(name: str, path: Path) -> Iterator[str]:
    """Every dotted name ``name`` imports, at module level or inside a function (``from a import b`` gives
    ``a.b`` as well as ``a``: b may be a module); relative imports resolved."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[:len(package) - node.level + 1], *([node.module] if node.module else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def owning_module(dotted: str) -> str | None:
    """The fedgai module a dotted name lives in (``fedgai.data.studio.load_studio`` -> ``fedgai.data.studio``)."""
    while dotted and dotted not in modules():
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def with_packages(module: str) -> set[str]:
    """``module`` and the packages whose ``__init__`` runs when it is imported."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules().keys()


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """module -> the fedgai modules importing it runs: what it imports and those modules' packages. Its own
    packages are left out (a package that imports its own modules is no cycle: Python runs it first)."""
    graph = {}
    for name, path in modules().items():
        targets = set().union(*(with_packages(owning_module(dotted) or "") for dotted in imported_names(name, path)))
        graph[name] = frozenset(t for t in targets if t != name and not name.startswith(f"{t}."))
    return graph


def cycles(graph: dict[str, frozenset[str]]) -> list[frozenset[str]]:
    """The graph's strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    work.append((target, iter(sorted(graph[target]))))
                elif target in stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = {stack.pop()}
                while node not in component:
                    component.add(stack.pop())
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


def imports_of(layer: Callable[[str], bool], forbidden: str) -> dict[str, list[str]]:
    """module in ``layer`` -> the modules under ``forbidden`` it imports (only modules that import any)."""
    found = {name: sorted(t for t in targets if within(t, forbidden))
             for name, targets in import_graph().items() if layer(name)}
    return {name: targets for name, targets in found.items() if targets}


def test_the_import_graph_is_read_from_every_module():
    graph = import_graph()
    assert len(graph) > 50 and "fedgai.trainer" in graph["fedgai.federated.studio.client"]
    assert "fedgai.federated.simulator.simulate" in graph["fedgai.cli"]  # a function-level import counts too


def test_no_import_cycles():
    unknown = [sorted(c) for c in cycles(import_graph()) if not any(c <= known for known in KNOWN_CYCLES)]
    assert not unknown, f"import cycles: {unknown}; move what both sides need to a module below both"


def test_known_cycles_still_exist():
    found = cycles(import_graph())
    gone = [sorted(known) for known in KNOWN_CYCLES if not any(c & known for c in found)]
    assert not gone, f"these cycles are gone: delete them from KNOWN_CYCLES ({gone})"


def test_only_the_app_layers_and_the_federation_import_the_federation():
    def below(name: str) -> bool:
        return not within(name, FEDERATION, *APP_LAYERS)

    assert not imports_of(below, FEDERATION), "a module below federated/ imports it"


def test_the_federations_rooms_import_one_way():
    """federated/ is grouped by who runs the code: studio/ and server/ never import each other, the shared modules
    on federated/'s floor import no room, and jobs/ (what the admin ships) never imports the simulator."""
    rooms = {room: f"{FEDERATION}.{room}" for room in ("studio", "server", "jobs", "simulator")}

    def floor(name: str) -> bool:
        return within(name, FEDERATION) and name != FEDERATION and not within(name, *rooms.values())

    found = {"studio -> server": imports_of(lambda name: within(name, rooms["studio"]), rooms["server"]),
             "server -> studio": imports_of(lambda name: within(name, rooms["server"]), rooms["studio"]),
             "jobs -> simulator": imports_of(lambda name: within(name, rooms["jobs"]), rooms["simulator"]),
             **{f"floor -> {room}": imports_of(floor, package) for room, package in rooms.items()}}
    assert not {rule: found for rule, found in found.items() if found}


def test_the_module_map_states_the_rooms_rule():
    assert "`studio/` and `server/` never import each other" in MODULE_MAP.read_text(encoding="utf-8")


def test_evaluation_does_not_import_the_federation():
    assert not imports_of(lambda name: within(name, EVALUATION), FEDERATION)


def test_training_does_not_import_evaluation():
    found = imports_of(lambda name: within(name, *TRAINER), EVALUATION)
    assert not found, f"training must not depend on evaluation: move what {found} uses below both"


def test_config_imports_nothing_of_fedgai():
    assert import_graph()["fedgai.config"] == frozenset()


def test_a_cycle_is_found():
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"})}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []
# ----------------------------------------------------------------------------------------------- module map
def listed_in_module_map() -> set[str]:
    """Every path named in the first column of architecture.md's module-map table, relative to custom/fedgai."""
    section = MODULE_MAP.read_text(encoding="utf-8").split("## Module map", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {token for cell in cells for token in re.findall(r"`([^`]+)`", cell)}


def package_paths() -> set[str]:
    """Every module (``data/studio.py``) and subpackage (``data/``) under custom/fedgai, ``__init__.py`` aside."""
    files = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    folders = {f"{p.parent.relative_to(PACKAGE).as_posix()}/" for p in PACKAGE.rglob("__init__.py")
               if p.parent != PACKAGE}
    return files | folders


def test_the_module_map_lists_every_module():
    missing = sorted(package_paths() - listed_in_module_map())
    assert not missing, f"docs/architecture.md's module map lacks {missing}"


def test_the_module_map_lists_no_module_that_is_gone():
    stale = sorted(listed_in_module_map() - package_paths())
    assert not stale, f"docs/architecture.md's module map names modules that do not exist: {stale}"


@pytest.mark.parametrize("rule", ["never import from `federated/`", "`evaluation/` never imports `federated/`",
                                  "never imports `evaluation/`", "`config.py` imports nothing of fedgai",
                                  "there are no import cycles"])
def test_the_module_map_states_the_import_rules(rule):
    assert rule in MODULE_MAP.read_text(encoding="utf-8")
