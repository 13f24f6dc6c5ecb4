"""The layering: no import cycle among fedgen_pl, datamodules and callbacks (read from the source with ast,
imports inside functions included), and config.py at the bottom."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fedgen_pl", "datamodules", "callbacks")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                candidates = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_config_imports_nothing_of_the_project_but_errors():
    assert import_graph()["fedgen_pl.config"] <= {"fedgen_pl.errors"}
    assert import_graph()["fedgen_pl.errors"] == set()


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def longest_chain(graph: dict[str, set[str]]) -> list[str]:
    """The longest import chain (the graph has no cycle): its length is the number of import floors."""
    best: dict[str, list[str]] = {}

    def chain(v: str) -> list[str]:
        if v not in best:
            below = [chain(w) for w in graph[v]]
            best[v] = [v, *max(below, key=len, default=[])]
        return best[v]

    return max((chain(v) for v in graph), key=len)


def test_the_longest_chain_of_a_small_graph():
    assert longest_chain({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"c"}}) == ["a", "b", "c"]


def test_at_most_ten_import_floors():
    chain = longest_chain(import_graph())
    print("longest import chain:", " -> ".join(chain))
    assert len(chain) <= 10, " -> ".join(chain)


def test_metrics_do_not_import_the_models():
    graph, models = import_graph(), {"fedgen_pl.models", "fedgen_pl.gan", "fedgen_pl.vae"}

    def reaches(v: str, seen: set[str]) -> set[str]:
        for w in graph[v] - seen:
            seen.add(w)
            reaches(w, seen)
        return seen

    for name in graph:
        if name.startswith("fedgen_pl.metrics"):
            assert not reaches(name, set()) & models, name


def test_light_entry_points_stay_light():
    """What each process imports at start-up, in a fresh interpreter: the CLI module without Lightning (usage
    errors answer at once), the ClientApp module without torch (a node's topology query is a process of its
    own), and a deployed device, built, without Lightning (every device is a process)."""
    import json
    import subprocess
    import sys

    probe = """
import json, sys
import fedgen_pl.cli
cli = "pytorch_lightning" in sys.modules
import fedgen_pl.flower.client
client = "torch" in sys.modules
from fedgen_pl.config import load_config
from datamodules import FederatedData
from fedgen_pl.flower.device import DeviceWorker
cfg = load_config(["experiment=gaussian_grid"])
data = FederatedData(cfg)
data.setup("fit")
DeviceWorker(cfg, data.spec, {"community": 0, "device": 0})
print(json.dumps({"cli": cli, "client_torch": client, "device_lightning": "pytorch_lightning" in sys.modules}))
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"cli": False, "client_torch": False,
                                                               "device_lightning": False}
