"""The dependency rule of docs/architecture.md, checked on the source: a one-way house.

Imports are read from the syntax tree (module level, inside functions and under TYPE_CHECKING alike),
so a cycle cannot hide behind a late import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ovdiff_cli"
TESTS = Path(__file__).resolve().parent
MAX_LINES = 500
CLI_SHARED = {
    "cli",
    "cli.app",
    "cli.common",
    "cli.options",
    "cli.output",
}  # the app assembles commands; the rest is shared


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The package modules `name` imports, wherever in the file the import statement is."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    here = name.split(".") if name else []
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [
                a.name.removeprefix("ovdiff_cli").lstrip(".") for a in node.names if a.name.startswith("ovdiff_cli")
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("ovdiff_cli"):
                stem = node.module.removeprefix("ovdiff_cli").lstrip(".")
            else:
                continue
            targets = [
                f"{stem}.{a.name}".lstrip(".") if f"{stem}.{a.name}".lstrip(".") in MODULES else stem
                for a in node.names
            ]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


# Paper §3's parts and the modules that hold them (docs/method.md has the same map).
ROOMS = {
    "Support set generation": ["method.stage1_support.sampling"],
    "Class prototypes": [
        "method.stage2_prototypes.features",
        "method.stage2_prototypes.masks",
        "method.stage2_prototypes.cutler",
        "method.stage2_prototypes.aggregation",
        "method.stage2_prototypes.classbuild",
        "engines.vocab",
    ],
    "Category pre-filtering": ["method.stage3_filter.prefilter"],
    "Segmentation via prototype matching": ["method.stage4_segment.matching", "method.stage4_segment.segmenter"],
}


def test_each_module_of_the_method_names_its_paper_section_first():
    for section, modules in ROOMS.items():
        for name in modules:
            first = ast.get_docstring(ast.parse(MODULES[name].read_text(encoding="utf-8"))).splitlines()[0]
            assert f'§3 "{section}"' in first, (name, first)


def test_the_import_reader_sees_every_kind_of_import():
    """The checks below are only as good as the reader: these edges exist in the source today."""
    assert "store.keys" in GRAPH["engines.vocab"]  # from .keys import … at module level
    assert "api" in GRAPH["cli.common"]  # inside a function, under TYPE_CHECKING too
    assert "models.presets" in GRAPH["types"]  # under TYPE_CHECKING only
    assert "models.store" in GRAPH["compose"] and "cli.segment" in GRAPH["cli.app"]  # from . import segment


def test_no_import_cycle_anywhere_in_the_package():
    assert cycles() == []


def test_models_import_no_stage():
    """models/ builds raw models from specs: it may use the errors, the settings (presets are typed
    configs) and itself, nothing above."""
    for name, deps in GRAPH.items():
        if name.startswith("models"):
            assert deps <= {"errors", "config", "models"} | {m for m in MODULES if m.startswith("models.")}, (
                name,
                deps,
            )


# The method's folder knows neither cache nor files: it imports no module of these folders.
NOT_FROM_METHOD = ("store", "io", "eval", "engines", "cli", "bench", "ui", "api", "compose")
# The method modules that take raw models (models/) and what they read there; the others take features and tensors.
METHOD_MODELS = {
    "method.stage2_prototypes.cutler": {"models.cutler"},  # the detector's network
    "method.beyond.dense": {"models.dense"},  # which tokens each extractor family gives
    "method.stage2_prototypes.features": {"models.sd", "models.vit"},  # the backbones' model types
    "method.stage1_support.sampling": {"models.sd"},  # Stable Diffusion's components
    "method.beyond.generators": {"models.generators"},  # the generator families
    "method.beyond.mmdit": {"models.generators"},
    "method.beyond.flux": {"models.generators"},
}


def test_the_method_imports_no_store_io_eval_engine_or_cli_module():
    for name, deps in GRAPH.items():
        if name.startswith("method"):
            bad = {d for d in deps if d.split(".")[0] in NOT_FROM_METHOD}
            assert not bad, (name, bad)


def test_the_method_takes_models_only_where_listed():
    for name, deps in GRAPH.items():
        if name.startswith("method"):
            assert {d for d in deps if d.split(".")[0] == "models"} <= METHOD_MODELS.get(name, set()), name


# The house's floors, lowest first: a module imports only its own floor or lower ones (no back arrow).
FLOORS = [
    {"errors", "version", "libs", "limits", "names", "classnames"},  # facts and rules with no dependency
    {"config"},  # the paper's defaults and settings
    {"models"},  # raw models from spec strings
    {"types"},  # the stages' interfaces
    {"method"},  # the paper's four stages and the backends beyond them
    {"io"},  # files: images, masks, legends, sheets
    {"procedural", "inputs", "results"},  # the procedural world; what the API takes and returns
    {"store", "eval"},  # the cache; benchmarks and their scoring
    {"compose", "checks"},  # settings → stages; every setting checked once
    {"engines"},  # where the method runs: folder and benchmark jobs, local and Ray
    {"ui", "bench", "doctor"},  # the web demo, the benchmark and the doctor's report, over the engines
    {"commands"},  # the calls behind the commands that are not a Pipeline's (bench, demo, doctor, serve)
    {"api"},  # the public library: what the CLI may call
    {"cli"},  # the command line
    {"", "__main__"},  # the package itself
]


def floor(name: str) -> int:
    top = name.split(".")[0]
    return next(i for i, f in enumerate(FLOORS) if top in f)


def test_every_module_has_a_floor_and_no_import_points_up():
    back = [(n, d) for n, deps in GRAPH.items() for d in deps if floor(d) > floor(n)]
    assert back == []


def test_the_library_never_imports_the_cli():
    for name, deps in GRAPH.items():
        if not name.startswith("cli") and name != "__main__":
            assert not {d for d in deps if d.startswith("cli")}, (name, deps)


CLI_MAY_IMPORT = {"api", "errors", "config"}  # the public library: what `api` exports, its errors and settings


def test_the_cli_imports_only_the_public_library():
    """cli/ parses, makes one library call and prints: it reaches the library through `api` (and its
    errors and config types) alone, never a module below it."""
    for name, deps in GRAPH.items():
        if name.startswith("cli"):
            below = {d for d in deps if not d.startswith("cli")} - CLI_MAY_IMPORT
            assert not below, (name, sorted(below))


def test_no_cli_command_imports_another_command():
    commands = {m for m in MODULES if m.startswith("cli.")} - CLI_SHARED
    for name in commands:
        assert not GRAPH[name] & commands, (name, GRAPH[name] & commands)


def test_no_module_is_over_500_lines():
    long = {
        name: n for name, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_test_reaches_into_private_names_of_another_module():
    """A test uses what a user can use: no `_name` attributes or imports (dunders are fine)."""
    offences = []
    for path in TESTS.glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                offences.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ovdiff_cli"):
                offences += [
                    f"{path.name}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and a.name not in own
                ]
    assert offences == []


def _raised_text(node: ast.Raise) -> str:
    """The literal text of the message a `raise` builds (f-string parts joined, expressions left out)."""
    parts = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            parts.append(sub.value)
    return " ".join(parts)


COMMAND = re.compile(r"(ovdiff|hf download|ray start)[^;:()]*")  # a command to run may take its own options


def test_library_errors_name_settings_not_command_line_options():
    """The library's messages say `n_images`, not `--n-images` (the CLI's `phrase` names its options); only a
    command the user can run next may carry options."""
    offences = []
    for name, path in MODULES.items():
        if name.startswith(("cli", "ui")) or name == "__main__":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = COMMAND.sub("", _raised_text(node))
                if re.search(r"(^|[\s'\"(])--[a-z]", text):
                    offences.append(f"{name}:{node.lineno} {text[:80]}")
    assert offences == []
