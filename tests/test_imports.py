"""The srigl_np import graph, read from the source with ast, has no cycles.

Arrows must point one way (data -> model -> dst -> train -> condensed -> bench; shared
helpers pushed down into backend/validation). Every import counts, at module level or
inside a function: a function-level import hides a cycle from Python, not from a reader.

Edges: ``import srigl_np.x``, ``from srigl_np import x``, ``from srigl_np.x import y``,
``from . import x``, ``from .x import y`` (and deeper relative levels). ``from P import n``
points at P.n when P.n is a module of the package, else at P. Importing a submodule does
not add an edge to its parent package's ``__init__`` (Python runs it, but a package
importing its own modules is not a cycle of the design).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = "srigl_np"
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE


# -- the graph ------------------------------------------------------------------------------

def module_names(root, package):
    """{module name: path} of every .py file under ``root`` (the folder of ``package``);
    compiled extensions (.pyx) are listed as modules too, with path None (leaves)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = (package,) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    for path in sorted(root.rglob("*.pyx")):
        names.setdefault(".".join((package,) + path.relative_to(root).with_suffix("").parts),
                         None)
    return names


def _resolve_relative(module, is_package, level, target):
    """The absolute name of ``from <level dots><target> import ...`` inside ``module``."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(parts) - 1:
        raise ValueError(f"{module}: relative import beyond the top-level package")
    base = parts[:len(parts) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph(root, package=PACKAGE):
    """{module: {imported module: [line numbers]}} over the modules of ``package`` at
    ``root``, keeping only imports of the package's own modules (no self edges)."""
    modules = module_names(root, package)
    graph = {name: {} for name in modules}
    for name, path in modules.items():
        if path is None:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target in _targets(node, name, path.name == "__init__.py", modules):
                if target != name and (target == package or target.startswith(package + ".")):
                    graph[name].setdefault(target, []).append(node.lineno)
    return graph


def _targets(node, module, is_package, modules):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = _resolve_relative(module, is_package, node.level, node.module)
    else:
        base = node.module
    # ``from P import n``: n is a submodule when P.n is one, otherwise a name in P.
    targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    if len(targets) < len(node.names):
        targets.append(base)
    return targets


# -- cycles ---------------------------------------------------------------------------------

