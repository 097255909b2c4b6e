"""The import arrows point one way (issue 11, item 4).

Two views of the same rules: the static import graph, parsed with `ast` from every file
(a lazy import inside a function is an arrow too), and what a fresh interpreter really
loads when it imports each package alone. Each rule is a function over (importer,
imported) edges, and each is shown to catch a crafted breach, so none is a check that
cannot fail.

The rules:
- `app.core` imports no domain package: only itself (and libraries);
- `app` never imports `worker` (the worker is a client of app). One exception: the
  `finetune worker` command, app.cli, starts the consumer through worker.main;
- `app.datasets` does not read the jobs table (`app.jobs.models`): it asks
  app.jobs.service.dataset_in_use;
- `app.registry` (models, the report, export) does not import `app.predictions`: predict
  is its own package, built on the registry, never the reverse; and `app.predictions`
  reads a model's row through app.registry.service, not the table (`app.registry.models`);
- `app.training` (the engine) imports neither FastAPI, Celery, kombu, SQLAlchemy nor
  Alembic, and nothing of `app` outside `app.training`.
"""

import ast
import json
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
Edge = tuple[str, str]  # (importer module, imported module)

ALLOWED_WORKER_IMPORTS = {("app.cli", "worker.main")}
WEB_AND_QUEUE_LIBRARIES = ("fastapi", "starlette", "celery", "kombu", "sqlalchemy", "alembic")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Every module a file's source imports, anywhere in it. `from a.b import c` is an
    arrow to a.b.c when that is a module, else to a.b."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found


def import_graph(root: Path, packages: Iterable[str] = ("app", "worker")) -> set[Edge]:
    files = [p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))]
    known = {module_name(p, root) for p in files}
    edges: set[Edge] = set()
    for path in files:
        name = module_name(path, root)
        targets = imports_of(path.read_text(), name, path.name == "__init__.py", known)
        edges.update((name, target) for target in targets)
    return edges


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def core_imports_no_domain(edges: Iterable[Edge]) -> list[Edge]:
    return [
        (a, b)
        for a, b in edges
        if within(a, "app.core") and within(b, "app") and not within(b, "app.core")
    ]


def app_never_imports_worker(edges: Iterable[Edge]) -> list[Edge]:
    return [
        (a, b)
        for a, b in edges
        if within(a, "app") and within(b, "worker") and (a, b) not in ALLOWED_WORKER_IMPORTS
    ]


def datasets_ask_jobs_by_function(edges: Iterable[Edge]) -> list[Edge]:
    return [(a, b) for a, b in edges if within(a, "app.datasets") and within(b, "app.jobs.models")]


def registry_does_not_import_predict(edges: Iterable[Edge]) -> list[Edge]:
    return [(a, b) for a, b in edges if within(a, "app.registry") and within(b, "app.predictions")]


def predict_asks_the_registry_by_function(edges: Iterable[Edge]) -> list[Edge]:
    return [
        (a, b)
        for a, b in edges
        if within(a, "app.predictions")
        and within(b, "app.registry")
        and not within(b, "app.registry.service")
    ]


def engine_is_pure(edges: Iterable[Edge]) -> list[Edge]:
    def forbidden(b: str) -> bool:
        if within(b, "app"):
            return not within(b, "app.training")
        return b.split(".")[0] in WEB_AND_QUEUE_LIBRARIES or within(b, "worker")

    return [(a, b) for a, b in edges if within(a, "app.training") and forbidden(b)]


RULES: dict[str, Callable[[Iterable[Edge]], list[Edge]]] = {
    "core imports no domain package": core_imports_no_domain,
    "app never imports worker": app_never_imports_worker,
    "datasets ask jobs by function, not its table": datasets_ask_jobs_by_function,
    "the registry does not import predict": registry_does_not_import_predict,
    "predict asks the registry by function, not its table": predict_asks_the_registry_by_function,
    "the engine imports no web, queue or SQL, and no app outside app.training": engine_is_pure,
}


@pytest.fixture(scope="module")
def graph() -> set[Edge]:
    return import_graph(ROOT)


def test_the_graph_is_read(graph):
    # A parser that found nothing would pass every rule: these arrows exist today.
    assert ("worker.tasks", "app.jobs.queue") in graph
    assert ("app.jobs.router", "app.jobs.queue") in graph
    assert ("app.training.api", "app.training.errors") in graph
    assert ("app.cli", "worker.main") in graph  # a lazy import, inside a function
    assert ("app.predictions.service", "app.registry.service") in graph


