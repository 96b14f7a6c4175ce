"""The two modules' widgets without Qt: each .ui file and <Module>.py agree, imports stay within what Slicer
provides, the parameter node binds to widgets that can represent it, every logic call exists in <Module>Lib, and the
widget base both share (SlicerMSKCommon.widget) finds its widgets. Then the widgets' flows with test doubles for Qt
and the Slicer application only (FakeWidget, FakeUi, _fake_slicer): AutoSegMSK's with a stand-in logic, ACLClassifier's
with its real logic on a real slicer-core scene and the real engine."""

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO
MODULE = REPO / "AutoSegMSK" / "AutoSegMSK.py"

# What 3D Slicer's Python provides to a scripted module, besides the standard library and this extension's own code.
SLICER_IMPORTS = {"qt", "ctk", "vtk", "slicer", "slicer.ScriptedLoadableModule", "slicer.util",
                  "slicer.parameterNodeWrapper", "mskai", "mskai.dependencies", "SlicerMSKCommon.widget"}
SHARED_WIDGET = REPO / "SlicerMSKCommon" / "widget.py"
# Widget classes the parameter node wrapper can connect to each parameter type (slicer.parameterNodeWrapper).
CONNECTABLE = {"bool": {"QCheckBox", "ctkCheckBox", "QPushButton"},
               "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox", "qMRMLSliderWidget"},
               "choice": {"QComboBox", "ctkComboBox"}, "node": {"qMRMLNodeComboBox"}}


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    imports: frozenset  # module-level imports besides SLICER_IMPORTS and the standard library
    lazy: frozenset  # imported inside methods only: Slicer modules, and what needs the engine's packages
    calls: frozenset  # logic methods the widget must call
    unbound: frozenset  # parameter node fields the widget syncs by hand

    @property
    def module(self) -> Path:
        return REPO / self.name / f"{self.name}.py"

    @property
    def ui(self) -> Path:
        return REPO / self.name / "Resources" / "UI" / f"{self.name}.ui"

    @property
    def logic(self) -> Path:
        return REPO / self.name / f"{self.name}Lib" / "logic.py"


SPECS = [
    ModuleSpec("AutoSegMSK", frozenset(),
               frozenset({"AutoSegMSKLib", "SlicerMSKCommon.nodes", "DICOMLib", "PyTorchUtils", "mskai.runner.engine",
                          "mskai.segment.labels"}),
               frozenset({"startSegmentation", "segmentVolume", "exportModels", "compare", "startBatch",
                          "saveTrainingCase", "trainingCases", "removeTrainingCase", "exportTrainingCases",
                          "startImprove", "useShippedModel"}),
               frozenset({"model"})),
    ModuleSpec("ACLClassifier", frozenset(),
               frozenset({"ACLClassifierLib", "SlicerMSKCommon.nodes", "mskai.dicom", "mskai.runner.engine", "mskai.models.tasks"}),
               frozenset({"startClassification", "classifyVolume", "loadStudy", "databaseStudies", "showResult",
                          "jumpToSlice", "evidenceSlices", "saveResult", "startBatch", "verdict", "planeOf",
                          "remeasureSigns", "describeAnatomy"}),
               frozenset({"model"})),
]


@pytest.fixture(scope="module", params=SPECS, ids=lambda spec: spec.name)
def spec(request):
    return request.param


@pytest.fixture(scope="module")
def ui(spec):
    return ET.parse(spec.ui).getroot()


@pytest.fixture(scope="module")
def tree(spec):
    return ast.parse(spec.module.read_text(), filename=str(spec.module))


def _widgets(ui):
    return {w.get("name"): w for w in ui.iter("widget")}


def _class(tree, name):
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _ui_names(node):
    """Every <name> in self.ui.<name> and ui.<name> under ``node``."""
    used = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute):
            owner = n.value
            if (isinstance(owner, ast.Attribute) and owner.attr == "ui" and isinstance(owner.value, ast.Name)
                    and owner.value.id == "self") or (isinstance(owner, ast.Name) and owner.id == "ui"):
                used.add(n.attr)
    return used


def _shared(widget) -> dict:
    """{name: FunctionDef} of the widget base both modules share (SlicerMSKCommon.widget.EngineWidget), when
    ``widget`` inherits it."""
    if "EngineWidget" not in {base.id for base in widget.bases if isinstance(base, ast.Name)}:
        return {}
    mixin = _class(ast.parse(SHARED_WIDGET.read_text()), "EngineWidget")
    return {f.name: f for f in mixin.body if isinstance(f, ast.FunctionDef)}


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


