"""AutoSegMSK's widget without Qt: the .ui file and AutoSegMSK.py agree, imports stay within what Slicer provides,
the parameter node binds to widgets that can represent it, and every logic call exists in AutoSegMSKLib."""

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "AutoSegMSK" / "AutoSegMSK.py"
UI = REPO / "AutoSegMSK" / "Resources" / "UI" / "AutoSegMSK.ui"
LOGIC = REPO / "AutoSegMSK" / "AutoSegMSKLib" / "logic.py"

# What 3D Slicer's Python provides to a scripted module, besides the standard library and this extension's own code.
ALLOWED_IMPORTS = {"qt", "ctk", "vtk", "slicer", "slicer.ScriptedLoadableModule", "slicer.util",
                   "slicer.parameterNodeWrapper", "AutoSegMSKLib", "mskai", "mskai.dependencies"}
# Imported inside methods only: Slicer modules, and what needs the engine's packages.
LAZY_IMPORTS = {"AutoSegMSKLib", "AutoSegMSKLib.nodes", "DICOMLib", "PyTorchUtils", "mskai.engine",
                "mskai.segment.labels"}
# Widget classes the parameter node wrapper can connect to each parameter type (slicer.parameterNodeWrapper).
CONNECTABLE = {"bool": {"QCheckBox", "ctkCheckBox", "QPushButton"},
               "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox", "qMRMLSliderWidget"},
               "choice": {"QComboBox", "ctkComboBox"}, "node": {"qMRMLNodeComboBox"}}


@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI).getroot()


@pytest.fixture(scope="module")
def tree():
    return ast.parse(MODULE.read_text(), filename=str(MODULE))


def _widgets(ui):
    return {w.get("name"): w for w in ui.iter("widget")}


