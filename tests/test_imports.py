"""The package's module-level imports form no cycle: every module can be imported on its own, in
any order. (Imports inside functions, made late on purpose to keep modules light, are not edges.)"""
import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ranem"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _typing_only(node) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def module_level_imports(path: Path, modules: set[str], anywhere: bool = False) -> set[str]:
    """The package's modules that ``path`` imports at its top level (``from a import b`` counts
    ``a.b`` when b is a module); with ``anywhere``, inside functions too (but not in
    ``if TYPE_CHECKING:`` blocks, which never run)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body
    if anywhere:
        tree.body = [node for node in tree.body if not _typing_only(node)]
        nodes = ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in modules and m != name}


def import_graph(anywhere: bool = False) -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: module_level_imports(path, set(paths), anywhere) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes, or None (depth-first search with colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle_and_only_then():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_reads_its_own_imports():
    graph = import_graph()
    assert "ranem.nem" in graph["ranem.tokens.nem"] and "ranem.ops" in graph["ranem.nem"]


def test_no_module_level_import_cycle_in_the_package():
    assert find_cycle(import_graph()) is None


def test_no_import_cycle_even_inside_functions():
    # Late imports keep modules light, not cycles hidden: the NEMs train through ranem.train,
    # which never imports ranem.nem back. (The old-path shims use importlib, which is no edge here.)
    graph = import_graph(anywhere=True)
    assert "ranem.train" in graph["ranem.nem"] and "ranem.zoo" in graph["ranem.baselines.nems"]
    assert find_cycle(graph) is None


# Names that moved to ranem.zoo, reachable where notebooks and user code import them from.
OLD_PATHS = [("ranem.classifiers", "get_classifier", "ranem.zoo", "get_classifier"),
             ("ranem.classifiers", "classifier_spec", "ranem.zoo", "classifier_spec"),
             ("ranem.classifiers", "cache_key", "ranem.zoo", "cache_key"),
             ("ranem.classifiers", "CACHE_VERSION", "ranem.zoo", "CACHE_VERSION"),
             ("ranem.classifiers", "KINDS", "ranem.zoo", "CLASSIFIER_KINDS"),
             ("ranem.classifiers", "WHEEL_ARCHITECTURES", "ranem.zoo", "WHEEL_ARCHITECTURES"),
             ("ranem.classifiers", "pretrained_classifier", "ranem.pretrained", "pretrained_classifier"),
             ("ranem.train", "get_nem", "ranem.zoo", "get_nem"),
             ("ranem.train", "nem_spec", "ranem.zoo", "nem_spec"),
             ("ranem.train", "NEM_CACHE_VERSION", "ranem.zoo", "NEM_CACHE_VERSION")]


@pytest.mark.parametrize("old, name, new, new_name", OLD_PATHS)
def test_moved_names_keep_their_old_import_paths(old, name, new, new_name):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), new_name)


def test_old_import_paths_still_refuse_unknown_names():
    from ranem import classifiers, train
    for module in (classifiers, train):
        with pytest.raises(AttributeError, match="has no attribute 'nope'"):
            module.nope
