"""The package's import direction: core <- tasks (text, vision) <- reproduce <- entry points; never the reverse.

Walks every module of ``hf_kd`` with ``ast`` (imports inside functions included) and fails on an import
against that direction, so the architecture cannot rot silently.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# layer of a module -> the hf_kd layers it may import. "root" = hf_kd/__init__.py and hf_kd/cli.py (entry points).
ALLOWED = {
    "core": {"core"},
    "text": {"core", "text"},
    "vision": {"core", "vision"},
    "reproduce": {"core", "text", "vision", "reproduce"},
    "root": {"core", "text", "vision", "reproduce", "root"},
}
OUTSIDE = ("run_scripts", "glue_eval", "tests", "benchmarks")


def _layer(parts: tuple[str, ...]) -> str:
    """``("hf_kd", "core", "losses")`` -> ``"core"``; ``("hf_kd", "cli")`` -> ``"root"``."""
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "root"


def _imports(path: Path, package: tuple[str, ...]) -> list[tuple[int, str]]:
    """Absolute dotted names of everything ``path`` imports (relative imports resolved against ``package``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ((node.module,) if node.module else ()))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # ``from . import text`` imports a sub-package: check each name as a module too
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if not node.module]
    return out


def violations(pkg_dir: Path) -> list[str]:
    """Every import in ``pkg_dir`` (the ``hf_kd`` folder) that goes against the allowed direction."""
    bad = []
    for path in sorted(pkg_dir.rglob("*.py")):
        rel = path.relative_to(pkg_dir.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        package = rel.parts[:-1]
        layer = _layer(parts)
        for line, name in _imports(path, package):
            top = name.split(".")
            where = f"{path.relative_to(pkg_dir.parent)}:{line} imports {name}"
            if top[0] in OUTSIDE:
                bad.append(f"{where} (hf_kd never imports {top[0]})")
            elif top[0] == "hf_kd" and len(top) > 1:
                target = top[1] if top[1] in ALLOWED else "root"
                if target not in ALLOWED[layer]:
                    bad.append(f"{where} ({layer} may import only {sorted(ALLOWED[layer])})")
    return bad


def test_hf_kd_imports_follow_the_layering():
    assert violations(ROOT / "hf_kd") == []


def test_the_package_has_the_four_layers():
    for sub in ("core", "text", "vision", "reproduce"):
        init = ROOT / "hf_kd" / sub / "__init__.py"
        assert init.is_file(), sub
        assert "May import" in ast.get_docstring(ast.parse(init.read_text())), f"{sub}/__init__.py states its imports"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = tmp_path / "hf_kd" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path / "hf_kd"


def test_checker_catches_each_forbidden_direction(tmp_path):
    pkg = _tree(tmp_path, {
        "__init__.py": "from .text.trainer import T\n",
        "core/__init__.py": "",
        "core/losses.py": "def f():\n    from ..text import trainer\n",            # core -> task (lazy import)
        "core/cost.py": "import hf_kd.vision.loop\n",                              # core -> task (absolute)
        "text/__init__.py": "",
        "text/trainer.py": "from ..vision.data import D\nfrom ..core.losses import f\n",  # task -> other task
        "vision/__init__.py": "",
        "vision/data.py": "from hf_kd.reproduce import report\n",                  # task -> reproduce
        "vision/loop.py": "from run_scripts.run_resnet_kd import main\n",          # library -> script
        "reproduce/__init__.py": "from ..text import trainer\nfrom ..vision import data\n",  # allowed
    })
    found = violations(pkg)
    assert len(found) == 5, found
    for needle in ("core/losses.py:2 imports hf_kd.text", "core/cost.py:1 imports hf_kd.vision.loop",
                   "text/trainer.py:1 imports hf_kd.vision.data", "vision/data.py:1 imports hf_kd.reproduce",
                   "vision/loop.py:1 imports run_scripts"):
        assert any(needle in f for f in found), (needle, found)


def _module_files(pkg_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the ``hf_kd`` folder ``pkg_dir``."""
    out = {}
    for path in pkg_dir.rglob("*.py"):
        rel = path.relative_to(pkg_dir.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def import_graph(pkg_dir: Path) -> dict[str, set[str]]:
    """Module -> the ``hf_kd`` modules it imports (imports inside functions included) within its own sub-package."""
    files = _module_files(pkg_dir)
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_init = path.name == "__init__.py"
        package = tuple(mod.split(".")) if is_init else tuple(mod.split(".")[:-1])
        sub = mod.split(".")[:2]
        edges = set()
        for _, name in _imports(path, package + ("x",) if is_init else package):
            # ``from .a import b``: b may be a module (a.b) or a name in module a
            for target in (name, name.rsplit(".", 1)[0]):
                if target in files and target != mod and target.split(".")[:2] == sub and len(sub) == 2:
                    edges.add(target)
                    break
        graph[mod] = edges
    return graph


def cycles(pkg_dir: Path) -> list[list[str]]:
    """Import cycles inside any sub-package of ``pkg_dir`` (each as the list of modules around it)."""
    graph, found, state = import_graph(pkg_dir), [], {}

    def visit(mod: str, stack: list[str]) -> None:
        state[mod] = "open"
        for nxt in sorted(graph[mod]):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[mod] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    return found


def test_no_import_cycle_inside_any_sub_package():
    assert cycles(ROOT / "hf_kd") == []


def test_checker_catches_a_cycle_through_an_import_inside_a_function(tmp_path):
    pkg = _tree(tmp_path, {
        "__init__.py": "",
        "reproduce/__init__.py": "",
        "reproduce/jobs.py": "from .calibrate import cost\n",
        "reproduce/calibrate.py": "def cost():\n    from . import text\n",
        "reproduce/text.py": "def run():\n    from .jobs import execute\n",
        "reproduce/report.py": "from .calibrate import cost\n",  # no cycle through report
    })
    assert cycles(pkg) == [["hf_kd.reproduce.calibrate", "hf_kd.reproduce.text", "hf_kd.reproduce.jobs",
                            "hf_kd.reproduce.calibrate"]]


# The protocol side of hf-kd reproduce talks to a task only through protocol.TaskBackend.
TASK_INDEPENDENT = ("protocol", "run", "jobs", "calibrate", "table", "report", "findings", "study", "presets")
TASK_MODULES = ("hf_kd.text", "hf_kd.vision", "hf_kd.reproduce.text", "hf_kd.reproduce.vision",
                "hf_kd.reproduce.corpus")


def test_reproduce_protocol_modules_import_no_task():
    bad = []
    for name in TASK_INDEPENDENT:
        path = ROOT / "hf_kd" / "reproduce" / f"{name}.py"
        for line, mod in _imports(path, ("hf_kd", "reproduce")):
            if any(mod == t or mod.startswith(t + ".") for t in TASK_MODULES):
                bad.append(f"reproduce/{name}.py:{line} imports {mod}")
    assert bad == []