def _class(tree, name):
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def test_ui_parses_with_unique_names_and_declared_custom_widgets(ui):
    names = [w.get("name") for w in ui.iter("widget")] + [lay.get("name") for lay in ui.iter("layout")]
    assert len(names) == len(set(names))
    declared = {c.findtext("class") for c in ui.iter("customwidget")}
    used = {w.get("class") for w in ui.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared  # ctk*/qMRML* come from Slicer's plugins
    assert declared <= used
    for custom in ui.iter("customwidget"):
        assert custom.findtext("extends") and custom.findtext("header") == f"{custom.findtext('class')}.h"


def test_every_mrml_widget_gets_the_scene(ui):
    mrml = {name for name, w in _widgets(ui).items() if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    receivers = {c.findtext("receiver") for c in ui.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert mrml and mrml == receivers


def test_every_ui_name_the_module_uses_exists(ui, tree):
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Attribute) and owner.attr == "ui" and isinstance(owner.value, ast.Name)
                    and owner.value.id == "self") or (isinstance(owner, ast.Name) and owner.id == "ui"):
                used.add(node.attr)
    assert used, "no self.ui.<name> found"
    missing = used - set(_widgets(ui))
    assert not missing, f"used in AutoSegMSK.py, absent from the .ui: {sorted(missing)}"


def test_module_compiles_and_imports_only_what_slicer_provides(tree):
    compile(MODULE.read_text(), str(MODULE), "exec")
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or name in ALLOWED_IMPORTS, f"module-level import of {name}"
            # AutoSegMSKLib imports the engine's packages: at module level it would stop the module from loading
            # in a Slicer that does not have them yet, before it could offer to install them.
            assert top != "AutoSegMSKLib"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.col_offset > 0:
            assert node.module in LAZY_IMPORTS | ALLOWED_IMPORTS, node.module


def test_module_classes_and_slots_exist(tree):
    for name in ("AutoSegMSK", "AutoSegMSKWidget", "AutoSegMSKTest", "AutoSegMSKParameterNode"):
        _class(tree, name)
    widget = _class(tree, "AutoSegMSKWidget")
    methods = {n.name for n in widget.body if isinstance(n, ast.FunctionDef)}
    referenced = {n.attr for n in ast.walk(widget) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                  and n.value.id == "self" and n.attr.startswith("on")}
    assert referenced and referenced <= methods, sorted(referenced - methods)


def _logic_calls(tree):
    """(method, keyword names) of every call on the logic: self.getLogic().m(), self.logic.m(), logic.m()."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if ((isinstance(owner, ast.Call) and isinstance(owner.func, ast.Attribute)
                 and owner.func.attr == "getLogic")
                    or (isinstance(owner, ast.Attribute) and owner.attr == "logic")
                    or (isinstance(owner, ast.Name) and owner.id == "logic")):
                calls.append((node.func.attr, {k.arg for k in node.keywords if k.arg}))
    return calls


def test_logic_calls_exist_in_the_logic_and_it_accepts_their_keywords(tree):
    calls = _logic_calls(tree)
    assert {"startSegmentation", "segmentVolume", "exportModels", "compare", "startBatch"} <= {m for m, _ in calls}
    logic = _class(ast.parse(LOGIC.read_text()), "AutoSegMSKLogic")
    signatures = {f.name: f.args for f in logic.body if isinstance(f, ast.FunctionDef)}
    for method, keywords in calls:
        assert method in signatures, f"AutoSegMSKLogic has no {method}"
        args = signatures[method]
        accepted = {a.arg for a in args.args + args.kwonlyargs}
        assert args.kwarg or keywords <= accepted, f"{method} does not take {sorted(keywords - accepted)}"


def _parameter_fields(tree):
    """name -> kind (bool, float, choice, node, str) of AutoSegMSKParameterNode's annotated fields."""
    fields = {}
    for node in _class(tree, "AutoSegMSKParameterNode").body:
        if isinstance(node, ast.AnnAssign):
            text = ast.unparse(node.annotation)
            kind = ("choice" if "Choice(" in text else "float" if "float" in text else "bool" if text == "bool"
                    else "node" if text.startswith("vtkMRML") else text)
            fields[node.target.id] = kind
    return fields


def test_parameter_node_binds_to_widgets_that_can_show_it(ui, tree):
    fields = _parameter_fields(tree)
    bound = {}
    for w in ui.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0"
                bound[prop.findtext("string")] = w.get("class")
    assert set(bound) <= set(fields), sorted(set(bound) - set(fields))
    for name, cls in bound.items():
        assert cls in CONNECTABLE[fields[name]], f"{name} ({fields[name]}) cannot bind to a {cls}"
    # the two parameters the widget syncs by hand: the model combo (its items come from the logic) and none else
    assert set(fields) - set(bound) == {"model"}


def test_pyflakes_is_clean_over_the_whole_code_base():
    """Undefined names and unused imports fail here, not in front of a user (the widget cannot run in CI)."""
    folders = [str(REPO / name) for name in ("mskai", "AutoSegMSK", "ACLClassifier", "scripts", "benchmarks", "Testing")]
    result = subprocess.run([sys.executable, "-m", "pyflakes", *folders], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the widget's flow, with stand-ins for Qt and the Slicer application (plain Python: no Qt here) ----------

class FakeWidget:
    """A widget: properties are plain attributes; any method call is recorded and returns None."""

    def __init__(self, name):
        self.__dict__.update(name=name, calls=[], enabled=True, visible=True, text="", checked=False, value=0,
                             format="", currentIndex=-1, count=0, currentPath="", items=[])

    def __getattr__(self, method):
        return lambda *args, **kwargs: self.calls.append((method, args))

    def addItem(self, title, data=None):
        self.items.append((title, data))

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)


class FakeUi:
    def __getattr__(self, name):
        widget = FakeWidget(name)
        setattr(self, name, widget)
        return widget


def _fake_slicer(monkeypatch, calls):
    import contextlib
    import types

    def module(name, **attributes):
        m = types.ModuleType(name)
        m.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, m)
        return m

    @contextlib.contextmanager
    def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
        try:
            yield
        except Exception as error:
            calls.append(("errorDisplay", f"{message} {error}"))
            raise

    store = {"observers": []}  # the parameter node's ModifiedEvent observers

    def parameterNodeWrapper(cls):
        defaults = {k: getattr(cls, k, None) for k in cls.__annotations__}

        class Wrapper:
            def __init__(self, node):
                store.setdefault("values", dict(defaults))
                self.__dict__["values"] = store["values"]

            def __getattr__(self, name):
                return self.values[name]

            def __setattr__(self, name, value):
                assert name in defaults, name
                self.values[name] = value
                for callback in list(store["observers"]):
                    callback()

            def connectGui(self, gui):
                return 1

            def disconnectGui(self, tag):
                pass
        return Wrapper

    class Base:
        def __init__(self, *args):
            self.parent = types.SimpleNamespace(isEntered=True)

        def setup(self):
            self.layout = FakeWidget("layout")

        def resourcePath(self, path):
            return path

        def getParameterNode(self):
            return "node"

    class Mixin:
        def __init__(self):
            pass

        def addObserver(self, node, event, callback):
            if hasattr(node, "connectGui"):
                store["observers"].append(callback)

        def removeObserver(self, node, event, callback):
            if hasattr(node, "connectGui"):
                store["observers"].remove(callback)

        def removeObservers(self):
            store["observers"].clear()

    util = module("slicer.util", VTKObservationMixin=Mixin, tryWithErrorDisplay=tryWithErrorDisplay,
                  loadUI=lambda path: FakeWidget("uiWidget"), childWidgetVariables=lambda widget: FakeUi(),
                  confirmOkCancelDisplay=lambda text, title=None: calls.append(("confirm", text)) or False,
                  errorDisplay=lambda text, **kwargs: calls.append(("errorDisplay", text)),
                  pip_install=lambda requirements: calls.append(("pip_install", requirements)))
    scene = types.SimpleNamespace(StartCloseEvent=1, EndCloseEvent=2, GetFirstNodeByClass=lambda cls: "volume")
    module("slicer", util=util, mrmlScene=scene, app=types.SimpleNamespace(testingEnabled=lambda: False),
           modules=types.SimpleNamespace(), vtkMRMLScalarVolumeNode=object, vtkMRMLSegmentationNode=object)
    module("slicer.parameterNodeWrapper", parameterNodeWrapper=parameterNodeWrapper, Choice=lambda c: c,
           WithinRange=lambda low, high: (low, high))
    module("slicer.ScriptedLoadableModule", ScriptedLoadableModule=Base, ScriptedLoadableModuleLogic=Base,
           ScriptedLoadableModuleWidget=Base, ScriptedLoadableModuleTest=object)
    module("qt", QTimer=lambda: FakeWidget("timer"))


