"""What a Slicer extension build and install need from the module: it imports without torch (Slicer starts before
the dependencies are installed), installs the library's requirements without moving Slicer's own packages, and
its CMakeLists.txt lists every script and installs every file the PromptSegLib wheel ships."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "PromptSeg"


def test_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, %r)\n"
            "import PromptSegSlicer\n"
            "assert 'torch>=2.2' in PromptSegSlicer.dependencies.missingDependencies()\n"
            "assert not any(m.startswith('PromptSegLib') for m in sys.modules)\n"
            "print('ok')" % str(MODULE_DIR))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
    # PromptSeg.py and its panel mixins never import torch or PromptSegLib at the top level
    for path in [MODULE_DIR / "PromptSeg.py", *(MODULE_DIR / "PromptSegWidgets").glob("*.py")]:
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] in {"torch", "monai", "PromptSegLib"}], path.name


def test_install_requirements_match_the_library_and_keep_slicers_packages(logic, tmp_path):
    """The module installs what pyproject.toml says PromptSegLib needs, with Slicer's numpy and SimpleITK
    pinned to the versions installed (pip may not move them)."""
    import importlib.metadata
    import tomllib

    from PromptSegSlicer import dependencies as module

    project = tomllib.loads((MODULE_DIR.parent / "pyproject.toml").read_text())["project"]
    slicer_owned = {"numpy", "SimpleITK"}
    expected = {r for r in project["dependencies"] if r.split(">")[0].split("=")[0] not in slicer_owned}
    assert set(module.REQUIRED_PACKAGES.values()) == expected
    arguments = module.pipInstallArguments(["monai>=1.4"], tmp_path / "constraints.txt")
    assert arguments == ["monai>=1.4", "-c", str(tmp_path / "constraints.txt")]
    pins = (tmp_path / "constraints.txt").read_text().split()
    assert f"numpy=={importlib.metadata.version('numpy')}" in pins
    assert f"SimpleITK=={importlib.metadata.version('SimpleITK')}" in pins


def test_cmake_lists_every_module_script():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    for path in MODULE_DIR.rglob("*.py"):
        if "__pycache__" not in path.parts:
            relative = path.relative_to(MODULE_DIR).as_posix()
            relative = "${MODULE_NAME}.py" if relative == "PromptSeg.py" else relative
            assert relative in cmake, f"{relative} is not in PromptSeg/CMakeLists.txt"
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui",
                     "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)"):
        assert resource in cmake


def _globbed(files: list[str], patterns: list[str]) -> set[str]:
    """The ``files`` (paths relative to one folder) that a glob pattern picks, ``*`` not crossing a ``/`` (as
    CMake's ``file(GLOB)`` and setuptools' package-data do)."""
    import fnmatch

    return {f for f in files for pattern in patterns
            if fnmatch.fnmatchcase(f, pattern) and f.count("/") == pattern.count("/")}


def test_cmake_installs_every_runtime_file_the_wheel_ships():
    """What pyproject ships in the PromptSegLib wheel (every module, the package data), a built Slicer extension
    installs too (a catalogue.json missing from the extension once listed no bundled model)."""
    import re
    import tomllib
    from fnmatch import fnmatch

    library = REPO / "PromptSegLib"
    files = [p.relative_to(library).as_posix() for p in library.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    shipped = {f for f in files if f.endswith(".py")}
    shipped |= _globbed(files, pyproject["tool"]["setuptools"]["package-data"]["PromptSegLib"])
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()  # file(GLOB) of ${_lib_source_dir}/..., less EXCLUDE REGEX
    excluded = [x.replace("\\\\", "\\") for x in re.findall(r'EXCLUDE REGEX "([^"]+)"', cmake)]
    recursive = re.findall(r"GLOB_RECURSE .*?\$\{_lib_source_dir\}/(\S+?)\)", cmake)  # ``*`` crosses ``/`` there
    globbed = [p for p in re.findall(r"\$\{_lib_source_dir\}/(\S+?)\)?\s", cmake) if p not in recursive]
    installed = {f for f in _globbed(files, globbed) if not any(re.search(x, f) for x in excluded)}  # resources
    installed |= {f for f in files for r in recursive if fnmatch(f, r)}  # scripts
    assert {"models/catalogue.py", "text/modality.py", "data/vocabulary.json", "models/catalogue.json"} <= shipped
    assert not shipped - installed, f"shipped in the wheel but not installed by CMake: {sorted(shipped - installed)}"