@pytest.mark.parametrize("rule", RULES)
def test_rule_holds(graph, rule):
    assert RULES[rule](graph) == [], f"broken: {rule}"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, source in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    for pkg in ("app", "worker"):
        (tmp_path / pkg).mkdir(exist_ok=True)
    return tmp_path


BREACHES = {
    "core imports no domain package": (
        {"app/core/deps.py": "from app.auth.models import Owner\n"},
        ("app.core.deps", "app.auth.models"),
    ),
    "app never imports worker": (
        {"app/jobs/router.py": "def f():\n    from worker.queue import send\n"},
        ("app.jobs.router", "worker.queue"),
    ),
    "datasets ask jobs by function, not its table": (
        {"app/datasets/service.py": "from app.jobs import models\n", "app/jobs/models.py": ""},
        ("app.datasets.service", "app.jobs.models"),
    ),
    "the registry does not import predict": (
        {"app/registry/router.py": "from app.predictions.service import ModelCache\n"},
        ("app.registry.router", "app.predictions.service"),
    ),
    "predict asks the registry by function, not its table": (
        {"app/predictions/service.py": "from ..registry.models import Model\n"},
        ("app.predictions.service", "app.registry.models"),
    ),
    "the engine imports no web, queue or SQL, and no app outside app.training": (
        {"app/training/loop.py": "from ..core import db\nimport sqlalchemy.orm\n"},
        ("app.training.loop", "app.core"),
    ),
}


@pytest.mark.parametrize("rule", RULES)
def test_rule_catches_a_breach(tmp_path, rule):
    files, edge = BREACHES[rule]
    broken = import_graph(_tree(tmp_path, files))
    assert edge in RULES[rule](broken)


def test_the_engine_rule_sees_libraries():
    assert engine_is_pure({("app.training.loop", "sqlalchemy.orm")}) != []
    assert engine_is_pure({("app.training.loop", "celery")}) != []
    assert engine_is_pure({("app.training.loop", "torch.nn")}) == []


def test_the_one_allowed_worker_import_is_the_only_one():
    assert app_never_imports_worker({("app.cli", "worker.main")}) == []
    assert app_never_imports_worker({("app.cli", "worker.tasks")}) != []
    assert app_never_imports_worker({("app.main", "worker.main")}) != []


# Each package imported alone, in a fresh interpreter: every one of its modules, in
# order, and then what got loaded. Catches a cycle that only works in one import order,
# and checks the rules on what Python really loaded.
PROBE = """
import importlib, json, pkgutil, sys
name = sys.argv[1]
pkg = importlib.import_module(name)
mods = [name]
if hasattr(pkg, "__path__"):
    mods += [m.name for m in pkgutil.walk_packages(pkg.__path__, name + ".")]
for m in mods:
    importlib.import_module(m)
print(json.dumps({"modules": mods, "loaded": sorted(sys.modules)}))
"""

PACKAGES = [
    "app.core",
    "app.auth",
    "app.storage",
    "app.training",
    "app.datasets",
    "app.jobs",
    "app.registry",
    "app.predictions",
    "app.webhooks",
    "app.ops",
    "app.web",
    "app.client",
    "app.main",
    "app.tables",
    "worker",
]


@pytest.fixture(scope="module")
def loaded() -> dict[str, dict]:
    # One process per package, all at once (each pays for its own torch/fastapi import).
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", PROBE, name],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in PACKAGES
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"import {name} alone failed:\n{err[-3000:]}"
        results[name] = json.loads(out.splitlines()[-1])
    return results


# ~2 s of CPU a package (torch, FastAPI): slow; the ast rules above take milliseconds.
@pytest.mark.slow
@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_alone(loaded, package):
    result = loaded[package]
    assert package in result["modules"]
    loaded_modules = set(result["loaded"])
    if within(package, "app"):
        assert not [m for m in loaded_modules if within(m, "worker")], package
    if package == "app.core":
        domain = [m for m in loaded_modules if within(m, "app") and m != "app"]
        assert all(within(m, "app.core") for m in domain), domain
    if package == "app.training":
        libs = {m.split(".")[0] for m in loaded_modules} & set(WEB_AND_QUEUE_LIBRARIES)
        outside = [m for m in loaded_modules if within(m, "app") and m != "app"]
        assert not libs, libs
        assert all(within(m, "app.training") for m in outside), outside
