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


def _module_imports(path: Path, top_level_only: bool = False) -> set:
    """Modules ``path`` imports (relative imports resolved within its package folder); with top_level_only, only
    those run when it is imported (not inside functions)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def test_no_module_imports_its_sibling_and_the_shared_glue_imports_neither():
    owners = {"AutoSegMSK": ("ACLClassifier",), "ACLClassifier": ("AutoSegMSK",),
              "SlicerMSKCommon": ("AutoSegMSK", "ACLClassifier")}
    for folder, forbidden in owners.items():
        for path in (REPO / folder).rglob("*.py"):
            for name in _module_imports(path):
                assert not name.startswith(forbidden), f"{path.relative_to(REPO)} imports {name}"


def test_cmake_installs_every_file_of_the_shared_glue():
    text = (REPO / "CMakeLists.txt").read_text()
    block = text[text.index("TARGET_NAME SlicerMSKCommon"):]
    listed = set(re.findall(r"SlicerMSKCommon/\S+\.py", block[:block.index(")")]))
    present = {p.relative_to(REPO).as_posix() for p in (REPO / "SlicerMSKCommon").glob("*.py")}
    assert listed == present


def test_mskai_modules_import_no_circle_when_loaded():
    graph = {}
    for path in (REPO / "mskai").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {n for n in _module_imports(path, top_level_only=True) if n.startswith("mskai")}
    for name in graph:
        graph[name] = {n for n in graph[name] if n in graph and n != name}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph[node]:
            assert state.get(nxt) != "open", "import circle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_help_and_dicom_ls_import_neither_torch_nor_vtk_nor_monai(tmp_path):
    """The commands that only read DICOM start without the heavy libraries (measured: torch 1.1 s, MONAI 2.3 s more)."""
    import subprocess
    import sys

    from mskai.synth.dicom_writer import write_series
    from mskai.synth.phantom import phantom

    write_series(phantom(shape=(32, 32, 8)), tmp_path / "series")
    code = ("import sys, mskai.cli\n"
            "for argv in (['--help'], ['dicom', 'ls', sys.argv[1]]):\n"
            "    try:\n        mskai.cli.main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'vtk', 'vtkmodules', 'monai', 'onnxruntime', 'matplotlib', 'dask')"
            " if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "series")], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert "1 volume(s)" in result.stdout and result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


def test_the_command_line_starts_without_training_synthesis_or_torch():
    import subprocess
    import sys

    code = ("import sys, mskai.cli; mskai.cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or '.train' in m or m.startswith('mskai.synth')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_no_file_over_500_lines_and_no_function_over_80_outside_tests():
    code = [p for folder in ("mskai", "AutoSegMSK", "ACLClassifier", "SlicerMSKCommon", "scripts", "benchmarks")
            for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts]
    assert len(code) > 50
    long_files = {p.relative_to(REPO).as_posix(): n for p in code if (n := len(p.read_text().splitlines())) > 500}
    assert not long_files
    long_functions = [f"{p.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1})"
                      for p in code for node in ast.walk(ast.parse(p.read_text()))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno + 1 > 80]
    assert not long_functions


def test_the_tests_mirror_the_code():
    folders = {p.parent.relative_to(REPO / "Testing" / "Python").as_posix()
               for p in (REPO / "Testing" / "Python").rglob("test_*.py")}
    assert folders == {".", "cli", "engine", "engine/acl", "engine/dicom", "engine/models", "engine/runner",
                       "engine/segment", "modules", "synth", "training"}
    # "modules", not "slicer": slicer-core imports every module of any folder named slicer on the path
    names = [p.name for p in (REPO / "Testing" / "Python").rglob("test_*.py")]
    assert len(names) == len(set(names))  # one module name per test file (pytest imports them by name)