def test_every_ui_name_the_module_uses_exists(spec, ui, tree):
    used = _ui_names(tree)
    assert used, "no self.ui.<name> found"
    missing = used - set(_widgets(ui))
    assert not missing, f"used in {spec.name}.py, absent from the .ui: {sorted(missing)}"


def test_shared_widget_glue_finds_its_widgets(spec, ui, tree):
    """Both widgets inherit the shared glue, and every ui name it uses exists in each module's .ui."""
    shared = _shared(_class(tree, f"{spec.name}Widget"))
    assert {"checkDependencies", "installDependencies", "onPoll", "onCancel", "setParameterNode"} <= set(shared)
    for name, method in shared.items():
        missing = _ui_names(method) - set(_widgets(ui))
        assert not missing, f"{name} (EngineWidget) uses {sorted(missing)}, absent from {spec.name}.ui"


def test_module_compiles_and_imports_only_what_slicer_provides(spec, tree):
    compile(spec.module.read_text(), str(spec.module), "exec")
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or name in SLICER_IMPORTS | spec.imports, \
                f"module-level import of {name}"
            # <Module>Lib imports the engine's packages: at module level it would stop the module from loading
            # in a Slicer that does not have them yet, before it could offer to install them.
            assert not top.endswith("Lib")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.col_offset > 0:
            assert node.module in spec.lazy | SLICER_IMPORTS | spec.imports, node.module


def test_module_classes_and_slots_exist(spec, tree):
    for name in (spec.name, f"{spec.name}Widget", f"{spec.name}Test", f"{spec.name}ParameterNode"):
        _class(tree, name)
    widget = _class(tree, f"{spec.name}Widget")
    methods = {n.name for n in widget.body if isinstance(n, ast.FunctionDef)} | set(_shared(widget))
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


def test_logic_calls_exist_in_the_logic_and_it_accepts_their_keywords(spec, tree):
    calls = _logic_calls(tree) + _logic_calls(_class(ast.parse(SHARED_WIDGET.read_text()), "EngineWidget"))
    assert spec.calls <= {m for m, _ in calls}, sorted(spec.calls - {m for m, _ in calls})
    logic = _class(ast.parse(spec.logic.read_text()), f"{spec.name}Logic")
    signatures = {f.name: f.args for f in logic.body if isinstance(f, ast.FunctionDef)}
    for method, keywords in calls:
        assert method in signatures, f"{spec.name}Logic has no {method}"
        args = signatures[method]
        accepted = {a.arg for a in args.args + args.kwonlyargs}
        assert args.kwarg or keywords <= accepted, f"{method} does not take {sorted(keywords - accepted)}"


def _parameter_fields(tree, spec):
    """name -> kind (bool, float, choice, node, str) of the parameter node's annotated fields."""
    fields = {}
    for node in _class(tree, f"{spec.name}ParameterNode").body:
        if isinstance(node, ast.AnnAssign):
            text = ast.unparse(node.annotation)
            kind = ("choice" if "Choice(" in text else "float" if "float" in text else "bool" if text == "bool"
                    else "node" if text.startswith("vtkMRML") else text)
            fields[node.target.id] = kind
    return fields


def test_parameter_node_binds_to_widgets_that_can_show_it(spec, ui, tree):
    fields = _parameter_fields(tree, spec)
    bound = {}
    for w in ui.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0"
                bound[prop.findtext("string")] = w.get("class")
    assert set(bound) <= set(fields), sorted(set(bound) - set(fields))
    for name, cls in bound.items():
        assert cls in CONNECTABLE[fields[name]], f"{name} ({fields[name]}) cannot bind to a {cls}"
    # the parameters the widget syncs by hand: the model combo (its items come from the logic) and none else
    assert set(fields) - set(bound) == spec.unbound


def test_the_result_selector_lists_the_evidence_nodes_the_lib_marks(monkeypatch):
    for folder in (REPO, REPO / "ACLClassifier"):
        monkeypatch.syspath_prepend(str(folder))
    from ACLClassifierLib.results import EVIDENCE

    source = (REPO / "ACLClassifier" / "ACLClassifier.py").read_text()
    assert f'EVIDENCE_ATTRIBUTE = "{EVIDENCE}"' in source


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

    def clear(self):
        self.items = []

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)


class FakeUi:
    def __getattr__(self, name):
        widget = FakeWidget(name)
        setattr(self, name, widget)
        return widget


