"""The package's shape: no import cycles inside llava_mini, and the model files import only torch and their config.

The imports are read from the source (ast), every one of them, including those inside functions: a cycle that only
a lazy import hides is still a cycle for a reader.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llava_mini"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The llava_mini modules that `path` imports (`from llava_mini.data import tokenizer` counts as
    llava_mini.data.tokenizer)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("llava_mini")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llava_mini"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}
    return found & known


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p): p for p in root.rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring the modules on the stack)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_llava_mini_has_no_import_cycle():
    graph = import_graph()
    assert "llava_mini.eval.judges" in graph and "llava_mini.training.pipeline" in graph   # the walk sees the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_model_files_import_only_torch_and_their_config():
    allowed = {"llava_mini.model.config", "llava_mini.model.attention", "llava_mini.model.clip",
               "llava_mini.model.projector", "llava_mini.model.kv_cache", "llava_mini.model.llama",
               "llava_mini.model.lm_loss", "llava_mini.model.llava", "llava_mini.jsonio"}
    for name, deps in import_graph().items():
        if name.startswith("llava_mini.model"):
            assert deps <= allowed, f"{name} imports {sorted(deps - allowed)}"
