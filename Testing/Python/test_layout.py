"""The library's house plan, read from its source: subpackages by pipeline stage that import only the stages
before them (so no import circle can form), no Slicer or Qt inside, and no module over about 500 lines."""
from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "PromptSegLib"
LEAVES = ("cpus", "errors", "heap", "metrics", "notes")
"""Top-level modules that import nothing of the library; every stage may use them."""
STAGES = ("io", "text", "preprocessing", "models", "segment", "export", "dicom", "workflows", "train", "propagate",
          "prognosis", "cohort", "cli")
"""The subpackages in order: each may import itself, the leaves and those before it."""
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    return {".".join(("PromptSegLib", *p.relative_to(LIBRARY).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in LIBRARY.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every absolute name a module imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the library imports absolutely)"
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_every_module_sits_in_a_stage_or_is_a_leaf():
    for module in _modules():
        part = module.split(".")[1:]
        assert not part or part[0] in STAGES + LEAVES + ("__main__",), f"{module} belongs to no stage"


def test_stages_import_only_earlier_stages():
    modules = _modules()
    order = {stage: i for i, stage in enumerate(STAGES)}
    wrong = []
    for module, path in modules.items():
        own = _stage(module)
        for name in _imports(path):
            if name not in modules or name == "PromptSegLib":
                continue
            other = _stage(name)
            if other in LEAVES:
                assert own not in LEAVES or other == own, f"leaf {module} imports {name}"
                continue
            if own in LEAVES or (own in order and order[other] > order[own]):
                wrong.append(f"{module} -> {name}")
    assert not wrong, "imports against the stage order:\n" + "\n".join(wrong)


def test_no_import_circle_between_modules():
    modules = _modules()
    graph = {m: {n for n in _imports(p) if n in modules and n != m and not m.startswith(n + ".")}
             for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, "import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_no_slicer_or_qt_in_the_library():
    for module, path in _modules().items():
        top = {name.split(".")[0] for name in _imports(path)}
        assert not top & {"slicer", "qt", "ctk", "vtk", "PromptSeg", "PromptSegSlicer"}, module


def test_modules_stay_small():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