class FakeTableItem:
    """A QTableWidgetItem: text and role data."""

    def __init__(self, text):
        self._text, self._data = text, {}

    def text(self):
        return self._text

    def setData(self, role, value):
        self._data[role] = value

    def data(self, role):
        return self._data[role]


def _fake_slicer(monkeypatch, calls, scene=None, real=None, dicomDatabase=None):
    """Stand-ins for Qt and the Slicer application (util, app, modules, the DICOM database, the scripted module
    bases and the parameter node wrapper). real: the slicer-core module, whose MRML classes the fake `slicer` then
    carries, with ``scene`` (a real vtkMRMLScene) as slicer.mrmlScene. Returns the doubles tests look at."""
    import contextlib
    import types

    monkeypatch.syspath_prepend(str(REPO))  # SlicerMSKCommon
    monkeypatch.delitem(sys.modules, "SlicerMSKCommon.widget", raising=False)  # imported again, onto these doubles

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
                  pip_install=lambda requirements: calls.append(("pip_install", requirements)),
                  setSliceViewerLayers=lambda **layers: calls.append(("setSliceViewerLayers", layers)))
    plots = FakeWidget("plotsLogic")
    mrml = {k: getattr(real, k) for k in dir(real) if k.startswith("vtk")} if real else {
        "vtkMRMLScalarVolumeNode": object, "vtkMRMLSegmentationNode": object}
    if scene is None:
        scene = types.SimpleNamespace(StartCloseEvent=1, EndCloseEvent=2, GetFirstNodeByClass=lambda cls: "volume")
    module("slicer", **mrml, util=util, mrmlScene=scene, app=types.SimpleNamespace(testingEnabled=lambda: False),
           modules=types.SimpleNamespace(plots=types.SimpleNamespace(logic=lambda: plots)),
           dicomDatabase=dicomDatabase)
    module("slicer.parameterNodeWrapper", parameterNodeWrapper=parameterNodeWrapper, Choice=lambda c: c,
           WithinRange=lambda low, high: (low, high))
    module("slicer.ScriptedLoadableModule", ScriptedLoadableModule=Base, ScriptedLoadableModuleLogic=Base,
           ScriptedLoadableModuleWidget=Base, ScriptedLoadableModuleTest=object)
    module("qt", QTimer=lambda: FakeWidget("timer"), QTableWidgetItem=FakeTableItem, QListWidgetItem=FakeTableItem,
           Qt=types.SimpleNamespace(UserRole=32))

    def loadSeriesByUID(uids):
        """Slicer's DICOM loader stand-in: the series read by the engine's reader into the real scene, named as
        Slicer's scalar volume plugin names them ("<number>: <description>"); returns the node IDs."""
        from mskai.dicom import DicomDatabase, plan_volumes, read_volume
        from SlicerMSKCommon.nodes import add_volume_node

        calls.append(("loadSeriesByUID", list(uids)))
        with DicomDatabase(dicomDatabase.databaseDirectory) as database:
            scan = database.scan(list(uids))
        return [add_volume_node(scene, read_volume(plan), f"{series.number}: {series.description}").GetID()
                for series in scan.series for plan in plan_volumes(series)]

    module("DICOMLib", DICOMUtils=types.SimpleNamespace(loadSeriesByUID=loadSeriesByUID))
    return types.SimpleNamespace(plots=plots)


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

    def startImprove(self, model=None, minutes=10.0, libraryDir=None, onProgress=None, onFinished=None):
        self.calls.append(("startImprove", model, minutes))
        self.modelsAfter = [{"id": "bones", "version": "1.0", "description": "", "demo": True, "default": False,
                             "title": "bones 1.0"},
                            {"id": "bones", "version": "1.0+local.1", "description": "", "demo": True, "default": True,
                             "title": "bones 1.0+local.1 [default]"}]
        return types_job(self.calls, onFinished)

    def trainingCases(self, model=None, libraryDir=None):
        return [{"case": "case-0123456789ab", "saved_utc": "2026-12-02T04:00Z", "changed_voxels": {"2": 40}}], \
            ["case-ffffffffffff: labels.nrrd is missing"]

    def saveTrainingCase(self, segmentationNode, volumeNode=None, libraryDir=None):
        self.calls.append(("saveTrainingCase", segmentationNode, volumeNode))
        return {"case": "case-0123456789ab", "changed_voxels": {"2": 30, "1": 10}}


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


