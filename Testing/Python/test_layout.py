"""The extension's shape: Slicer module folders, CMake wiring, and the layering rule."""

import ast
import py_compile
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = ("AutoSegMSK", "ACLClassifier")


def test_extension_cmake_adds_every_module_and_ships_mskai():
    text = (REPO / "CMakeLists.txt").read_text()
    for module in MODULES:
        assert f"add_subdirectory({module})" in text
    assert "mskai/*.py" in text and "Slicer_EXTENSION_CPACK" in text


def test_modules_have_the_scripted_module_layout():
    for module in MODULES:
        folder = REPO / module
        cmake = (folder / "CMakeLists.txt").read_text()
        assert "slicerMacroBuildScriptedModule" in cmake and f"set(MODULE_NAME {module})" in cmake
        for resource in re.findall(r"Resources/\S+", cmake):
            assert (folder / resource.replace("${MODULE_NAME}", module)).is_file(), resource
        py_compile.compile(str(folder / f"{module}.py"), doraise=True)
        source = (folder / f"{module}.py").read_text()
        for cls in (module, f"{module}Widget", f"{module}Test"):
            assert f"class {cls}(" in source
        library = "".join(p.read_text() for p in (folder / f"{module}Lib").glob("*.py"))
        assert f"class {module}Logic" in source + library  # the logic lives in <Module>Lib/ (slicer-core alone)


def test_cmake_installs_every_python_file_of_each_module():
    for module in MODULES:
        folder = REPO / module
        cmake = (folder / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", module)
        listed = set(re.findall(r"^\s*(\S+\.py)\s*$", cmake, re.MULTILINE))
        present = {p.relative_to(folder).as_posix() for p in folder.rglob("*.py") if "__pycache__" not in p.parts}
        assert listed == present, module


def test_mskai_never_imports_slicer_or_qt():
    forbidden = {"slicer", "qt", "ctk", "vtkSlicer", "PythonQt", "PyQt5", "PySide2", "PySide6"}
    for path in (REPO / "mskai").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