class FakeLogic:
    def __init__(self, calls):
        self.calls = calls

    def models(self):
        return [{"id": "bones", "version": "1.0", "description": "demo bones", "demo": True, "title": "bones 1.0"}]

    @staticmethod
    def confidenceNode(segmentationNode):  # the real logic links them in the scene (test_autosegmsk_logic.py)
        return getattr(segmentationNode, "confidence", None)

    @staticmethod
    def leastCertainBones(segmentationNode):
        return getattr(segmentationNode, "leastCertain", [])

    def startSegmentation(self, volumeNode, onProgress=None, onFinished=None, **options):
        self.calls.append(("startSegmentation", volumeNode, options))
        self.onFinished = onFinished
        return types_job(self.calls, onFinished)


def types_job(calls, onFinished):
    import types

    return types.SimpleNamespace(poll=lambda: False,
                                 cancel=lambda: calls.append(("cancel",)) or onFinished({"cancelled": True}))


@pytest.fixture
def widget(monkeypatch):
    import importlib.util

    from mskai import dependencies

    calls = []
    _fake_slicer(monkeypatch, calls)
    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements=None: [])
    spec = importlib.util.spec_from_file_location("AutoSegMSK_under_test", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    logic = FakeLogic(calls)
    monkeypatch.setitem(sys.modules, "AutoSegMSKLib", type(sys)("AutoSegMSKLib"))
    sys.modules["AutoSegMSKLib"].AutoSegMSKLogic = lambda scene: logic
    w = module.AutoSegMSKWidget()
    w.setup()
    return w, calls, module, dependencies


def test_apply_runs_in_the_background_and_cancel_reports_it(widget):
    w, calls, _, _ = widget
    assert w.ui.modelComboBox.items == [("bones 1.0", "bones@1.0")] and w.ui.demoBadgeLabel.visible
    w._parameterNode.slabEnabled, w._parameterNode.slabLow, w._parameterNode.slabHigh = True, -40.0, 25.0
    w.onApply()
    (_, volume, options), = [c for c in calls if c[0] == "startSegmentation"]
    assert volume == "volume" and options["model"] == "bones@1.0" and options["slab"] == (-40.0, 25.0)
    assert ("start", ()) in w.timer.calls and w.ui.cancelButton.enabled and not w.ui.applyButton.enabled
    w.onCancel()
    assert ("cancel",) in calls and w.job is None and "Cancelled" in w.ui.statusLabel.text
    assert w.ui.applyButton.enabled and not w.ui.cancelButton.enabled


def test_engine_failure_is_shown_and_the_gui_is_usable_again(widget):
    w, calls, _, _ = widget
    w.onApply()
    w.onFinished({"error": "out of memory; try --fast"})
    assert "out of memory" in w.ui.statusLabel.text and ("start", ()) in w.timer.calls
    assert any(c[0] == "errorDisplay" and "out of memory" in c[1] for c in calls)
    assert w.job is None and w.ui.applyButton.enabled


def test_bad_slab_is_refused_before_the_engine_starts(widget):
    w, calls, _, _ = widget
    w._parameterNode.slabEnabled, w._parameterNode.slabLow, w._parameterNode.slabHigh = True, 30.0, 10.0
    with pytest.raises(ValueError):
        w.onApply()
    assert not [c for c in calls if c[0] == "startSegmentation"] and any(c[0] == "errorDisplay" for c in calls)


def test_missing_packages_refused_installs_nothing_and_does_not_run(widget, monkeypatch):
    w, calls, _, dependencies = widget
    missing = [dependencies.Requirement("mskai-absent-package", ">=1.0")]
    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements=None: missing)
    w.onApply()
    assert [c[0] for c in calls] == ["confirm"] and "mskai-absent-package>=1.0" in calls[0][1]
    assert "Nothing was installed" in w.ui.statusLabel.text and w.ui.installDependenciesButton.visible