def test_improve_runs_in_the_background_then_says_if_it_is_better_and_chooses_the_default(widget):
    w, calls, _, _ = widget
    w.ui.improveMinutesSpinBox.value = 5.0
    w.onImprove()
    assert ("startImprove", "bones@1.0", 5.0) in calls and w.ui.cancelButton.enabled
    assert not w.ui.improveButton.enabled and not w.ui.applyButton.enabled  # one job at a time
    logic = w.logic
    logic.models = lambda: logic.modelsAfter
    w.onImproved({"model": "bones@1.0+local.1", "accepted": True, "before": {"femur": {"dice": 0.71}},
                  "after": {"femur": {"dice": 0.88}}})
    assert "now the default" in w.ui.statusLabel.text and "femur 0.71 -> 0.88" in w.ui.statusLabel.text
    assert w._parameterNode.model == "bones@1.0+local.1"
    assert [t for t, _ in w.ui.modelComboBox.items] == ["bones 1.0", "bones 1.0+local.1 [default]"]
    assert w.job is None and w.ui.improveButton.enabled
    w.onImprove()
    w.onCancel()
    assert "no new model was written" in w.ui.statusLabel.text


def test_save_case_lists_the_library_with_its_damaged_cases(widget):
    w, calls, _, _ = widget
    w._parameterNode.segmentation = "segmentation"
    w.sourceVolume = lambda: "volume"  # its reference volume (the real one reads the node: test_autosegmsk_logic.py)
    w.onSaveCase()
    assert ("saveTrainingCase", "segmentation", "volume") in [c[:3] for c in calls]
    assert "case-0123456789ab" in w.ui.statusLabel.text and "40 voxels corrected" in w.ui.statusLabel.text
    listed = [c[1][0] for c in w.ui.casesListWidget.calls if c[0] in ("addItem", "addItems")]
    assert any("damaged" in str(x) for x in listed)


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


# --- ACLClassifier's widget: its real logic on a real slicer-core scene, the real engine; Qt/app doubles only ---

def _load_module(name, path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def acl(monkeypatch, model_dirs):
    """ACLClassifierWidget set up on a real scene with slice views; a small real ACL package installed as the user's
    model "test-acl@1.0.0" (the engine process finds it through the same MSKAI_MODELS_DIR)."""
    import importlib
    import types

    from conftest import make_acl_package, mrml_scene_with_views
    from mskai import dependencies

    for folder in (REPO, REPO / "ACLClassifier"):
        monkeypatch.syspath_prepend(str(folder))
    import slicer

    importlib.import_module("ACLClassifierLib")  # the real Lib, imported with the real slicer-core before the doubles

    make_acl_package(model_dirs / "user" / "test-acl-1.0.0", pooling="attention")
    scene, calls = mrml_scene_with_views(), []
    database = types.SimpleNamespace(isOpen=True, databaseDirectory="")
    doubles = _fake_slicer(monkeypatch, calls, scene=scene, real=slicer, dicomDatabase=database)
    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements=None: [])
    module = _load_module("ACLClassifier_under_test", REPO / "ACLClassifier" / "ACLClassifier.py")
    w = module.ACLClassifierWidget()
    w.setup()
    return types.SimpleNamespace(w=w, calls=calls, scene=scene, database=database, plots=doubles.plots,
                                 tmp=model_dirs)


def test_acl_widget_lists_the_model_with_its_demo_badge_and_names_a_wrong_plane(acl):
    from SlicerMSKCommon.nodes import add_volume_node
    from mskai import MskaiError
    from mskai.synth.phantom import phantom

    w, calls = acl.w, acl.calls
    assert w.ui.modelComboBox.items == [("test-acl 1.0.0 (DEMO - not for clinical use)", "test-acl@1.0.0")]
    assert w._parameterNode.model == "test-acl@1.0.0" and w.ui.demoBadgeLabel.visible
    assert w.ui.verdictLabel.text == "No result yet." and not w.ui.saveButton.enabled
    coronal = add_volume_node(acl.scene, phantom(shape=(48, 48, 12), plane="coronal"), "knee COR")
    w._parameterNode.inputVolume = coronal
    assert w.ui.inputPlaneLabel.text.startswith("This volume is coronal: the ACL classifier reads sagittal slices")
    with pytest.raises(MskaiError):
        w.onApply()
    assert any(c[0] == "errorDisplay" and "'knee COR' is coronal" in c[1] for c in calls)
    assert w.job is None and ("start", ()) not in w.timer.calls


