"""Structure checks: no import cycles, and light modules stay free of heavy libraries.

Light modules (data handling, metrics, configs, task definitions...) are imported by CLIs, tests
and Ray workers that must start fast and must not drag TensorFlow, Ray or MLflow in with them.
A single stray import, even one inside a function or under ``if TYPE_CHECKING:``, silently
breaks that, so these checks read the source statically (``ast``) and then confirm at runtime.

Only the standard library is used, and TensorFlow is never imported in the test process.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections import deque
from functools import lru_cache
from pathlib import Path

# Modules that must never import Ray, MLflow or TensorFlow/Keras, directly or through any internal
# module they import. An entry covers the module of that name and every module under it.
LIGHT = (
    "orchestrator.data",  # the whole package: every module whose name starts with this
    "orchestrator.metrics",
    "orchestrator.train.config",
    "orchestrator.errors",
    "orchestrator.naming",
    "orchestrator.models.backbones",
    "orchestrator.models.heads",
    "orchestrator.train.schedules",
    "orchestrator.train.augmentations",
    "orchestrator.train.artifacts",
    "orchestrator.tta.policies",
    "orchestrator.tta.sizing",
    "orchestrator.ensemble.selection",
    "orchestrator.ensemble.choice",
    "orchestrator.clinical.bootstrap",
    "orchestrator.clinical.calibration",
    "orchestrator.clinical.operating_point",
    "orchestrator.clinical.resampled_metrics",
    "orchestrator.clinical.weighted_metrics",
    "orchestrator.clinical.referral",
    "orchestrator.clinical.ood",
    "orchestrator.clinical.options",
    "orchestrator.clinical.conformal",
    "orchestrator.clinical.sections",
    "orchestrator.clinical.answer_sections",
    "orchestrator.clinical.evaluated",
    "orchestrator.clinical.patients",
    "orchestrator.clinical.patient_sections",
    "orchestrator.clinical.external",  # an external evaluation's maths, its report, transport
    "orchestrator.clinical.external_sections",
    "orchestrator.clinical.transport",
    "orchestrator.serving",  # the whole package: the served model's contract and card
    "orchestrator.keys",  # the MLflow tag keys, which the card names too
    "orchestrator.fake_cluster",  # cluster.yaml as the fake provider's config: dicts only
    "tasks",  # the whole package
)
HEAVY = {"ray", "mlflow", "tensorflow", "keras"}

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "tasks", "search_spaces")


# --------------------------------------------------------------------------------------------
# Import-graph builder
# --------------------------------------------------------------------------------------------


def _module_name(root: Path, path: Path) -> str:
    """Dotted module name of a source file: ``pkg/sub/__init__.py`` -> ``pkg.sub``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _parse_modules(root: Path, packages: tuple[str, ...]) -> dict[str, tuple[ast.AST, bool]]:
    """Every module under ``root/<pkg>`` as ``name -> (ast, is_package)``."""
    modules: dict[str, tuple[ast.AST, bool]] = {}
    for pkg in packages:
        base = root / pkg
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            modules[_module_name(root, path)] = (tree, path.name == "__init__.py")
    return modules


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """Absolute name of the ``X`` in ``from X import Y``, resolving ``level`` like Python does.

    The anchor of a relative import is the importing module's package: the module itself for an
    ``__init__.py``, its parent otherwise.
    """
    if node.level == 0:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    if node.module:
        parts.append(node.module)
    return ".".join(parts)