class FakeSegmentation:
    def __init__(self):
        self.attributes, self.references = {}, {}

    def SetAttribute(self, name, value):
        self.attributes[name] = value

    def GetAttribute(self, name):
        return self.attributes.get(name)

    def SetNodeReferenceID(self, role, nodeId):
        self.references[role] = nodeId

    def GetNodeReference(self, role):
        return self.references.get(role)

    def GetName(self):
        return "knee bones"

    def GetSegmentation(self):
        import types

        return types.SimpleNamespace(GetNumberOfSegments=lambda: 0)


def test_finished_run_fills_the_result_section(widget):
    w, calls, module, _ = widget
    w.onApply()
    segmentation = FakeSegmentation()
    segmentation.confidence = type("Confidence", (), {"GetID": lambda self: "vtkMRMLScalarVolumeNode7"})()
    segmentation.leastCertain = ["fibula", "patella"]
    w.onFinished({"segmentation": segmentation, "confidence": segmentation.confidence, "table": "table",
                  "leastCertain": ["fibula", "patella"], "report": {"model": {"demo": True}}})
    assert w._parameterNode.segmentation is segmentation and w.job is None
    assert ("setMRMLTableNode", ("table",)) in w.ui.statisticsTableView.calls
    assert "Done" in w.ui.statusLabel.text and "not be used for clinical" in w.ui.statusLabel.text
    assert w.ui.exportModelsButton.enabled and w.ui.showConfidenceCheckBox.enabled
    w.onSegmentationChanged(segmentation)
    assert ("addItems", (["fibula", "patella"],)) in w.ui.leastCertainListWidget.calls