def test_acl_widget_classifies_in_the_background_and_cancel_leaves_the_scene_alone(acl):
    from SlicerMSKCommon.nodes import add_volume_node
    from mskai.synth.phantom import phantom

    w = acl.w
    w._parameterNode.inputVolume = add_volume_node(acl.scene, phantom(shape=(64, 56, 16)), "knee SAG")
    assert w.ui.inputPlaneLabel.text == "Plane: sagittal." and w.ui.applyButton.enabled
    count = acl.scene.GetNumberOfNodes()
    w.onApply()
    assert w.job is not None and ("start", ()) in w.timer.calls
    assert w.ui.cancelButton.enabled and not w.ui.applyButton.enabled and not w.ui.inputCollapsibleButton.enabled
    w.onCancel()
    assert w.job is None and w.ui.statusLabel.text == "Cancelled: the scene is as it was."
    assert acl.scene.GetNumberOfNodes() == count and w.ui.applyButton.enabled


def test_acl_widget_picks_a_study_classifies_shows_steps_and_saves(acl):
    import time

    from pydicom.uid import generate_uid

    from mskai.dicom import index_folder
    from mskai.synth.dicom_writer import write_series
    from mskai.synth.phantom import phantom

    w, calls, tmp = acl.w, acl.calls, acl.tmp
    study = generate_uid()
    for n, plane in enumerate(("coronal", "sagittal")):
        write_series(phantom(shape=(64, 56, 16), plane=plane, seed=n), tmp / "in" / plane, series_number=n + 1,
                     patient=("DOE^JANE", "PID-1"), study_uid=study, description=f"SYN {plane}")
    index_folder(tmp / "in", tmp / "db")
    acl.database.databaseDirectory = str(tmp / "db")
    w.onRefreshStudies()
    items = {args[:2]: args[2] for name, args in w.ui.dicomStudyTable.calls if name == "setItem"}
    assert items[(0, 0)].text() == "DOE^JANE" and items[(0, 3)].text() == "2" and len(items) == 5
    w.ui.dicomStudyTable.selectedItems = lambda: [items[(0, 1)]]
    w.onLoadStudy()
    volume = w._parameterNode.inputVolume
    loaded = [args for name, args in calls if name == "loadSeriesByUID"]
    assert len(loaded) == 1 and len(loaded[0]) == 1  # the one chosen series, through Slicer's DICOM loader
    assert volume.GetName() == "2: SYN sagittal" and w.ui.inputPlaneLabel.text == "Plane: sagittal."
    assert w.ui.seriesReasonLabel.text.startswith("Picked: picked series #2 (sagittal, 16 slices")
    assert ("setSliceViewerLayers", {"background": volume, "fit": True}) in calls

    w.onApply()
    deadline = time.time() + 120
    while w.job is not None and time.time() < deadline:  # what the QTimer does in the application
        w.onPoll()
        time.sleep(0.1)
    cam = w._parameterNode.result
    assert cam is not None, w.ui.statusLabel.text
    result = w.logic.resultOf(cam)
    assert w.ui.verdictLabel.text == f"ACL: {w.logic.verdict(result['probabilities'], result['predicted'])}"
    assert w.ui.statusLabel.text.startswith("Done: ") and "not be used for clinical" in w.ui.statusLabel.text
    assert w.ui.resultReasonLabel.text == f"Series: {w.ui.seriesReasonLabel.text[len('Picked: '):]}"
    assert ("setMRMLTableNode", (result["table"],)) in w.ui.probabilitiesTableView.calls
    composite = acl.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundVolumeID() == cam.GetID() and composite.GetBackgroundVolumeID() == volume.GetID()
    import slicer

    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(cam)
    assert legend.GetVisibility()
    assert w.ui.evidenceSliceLabel.text.startswith(f"Slice {result['keySlice'] + 1}: the key slice")
    assert all(b.enabled for b in (w.ui.nextEvidenceButton, w.ui.saveButton, w.ui.showChartButton))
    w.onNextEvidence()
    assert "number 2 by evidence" in w.ui.evidenceSliceLabel.text
    w.onKeySlice()
    assert "the key slice" in w.ui.evidenceSliceLabel.text
    w.onShowOverlay(False)
    assert ("setSliceViewerLayers", {"foreground": None}) in calls and not legend.GetVisibility()
    w.onShowChart()
    assert ("ShowChartInLayout", (result["chart"],)) in acl.plots.calls

    w.ui.saveFolderPathLineEdit.currentPath = str(tmp / "saved")
    w.onSave()
    assert sorted(p.name for p in (tmp / "saved").iterdir() if not p.name.startswith(".")) == \
        ["cam.nrrd", "key_slice.png", "report.csv", "report.json"]
    assert w.ui.statusLabel.text.startswith("Saved report.json, report.csv, cam.nrrd, key_slice.png")
