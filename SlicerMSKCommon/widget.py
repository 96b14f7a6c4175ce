"""The Qt widget base both modules' widgets build on (``EngineWidget``), the slot decorator and the model key.

Imports only what 3D Slicer provides and ``mskai.dependencies``: the module must load before the engine's
packages are installed, to offer to install them.
"""

import functools

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from mskai import dependencies


def guiAction(message, waitCursor=False):
    """Run a slot inside slicer.util.tryWithErrorDisplay: a failure is shown in a message box."""
    def decorate(method):
        @functools.wraps(method)
        def slot(self, *args):  # signals may pass more arguments than the method takes
            with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
                return method(self, *args[:method.__code__.co_argcount - 1])
        return slot
    return decorate


def modelKey(model):
    return f"{model['id']}@{model['version']}"


class EngineWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The widget base both modules share: scene and parameter-node wiring, the engine packages' check and install,
    the model choice, polling a background job, progress, cancel and the batch's end.

    A module's widget sets ``moduleParameterNode`` (its parameter node function) and defines ``getLogic()``,
    ``updateGui()`` and ``onFinished(result)``; its .ui has statusLabel, progressBar, installDependenciesButton and
    modelComboBox (and batchOutputPathLineEdit for ``onBatchFinished``).
    """

    moduleParameterNode = None  # staticmethod(parameterNode) of the module
    logicClass = ("", "")  # (<Module>Lib, <Module>Logic): imported once the engine's packages are present
    readyText = noModelText = ""  # the status line once the logic is made, with models and without

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic, self.job, self._models, self._askedToInstall = None, None, [], False
        self._parameterNode, self._parameterNodeGuiTag = None, None

    def loadModuleUI(self, name):
        """The module's .ui in the panel (self.ui), the install button hidden, the 200 ms poll timer made."""
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{name}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.installDependenciesButton.visible = False
        self.timer = qt.QTimer()
        self.timer.setInterval(200)
        self.timer.connect("timeout()", self.onPoll)
        return self.ui

    def startObserving(self):
        """The end of setup: scene close events observed, the parameter node wired, the engine packages checked."""
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.checkDependencies(ask=False)

    def initializeParameterNode(self):
        self.setParameterNode(self.moduleParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if self._models and p.model not in map(modelKey, self._models):
            p.model = self.defaultModel()

    def cleanup(self):
        self.timer.stop()
        if self.job:
            self.job.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self.checkDependencies(ask=not self._askedToInstall)  # offers to install once per session

    def exit(self):  # a running job goes on; the GUI follows the parameter node again on enter
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        if self.job:
            self.job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def setParameterNode(self, node):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = node
        if node:
            self._parameterNodeGuiTag = node.connectGui(self.ui)
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self.updateGui()

    @staticmethod
    def confirm(text, title="AutoSegMSK"):
        """A confirmation never given automatically (in testing mode Slicer answers OK to every dialog)."""
        return not slicer.app.testingEnabled() and slicer.util.confirmOkCancelDisplay(text, title)

    def checkDependencies(self, ask):
        """True when the engine's packages are present; else say what is missing and, with ask, offer to install."""
        missing = dependencies.missing_requirements()  # reads package metadata only: fast
        self.ui.installDependenciesButton.visible = bool(missing)
        if not missing:
            return bool(self.getLogic())
        self.ui.statusLabel.text = (f"The engine needs Python packages that are missing or too old: "
                                    f"{', '.join(r.name for r in missing)}. Nothing is installed without asking.")
        self._askedToInstall = self._askedToInstall or ask
        return ask and self.installDependencies(missing)

    @guiAction("Failed to install the Python packages.")
    def onInstallDependencies(self):
        self.installDependencies(dependencies.missing_requirements())

    def installDependencies(self, missing):
        installTorch = None
        if hasattr(slicer.modules, "pytorchutils"):  # the PyTorch extension picks the CPU or the CUDA build
            import PyTorchUtils

            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            installTorch = lambda requirement: torchLogic.installTorch(  # noqa: E731
                askConfirmation=False, torchVersionRequirement=requirement[len("torch"):])
        confirm = lambda text: self.confirm(text, "AutoSegMSK: install Python packages")  # noqa: E731
        outcome = dependencies.ensure(slicer.util.pip_install, confirm, installTorch, missing)
        self.ui.statusLabel.text = outcome["message"]
        self.ui.installDependenciesButton.visible = not outcome["ready"]
        if outcome["restart"] and self.confirm("Restart 3D Slicer now to finish installing the Python packages?"):
            slicer.util.restart()
        return outcome["ready"] and bool(self.getLogic())

    @staticmethod
    def databaseDirectory():
        if not slicer.dicomDatabase or not slicer.dicomDatabase.isOpen:
            raise ValueError("Slicer's DICOM database is not open: open it in the DICOM module first.")
        return slicer.dicomDatabase.databaseDirectory

    def getLogic(self):
        """The logic, made once the engine's packages are present (<Module>Lib imports them); the model list filled."""
        if self.logic is None:
            if dependencies.missing_requirements():
                raise ValueError("Install the engine's Python packages first (the Install button of the Run section).")
            import importlib

            module, name = self.logicClass
            self.logic = getattr(importlib.import_module(module), name)(slicer.mrmlScene)
            self.fillModels()
            self.ui.statusLabel.text = self.readyText if self._models else self.noModelText
            if self._parameterNode:
                self.initializeParameterNode()
        return self.logic

    def fillModels(self, chooseDefault=False):
        """The model box filled (again, e.g. after a fine-tune); with ``chooseDefault`` the default model chosen."""
        self._models = self.logic.models()
        self.ui.modelComboBox.clear()
        for model in self._models:
            self.ui.modelComboBox.addItem(model["title"], modelKey(model))
        if chooseDefault and self._parameterNode:
            self._parameterNode.model = self.defaultModel()

    def defaultModel(self) -> str:
        """The key (id@version) of the first model that is its id's default version, else of the first model."""
        chosen = next((m for m in self._models if m.get("default")), self._models[0] if self._models else None)
        return modelKey(chosen) if chosen else ""

    def showModel(self):
        """The chosen model in the combo box, its description and demo badge; returns its entry (None if none)."""
        p, ui = self._parameterNode, self.ui
        ui.modelComboBox.currentIndex = ui.modelComboBox.findData(p.model)
        model = next((m for m in self._models if modelKey(m) == p.model), None)
        ui.modelDescriptionLabel.text = model["description"] if model else ""
        ui.demoBadgeLabel.visible = bool(model and model["demo"])
        return model

    def inputToRun(self, missing):
        """The parameter node when a run may start: the engine's packages present (else offered, None) and an input
        volume chosen (else ``missing`` as the error)."""
        if not self.checkDependencies(ask=True):
            return None
        if not self._parameterNode.inputVolume:
            raise ValueError(missing)
        return self._parameterNode

    def fillDicomTable(self, table, rows, columns, uidKey, what, tooltip=None):
        """A DICOM table widget filled with ``rows`` (dicts): one column per key, each item carrying the row's UID;
        the status line says how many ``what`` the database holds."""
        table.setRowCount(0)
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(columns):
                item = qt.QTableWidgetItem(str(row[key]))
                item.setData(qt.Qt.UserRole, row[uidKey])
                if tooltip:
                    item.setToolTip(tooltip(row))
                table.setItem(r, c, item)
        table.resizeColumnsToContents()
        self.ui.statusLabel.text = f"{len(rows)} {what} in the DICOM database."

    def startBatch(self, doing, **options):
        """The Batch section's run: the logic's startBatch over the chosen database into the chosen folder, followed
        in the background; ``doing`` (e.g. "Classifying every study") on the status line."""
        ui, p = self.ui, self._parameterNode
        database, output = ui.batchDatabasePathLineEdit.currentPath, ui.batchOutputPathLineEdit.currentPath
        if not database or not output:
            raise ValueError("Choose the DICOM database folder and the output folder.")
        job = self.getLogic().startBatch(database, output, resume=ui.batchResumeCheckBox.checked,
                                         model=p.model or None, onProgress=self.onProgress,
                                         onFinished=self.onBatchFinished, **options)
        self.runInBackground(job, f"{doing} of {database} in the background (Cancel keeps those done).")

    def loadDicomSeries(self, seriesUID):
        """Load a series of Slicer's DICOM database with Slicer's DICOM loader (the one DICOM path of the modules in
        the application), make its first scalar volume the input and show it; returns that volume node."""
        from DICOMLib import DICOMUtils

        nodes = [slicer.mrmlScene.GetNodeByID(i) for i in DICOMUtils.loadSeriesByUID([seriesUID])]
        volumes = [n for n in nodes if n and n.IsA("vtkMRMLScalarVolumeNode")]
        if not volumes:
            raise ValueError("The series loaded no scalar volume.")
        self._parameterNode.inputVolume = volumes[0]
        slicer.util.setSliceViewerLayers(background=volumes[0], fit=True)
        return volumes[0]

    def onModelSelected(self, index):
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index)

    def onPoll(self):
        try:
            if self.job is None or self.job.poll():
                self.timer.stop()
        except Exception as error:  # bringing the result into the scene failed: reported like an engine error
            self.onFinished({"error": str(error)})

    def onProgress(self, stage, fraction):
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.progressBar.format = f"{stage}: %p%"

    def onCancel(self):
        if self.job:
            self.ui.statusLabel.text = "Cancelling..."
            self.job.cancel()  # ends the engine's process tree; onFinished reports it

    def runInBackground(self, job, message):
        """Follow ``job`` (polled by the timer) with ``message`` on the status line."""
        self.job = job
        self.ui.statusLabel.text = message
        self.timer.start()
        self.updateGui()

    def jobEnded(self, result, failure, cancelled, progressBar=True) -> bool:
        """A background job's end: timer stopped, job cleared; an error (status line and message box, prefixed by
        ``failure``) or a cancel (``cancelled`` on the status line) shown, also on the progress bar when asked.
        True when the result is a success for the caller to show."""
        self.timer.stop()
        self.job = None
        if "error" in result:
            if progressBar:
                self.onProgress("failed", 0.0)
            self.ui.statusLabel.text = f"{failure}: {result['error']}"
            slicer.util.errorDisplay(f"{failure}:\n\n{result['error']}",
                                     windowTitle=type(self).__name__.removesuffix("Widget"))
            return False
        if result.get("cancelled"):
            if progressBar:
                self.onProgress("cancelled", 0.0)
            self.ui.statusLabel.text = cancelled
            return False
        return True

    def onBatchFinished(self, result):
        if self.jobEnded(result, "Batch failed", "Batch cancelled: finished ones are kept; run it again with Resume.",
                         progressBar=False):
            self.ui.statusLabel.text = (f"Batch: {len(result['done'])} done, {len(result['skipped'])} skipped, "
                                        f"{len(result['failed'])} failed; manifest batch.json and batch.csv in "
                                        f"{self.ui.batchOutputPathLineEdit.currentPath}.")
        self.updateGui()


def singletonParameterNode(moduleName, wrapper):
    """A module's singleton parameter node of slicer.mrmlScene (created when absent), in its wrapper class."""
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

    helper = ScriptedLoadableModuleLogic()
    helper.moduleName = moduleName
    return wrapper(helper.getParameterNode())


def engineMissing(test) -> bool:
    """In a module's self-test: True (and said) when the engine's packages are not installed, so the test skips."""
    missing = dependencies.missing_requirements()
    if missing:
        test.delayDisplay(f"Skipped: install the engine's packages first ({', '.join(map(str, missing))}).")
    return bool(missing)