@lru_cache(maxsize=None)
def _imports(
    root: Path, packages: tuple[str, ...]
) -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, set[str]]]:
    """Internal edges, external top-level names and dangling internal imports per module, from
    one walk of each AST."""
    modules = _parse_modules(root, packages)
    known = set(modules)

    def internal(name: str) -> bool:
        return name.split(".")[0] in packages

    def longest_known_prefix(name: str) -> str | None:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in known:
                return candidate
        return None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    external: dict[str, set[str]] = {name: set() for name in modules}
    dangling: dict[str, set[str]] = {name: set() for name in modules}
    for name, (tree, is_package) in modules.items():
        edges, ext, missing = graph[name], external[name], dangling[name]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if internal(alias.name):
                        target = longest_known_prefix(alias.name)
                        if target:
                            edges.add(target)
                        if target != alias.name:
                            missing.add(alias.name)
                    else:
                        ext.add(alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                source = _resolve_from(name, is_package, node)
                if not source:
                    continue
                if node.level == 0 and not internal(source):
                    ext.add(source.split(".")[0])
                    continue
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if alias.name != "*" and submodule in known:
                        edges.add(submodule)
                    elif source in known:
                        edges.add(source)
                    else:
                        missing.add(source)
        edges.discard(name)
    return graph, external, dangling


def module_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Internal import graph: module -> internal modules it imports anywhere in its source.

    Imports inside functions, methods and ``if TYPE_CHECKING:`` blocks count: a cycle or a heavy
    import there still bites the moment that code runs. Importing ``a.b.c`` adds an edge to
    ``a.b.c`` only, not to ``a`` and ``a.b``: Python does run the parent ``__init__`` modules,
    but cycles are judged on the explicit edges, so a package's ``__init__`` re-exporting its
    submodules is not reported as a cycle with every submodule that imports a sibling.
    """
    return _imports(root, packages)[0]


def external_imports(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Per module, the top-level names of the non-internal modules it imports anywhere."""
    return _imports(root, packages)[1]


def dangling_imports(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Per module, the internal names it imports that are no module of ``root``.

    The graph can only hold edges to modules that exist, so an import of a moved module, or of a
    folder without ``__init__.py``, would otherwise vanish from it, and with it whatever heavy
    library lies behind that import.
    """
    return _imports(root, packages)[2]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan), sorted."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph.get(start, ())))]
        index[start] = lowlink[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, pending = work[-1]
            if pending:
                child = pending.pop()
                if child not in index:
                    index[child] = lowlink[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, sorted(graph.get(child, ()))))
                elif child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
                continue
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
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Modules transitively imported from ``start`` (``start`` itself only if on a cycle)."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def import_chain(graph: dict[str, set[str]], start: str, target: str) -> list[str]:
    """A shortest import path ``start -> ... -> target``, for readable failure messages."""
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node == target:
            chain = [node]
            while parent[chain[-1]] is not None:
                chain.append(parent[chain[-1]])  # type: ignore[arg-type]
            return chain[::-1]
        for child in sorted(graph.get(node, ())):
            if child not in parent:
                parent[child] = node
                queue.append(child)
    return []


def _matches(entry: str, module: str) -> bool:
    return module == entry or module.startswith(entry + ".")


def light_modules(graph: dict[str, set[str]]) -> list[str]:
    """The real modules covered by ``LIGHT``."""
    return sorted(m for m in graph if any(_matches(entry, m) for entry in LIGHT))


# --------------------------------------------------------------------------------------------
# The checker itself, on fake packages
# --------------------------------------------------------------------------------------------


def _write_package(root: Path, files: dict[str, str]) -> None:
    package = root / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in files.items():
        (package / name).write_text(source)


def test_checker_finds_a_deliberate_cycle(tmp_path: Path) -> None:
    """The cycle a -> b -> c -> a uses a top-level, a function-local and a relative import; the
    checker must see all three, or it would miss real cycles of those kinds."""
    cyclic = tmp_path / "cyclic"
    cyclic.mkdir()
    _write_package(
        cyclic,
        {
            "a.py": "from fakepkg import b\n",
            "b.py": "def f():\n    from fakepkg.c import g\n",
            "c.py": "from . import a\n\ndef g():\n    pass\n",
            "d.py": "import os\n\ndef load():\n    import tensorflow as tf\n    return tf\n",
        },
    )
    graph = module_graph(cyclic, ("fakepkg",))
    assert graph["fakepkg.a"] == {"fakepkg.b"}
    assert graph["fakepkg.b"] == {"fakepkg.c"}
    assert graph["fakepkg.c"] == {"fakepkg.a"}
    assert graph["fakepkg.d"] == set()
    assert find_cycles(graph) == [["fakepkg.a", "fakepkg.b", "fakepkg.c"]]
    assert reachable(graph, "fakepkg.a") == {"fakepkg.a", "fakepkg.b", "fakepkg.c"}
    assert reachable(graph, "fakepkg.d") == set()

    external = external_imports(cyclic, ("fakepkg",))
    assert external["fakepkg.d"] == {"os", "tensorflow"}
    assert external["fakepkg.a"] == set()

    acyclic = tmp_path / "acyclic"
    acyclic.mkdir()
    _write_package(
        acyclic,
        {
            "a.py": "from fakepkg import b\n",
            "b.py": "def f():\n    from fakepkg.c import g\n",
            "c.py": "import json\n\ndef g():\n    pass\n",
            "d.py": "from .a import b\n",
        },
    )
    graph = module_graph(acyclic, ("fakepkg",))
    assert find_cycles(graph) == []
    assert reachable(graph, "fakepkg.d") == {"fakepkg.a", "fakepkg.b", "fakepkg.c"}


def test_checker_resolves_relative_imports_in_packages(tmp_path: Path) -> None:
    """In an ``__init__.py`` ``from . import x`` is relative to the package itself, and
    ``from .. import y`` climbs one level; getting this wrong misplaces edges."""
    package = tmp_path / "fakepkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "top.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import leaf\nfrom .. import top\n")
    (package / "sub" / "leaf.py").write_text(
        "from ..top import thing\n"
        "import fakepkg.sub.missing.deeper\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import ray.tune\n"
    )
    graph = module_graph(tmp_path, ("fakepkg",))
    assert graph["fakepkg.sub"] == {"fakepkg.sub.leaf", "fakepkg.top"}
    assert graph["fakepkg.sub.leaf"] == {"fakepkg.top", "fakepkg.sub"}
    assert external_imports(tmp_path, ("fakepkg",))["fakepkg.sub.leaf"] == {"typing", "ray"}
    assert find_cycles(graph) == [["fakepkg.sub", "fakepkg.sub.leaf"]]
    assert dangling_imports(tmp_path, ("fakepkg",))["fakepkg.sub.leaf"] == {
        "fakepkg.sub.missing.deeper"
    }
    assert dangling_imports(tmp_path, ("fakepkg",))["fakepkg.sub"] == set()


# --------------------------------------------------------------------------------------------
# The real repository
# --------------------------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    """Cycles make import order matter and break as soon as someone touches a top-level import."""
    cycles = find_cycles(module_graph(REPO_ROOT, PACKAGES))
    assert not cycles, "import cycles found:\n" + "\n".join(
        f"  {i}. " + " <-> ".join(cycle) for i, cycle in enumerate(cycles, 1)
    )


def test_internal_imports_resolve() -> None:
    """Every internal import names a real module, or the package it imports from exists.

    Not only a broken import: the graph drops what it cannot resolve, so a dangling import would
    also hide a heavy library from ``test_light_modules_import_no_heavy_library``.
    """
    dangling = dangling_imports(REPO_ROOT, PACKAGES)
    found = [
        f"  {module}: {name}" for module, names in sorted(dangling.items()) for name in sorted(names)
    ]
    assert not found, "internal imports of modules that do not exist:\n" + "\n".join(found)


def test_light_modules_import_no_heavy_library() -> None:
    """A light module must not import a heavy library, nor any internal module that does."""
    graph = module_graph(REPO_ROOT, PACKAGES)
    external = external_imports(REPO_ROOT, PACKAGES)

    # Part 1: every LIGHT entry still names real modules, so a rename cannot empty the check.
    unmatched = [entry for entry in LIGHT if not any(_matches(entry, m) for m in graph)]

    # Part 2: nothing light reaches a heavy library.
    violations = []
    for light in light_modules(graph):
        for module in sorted({light} | reachable(graph, light)):
            for library in sorted(external[module] & HEAVY):
                chain = " -> ".join(import_chain(graph, light, module))
                violations.append(f"  {light}: {module} imports {library}  (via {chain})")

    problems = []
    if unmatched:
        problems.append(
            "LIGHT entries that match no module (renamed or not created yet?):\n"
            + "\n".join(f"  {entry}" for entry in unmatched)
        )
    if violations:
        problems.append("light modules that reach a heavy library:\n" + "\n".join(violations))
    assert not problems, "\n".join(problems)


def test_light_modules_load_without_heavy_libraries() -> None:
    """Runtime double-check in a fresh interpreter: also catches what the static check cannot
    see, such as parent ``__init__`` modules and ``importlib`` calls."""
    modules = light_modules(module_graph(REPO_ROOT, PACKAGES))
    assert modules, "no light module found"
    # Each import is tried on its own, so one broken module does not hide what the others load.
    code = (
        "import importlib, sys, traceback\n"
        "failed = 0\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed += 1\n"
        "        print(f'--- {name}:', traceback.format_exc(limit=-1), file=sys.stderr)\n"
        f"print(sorted(name for name in sys.modules if name.split('.')[0] in {sorted(HEAVY)!r}))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"the import subprocess printed nothing:\n{result.stderr}"
    loaded = ast.literal_eval(lines[-1])
    problems = []
    if result.returncode != 0:
        problems.append(f"some light modules failed to import:\n{result.stderr}")
    if loaded:
        libraries = sorted({name.split(".")[0] for name in loaded})
        problems.append(
            f"importing the light modules loaded heavy libraries {libraries} "
            f"({len(loaded)} modules, e.g. {loaded[:5]})"
        )
    assert not problems, "\n".join(problems)


# The module every trial process loads before it trains (Tune unpickles the trainable from it).
# MLflow is the driver's alone (trials report to Tune; the driver's callback writes the runs),
# so importing it, or the data-preparation stack (scikit-learn), there only adds seconds to each
# process start: on 2 cores it took a trial process 3.2 s to load this module with them, 1 s
# without.
TRIAL_ENTRY = "orchestrator.sweep.trainable"


def test_the_trial_process_entry_never_reaches_mlflow() -> None:
    graph = module_graph(REPO_ROOT, PACKAGES)
    external = external_imports(REPO_ROOT, PACKAGES)
    assert TRIAL_ENTRY in graph
    reached = [
        " -> ".join(import_chain(graph, TRIAL_ENTRY, module))
        for module in sorted({TRIAL_ENTRY} | reachable(graph, TRIAL_ENTRY))
        if "mlflow" in external[module]
    ]
    assert not reached, "the trial process would import MLflow:\n" + "\n".join(reached)


def test_the_trial_process_entry_loads_neither_mlflow_nor_scikit_learn() -> None:
    code = (f"import sys, {TRIAL_ENTRY}\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & "
            "{'mlflow', 'sklearn', 'matplotlib', 'tensorflow'}))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert ast.literal_eval(result.stdout.strip().splitlines()[-1]) == []


# --------------------------------------------------------------------------------------------
# Facts in one place
# --------------------------------------------------------------------------------------------

TAG_KEY_PREFIXES = ("medsweep.", "mlflow.parentRunId", "mlflow.note.")
KEYS_MODULE = REPO_ROOT / "orchestrator" / "keys.py"


def _string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_every_mlflow_tag_key_is_written_in_the_keys_module_only() -> None:
    """A tag key spelled out elsewhere can drift from its reader's spelling."""
    found = [f"  {path.relative_to(REPO_ROOT)}:{line}: {text!r}"
             for pkg in PACKAGES for path in sorted((REPO_ROOT / pkg).rglob("*.py"))
             if path != KEYS_MODULE
             for line, text in _string_literals(path) if text.startswith(TAG_KEY_PREFIXES)]
    assert not found, "tag keys outside orchestrator/keys.py:\n" + "\n".join(found)
    assert any(text.startswith("medsweep.") for _, text in _string_literals(KEYS_MODULE))


def test_the_default_positive_class_is_resolved_in_one_place() -> None:
    """`tasks.base.positive_column` alone turns an unnamed positive class into index 1."""
    pattern = re.compile(r"\b1 if \w*\.?positive_index is None\b")
    found = [f"  {path.relative_to(REPO_ROOT)}:{n}: {line.strip()}"
             for pkg in PACKAGES for path in sorted((REPO_ROOT / pkg).rglob("*.py"))
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if pattern.search(line)]
    assert not found, "the default positive class resolved again:\n" + "\n".join(found)


# --------------------------------------------------------------------------------------------
# The package root reads as the stages plus a few shared utilities
# --------------------------------------------------------------------------------------------

# Shared by several stages (or a `python -m` entry point whose code lives in a stage).
ROOT_MODULES = {"cluster", "console", "errors", "fake_cluster", "keys", "metrics", "naming",
                "predict", "weights"}


def test_the_package_root_holds_the_stages_and_a_few_shared_modules() -> None:
    """A module that belongs to one stage lives in that stage's package."""
    root = REPO_ROOT / "orchestrator"
    modules = {p.stem for p in root.glob("*.py")} - {"__init__"}
    assert modules == ROOT_MODULES, (
        f"new at the root: {sorted(modules - ROOT_MODULES)} (move it into its stage); "
        f"gone: {sorted(ROOT_MODULES - modules)}")
    for stage in ("data", "models", "train", "sweep", "tta", "ensemble", "clinical", "serving",
                  "tracking"):
        assert (root / stage / "__init__.py").is_file(), stage


# --------------------------------------------------------------------------------------------
# Heads are the one path
# --------------------------------------------------------------------------------------------

# Where a task's heads are defined (the task records, the readers that take them from the data),
# where its model's outputs are laid out and built, and where the served spec's two formats
# meet: a branch on the task's shape belongs here. Every later stage loops over heads.
HEADS_BOUNDARY = ("tasks", "orchestrator.data", "orchestrator.models",
                  "orchestrator.train.outputs", "orchestrator.clinical.heads",
                  "orchestrator.clinical.evaluated",
    "orchestrator.clinical.patients",
    "orchestrator.clinical.patient_sections", "orchestrator.serving.contract")
MAX_SHAPE_BRANCHES = 10  # outside the boundary: the metric sets and layouts that differ


def _shape_branches(tree: ast.AST) -> list[int]:
    """Lines of the conditions (`if`, `x if c else y`, `bool(...)`, comprehension filters)
    that read `is_multihead` or `.heads`: a loop over the heads is no branch."""
    def reads_shape(node: ast.AST) -> bool:
        return any(isinstance(n, ast.Attribute) and n.attr in ("is_multihead", "heads")
                   for n in ast.walk(node))

    lines = []
    for node in ast.walk(tree):
        tests = ([node.test] if isinstance(node, (ast.If, ast.IfExp, ast.While))
                 else node.ifs if isinstance(node, ast.comprehension)
                 else node.args if isinstance(node, ast.Call)
                 and getattr(node.func, "id", "") == "bool" else [])
        lines += [t.lineno for t in tests if reads_shape(t)]
    return lines


def test_few_stages_branch_on_the_number_of_heads() -> None:
    found = [f"  {name}:{line}" for name, (tree, _) in sorted(
                 _parse_modules(REPO_ROOT, ("orchestrator",)).items())
             if not any(name == b or name.startswith(b + ".") for b in HEADS_BOUNDARY)
             for line in _shape_branches(tree)]
    assert len(found) <= MAX_SHAPE_BRANCHES, (
        f"{len(found)} branches on a task's heads outside where they are defined (at most "
        f"{MAX_SHAPE_BRANCHES}); loop over `Task.output_heads` or the stage's heads instead:\n"
        + "\n".join(found))


def test_the_shape_branch_counter_sees_a_branch_and_not_a_loop() -> None:
    tree = ast.parse("if task.is_multihead:\n    pass\nfor h in task.heads:\n    pass\n"
                     "x = a if spec.heads else b\n")
    assert _shape_branches(tree) == [1, 5]