def strongly_connected_components(graph):
    """Tarjan's algorithm, iterative; nodes and neighbours visited in sorted order."""
    index, lowlink, on_stack, stack, components = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = lowlink[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, neighbours = work[-1]
            for neighbour in neighbours:
                if neighbour not in index:
                    index[neighbour] = lowlink[neighbour] = len(index)
                    stack.append(neighbour)
                    on_stack.add(neighbour)
                    work.append((neighbour, iter(sorted(graph.get(neighbour, ())))))
                    break
                if neighbour in on_stack:
                    lowlink[node] = min(lowlink[node], index[neighbour])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[node])
                if lowlink[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def find_cycles(graph):
    """One cycle per strongly connected component that has one, as a node list whose last
    entry repeats the first: ["a", "b", "a"]. Each starts at the component's smallest
    node (by name) and is a shortest way back to it; among equally short ones the
    breadth-first search takes neighbours in sorted order, so the smaller name wins."""
    cycles = []
    for component in strongly_connected_components(graph):
        members, start = set(component), component[0]
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        parent, frontier, end = {}, [start], None
        while end is None:
            following = []
            for node in frontier:
                for neighbour in sorted(graph.get(node, ())):
                    if neighbour == start:
                        end = node
                        break
                    if neighbour in members and neighbour not in parent:
                        parent[neighbour] = node
                        following.append(neighbour)
                if end is not None:
                    break
            frontier = following
        path = [end]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append(path[::-1] + [start])
    return sorted(cycles)


def describe(cycle, graph):
    """"a -> b -> a" and, per arrow, the lines of the import."""
    lines = [" -> ".join(cycle)]
    for source, target in zip(cycle, cycle[1:]):
        where = ", ".join(str(n) for n in graph[source][target])
        lines.append(f"    {source} imports {target} (line {where})")
    return "\n".join(lines)


# -- the package ----------------------------------------------------------------------------

def test_the_graph_of_the_package_is_read():
    """Guards the cycle test against passing on an empty or misread graph."""
    graph = import_graph(SOURCE)
    assert {"srigl_np", "srigl_np.train", "srigl_np.nn.layers", "srigl_np._kernels"} <= set(graph)
    assert "srigl_np.formats.checkpoint" in graph["srigl_np.train"]   # from .formats.checkpoint
    assert "srigl_np.backend" in graph["srigl_np.nn.layers"]
    assert "srigl_np.kernels" in graph["srigl_np"]                    # inside a function


def test_the_package_has_no_import_cycles():
    graph = import_graph(SOURCE)
    cycles = find_cycles(graph)
    assert not cycles, ("import cycles in srigl_np (push the shared code down a module):\n"
                        + "\n".join(describe(cycle, graph) for cycle in cycles))


def _reachable(graph, start):
    seen, stack = set(), [start]
    while stack:
        for target in graph.get(stack.pop(), ()):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_the_formats_wing_reaches_nothing_of_the_condensed_inference():
    """The file formats sit below inference: a condensed model is read through
    formats.npz, and no reader (a training checkpoint least of all) pulls in condensing."""
    graph = import_graph(SOURCE)
    inference = {name for name in graph if name.startswith("srigl_np.inference")}
    assert "srigl_np.inference.condensing" in inference
    formats = sorted(name for name in graph if name.startswith("srigl_np.formats"))
    assert "srigl_np.formats.npz" in formats and "srigl_np.formats.checkpoint" in formats
    for name in formats:
        assert not inference & _reachable(graph, name), name
    assert "srigl_np.formats.npz" in graph["srigl_np.inference.model_file"]


# -- the graph builder and the cycle finder on synthetic cases ------------------------------

def _write_package(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_import_graph_sees_every_import_form(tmp_path):
    _write_package(tmp_path / "pkg", {
        "__init__.py": "def version():\n    from .a import VERSION\n    return VERSION\n",
        "a.py": "import os\nimport pkg.b\nfrom pkg import c, VERSION_OF_PKG\nVERSION = 1\n",
        "b.py": "from . import c\nfrom .d import thing\n",
        "c.py": "def later():\n    from .sub.e import f\n",
        "d.py": "import numpy\nthing = 0\n",
        "sub/__init__.py": "from .. import d\nfrom . import e\n",
        "sub/e.py": "from ..d import thing\nfrom .. import a as alias\n",
        "ext.pyx": "cimport cython\n",
        "f.py": "from .ext import kernel\n",
    })
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert {name: sorted(edges) for name, edges in graph.items()} == {
        "pkg": ["pkg.a"],
        "pkg.a": ["pkg", "pkg.b", "pkg.c"],
        "pkg.b": ["pkg.c", "pkg.d"],
        "pkg.c": ["pkg.sub.e"],
        "pkg.d": [],
        "pkg.sub": ["pkg.d", "pkg.sub.e"],
        "pkg.sub.e": ["pkg.a", "pkg.d"],
        "pkg.ext": [],
        "pkg.f": ["pkg.ext"],
    }
    assert graph["pkg.c"]["pkg.sub.e"] == [2]
    # a -> b -> c -> sub.e -> a, plus a -> pkg -> a.
    assert find_cycles(graph) == [["pkg", "pkg.a", "pkg"]]
    assert describe(["pkg", "pkg.a", "pkg"], graph) == (
        "pkg -> pkg.a -> pkg\n    pkg imports pkg.a (line 2)\n    pkg.a imports pkg (line 3)")


def test_relative_import_beyond_the_package_is_refused(tmp_path):
    _write_package(tmp_path / "pkg", {"__init__.py": "", "a.py": "from ... import x\n"})
    with pytest.raises(ValueError, match="beyond the top-level package"):
        import_graph(tmp_path / "pkg", "pkg")


@pytest.mark.parametrize("graph", [
    {},
    {"a": {}},
    {"a": {"b": 1}, "b": {"c": 1}, "c": {}},
    {"a": {"b": 1, "c": 1}, "b": {"d": 1}, "c": {"d": 1}, "d": {}},    # a diamond
])
def test_find_cycles_finds_none_in_acyclic_graphs(graph):
    assert find_cycles(graph) == []
    assert all(len(c) == 1 for c in strongly_connected_components(graph))


@pytest.mark.parametrize("graph, cycles", [
    ({"a": {"a": 1}}, [["a", "a"]]),
    ({"a": {"b": 1}, "b": {"a": 1}}, [["a", "b", "a"]]),
    # The shortest way back wins over the longer a -> b -> c -> d -> a.
    ({"a": {"b": 1}, "b": {"c": 1}, "c": {"d": 1, "a": 1}, "d": {"a": 1}}, [["a", "b", "c", "a"]]),
    # Two equally short ways back: the smaller name (b) wins.
    ({"a": {"c": 1, "b": 1}, "b": {"a": 1}, "c": {"a": 1}}, [["a", "b", "a"]]),
    # A tail into a cycle, and a second, separate cycle.
    ({"t": {"x": 1}, "x": {"y": 1}, "y": {"z": 1}, "z": {"x": 1},
      "p": {"q": 1}, "q": {"p": 1}}, [["p", "q", "p"], ["x", "y", "z", "x"]]),
    # Modules named only as targets are leaves.
    ({"a": {"b": 1, "leaf": 1}, "b": {"a": 1}}, [["a", "b", "a"]]),
])
def test_find_cycles_reports_one_shortest_cycle_per_component(graph, cycles):
    assert find_cycles(graph) == cycles


def test_a_long_chain_does_not_recurse():
    chain = {f"m{i:05d}": {f"m{i + 1:05d}": 1} for i in range(5000)}
    assert find_cycles(chain) == []
    chain["m05000"] = {"m00000": 1}
    (cycle,) = find_cycles(chain)
    assert len(cycle) == 5002 and cycle[0] == cycle[-1] == "m00000"


# -- the layering: which wing may import which ------------------------------------------------
#
# The folders are the architecture (README, "A short tour"). From the ground up:
#   ground      backend, validation, fileio, cli, thread_waits, thread_policy, data, the
#               kernels
#               (kernels, _kernels, cuda, training_kernels, _training_kernels,
#               cuda_training) and the
#               trail schema (dst.trail, a leaf but for fileio's bounds on reading)
#   nn          layers, losses, optim, models: a small autograd-free training library
#   dst         the algorithm as pure functions (masks, steps, updates, invariants, the
#               authors' rules); dst.sparsity, the stateful wrapper, also sees nn
#   formats     files: .npz, checkpoints, PyTorch files, importing them
#   inference   condensed layers and models, the condense pass
#   testing     the public conformance kit, over dst
#   bench       the benchmark package
#   commands    the python -m srigl_np.X modules at the top, and model_audit: they may
#               import every wing, and one another
# A wing may import itself and the wings ALLOWED lists for it; nothing below the commands
# imports a command.

GROUND = {"backend", "validation", "fileio", "cli", "thread_waits", "thread_policy", "data",
          "kernels", "_kernels", "cuda", "training_kernels", "_training_kernels",
          "cuda_training", "dst.trail"}
WINGS = ("nn", "dst", "formats", "inference", "testing", "bench")
ALLOWED = {
    "ground": {"ground"},
    "nn": {"ground"},
    "dst": {"ground"},
    "dst.sparsity": {"ground", "nn", "dst"},
    "formats.npz": {"ground"},            # the one .npz reader: inference reads with it too
    "formats": {"ground", "nn", "formats.npz"},
    "inference": {"ground", "nn", "formats.npz"},
    "testing": {"ground", "dst"},
    "bench": {"ground", "nn", "dst", "inference"},
    "commands": {"ground", "nn", "dst", "dst.sparsity", "formats", "formats.npz",
                 "inference", "testing", "bench"},
}


def wing(module):
    """The wing of ``srigl_np.x.y`` (see above); the package face is ground."""
    name = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    if name == "" or name in GROUND or name.startswith("_"):
        return "ground"
    if name in ("dst.sparsity", "formats.npz"):
        return name
    head = name.split(".")[0]
    return head if head in WINGS else "commands"


def test_every_wing_imports_only_the_wings_below_it():
    graph = import_graph(SOURCE)
    wrong = [f"{source} ({wing(source)}) imports {target} ({wing(target)}), line "
             f"{graph[source][target][0]}"
             for source in sorted(graph) for target in sorted(graph[source])
             if wing(target) != wing(source) and wing(target) not in ALLOWED[wing(source)]]
    assert not wrong, "arrows against the layering:\n" + "\n".join(wrong)


def test_the_wings_are_where_the_layering_says():
    """Guards the layering test against a module it files in the wrong wing."""
    graph = import_graph(SOURCE)
    assert {wing(m) for m in graph} == set(ALLOWED)
    assert wing("srigl_np.dst.trail") == wing("srigl_np.kernels") == "ground"
    assert wing("srigl_np.train") == wing("srigl_np.model_audit") == "commands"
    assert wing("srigl_np.nn.layers") == "nn" and wing("srigl_np.bench.command") == "bench"


def test_the_trail_schema_imports_nothing_of_the_package():
    assert import_graph(SOURCE)["srigl_np.dst.trail"] == {}


def test_the_algorithm_sees_only_backend_and_validation():
    """dst's pure core: arrays in, arrays out; no layer, file or kernel. (The trail schema,
    a leaf that reads audit.jsonl, has its own test above.)"""
    graph = import_graph(SOURCE)
    core = [m for m in graph if m.startswith("srigl_np.dst")
            and m not in ("srigl_np.dst.sparsity", "srigl_np.dst.trail")]
    assert "srigl_np.dst.steps" in core
    for module in core:
        outside = {t for t in graph[module] if not t.startswith("srigl_np.dst")}
        assert outside <= {"srigl_np.backend", "srigl_np.validation"}, (module, outside)


def test_nothing_in_nn_imports_the_rest():
    graph = import_graph(SOURCE)
    for module in (m for m in graph if m.startswith("srigl_np.nn")):
        assert all(wing(t) in ("ground", "nn") for t in graph[module]), (module, graph[module])
