"""ACLClassifier: anterior cruciate ligament classification of sagittal knee MR (the Qt widget, module class and
self-test).

The logic lives in ACLClassifierLib (MRML glue, no Qt) and the work runs in the mskai engine's own process. The Slicer
glue both modules share lives in SlicerMSKCommon (widget base, engine jobs, MRML node helpers).
"""

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)

import mskai
from SlicerMSKCommon.widget import EngineWidget, engineMissing, guiAction, modelKey, singletonParameterNode

EVIDENCE_ATTRIBUTE = "ACLClassifier.evidence"  # ACLClassifierLib.results.EVIDENCE: the result selector lists these


class ACLClassifier(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "ACLClassifier"
        parent.categories = ["Quantification"]
        parent.contributors = ["SlicerAutoSegMSK developers"]
        parent.helpText = (
            "Classifies the anterior cruciate ligament on the sagittal knee series (healthy, minor strain, partial or "
            f"complete rupture) and shows a heat map of the evidence.<p><b>{mskai.DEMO_NOTICE}</b></p><ol>"
            "<li>Choose a sagittal volume, or pick a study from the DICOM list: the sagittal series is chosen for "
            "you and the module says which and why.</li><li>Pick the model and press Classify: it runs in the "
            "background; Cancel stops it.</li><li>Read the verdict and the probabilities (table, bar chart); the "
            "evidence map is shown over the slices, which jump to the key slice; step through the slices with the "
            "strongest evidence.</li><li>Save the report (JSON, CSV), the evidence map and a PNG of the key slice."
            "</li></ol>The bundled model (0.4.0) reads anatomy: it segments the ACL and PCL for the Segment Editor, "
            "measures the tear signs (continuity, gap, length, angles to the Blumensaat line and the plateau, signal, "
            "notch) into the table, draws the Blumensaat line and the footprints as markups, and grades from the signs "
            "or says <i>indeterminate</i> and why; after correcting the segments press <i>Measure signs again</i>. "
            "The heat map is the image classifier's evidence, one more view: that classifier alone was near chance on "
            "27 real exams checked independently (AUC 0.58), so it does not vote. Checked on synthetic knees of unseen "
            "subjects only (torn vs intact AUC 0.955, specificity 0.90): a demonstration, not a diagnosis.<p>Whole "
            "databases: the Batch section, or ACLClassifierLogic.processDatabase in the Python console (see the "
            "README).")
        parent.acknowledgementText = (
            "The demo model is trained on synthetic sagittal knees rendered from femur/tibia masks of Osteoarthritis "
            "Initiative knees (wilsonkchung/knee-osteoarthritis-classification-using-bone-distance, Apache-2.0) and "
            "the pymskt knee sample data (MIT); the ligament model also on the Visible Human Female's ACL and PCL "
            "profiles (CC BY 4.0, Andreassen et al. 2022). See NOTICE.md.")


@parameterNodeWrapper
class ACLClassifierParameterNode:
    """What the user chose, saved with the scene. model: "id@version"; result: the evidence volume shown."""

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""
    result: vtkMRMLScalarVolumeNode
    showOverlay: bool = True
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.4


def parameterNode():
    """The module's singleton parameter node of slicer.mrmlScene (created when absent)."""
    return singletonParameterNode("ACLClassifier", ACLClassifierParameterNode)


class ACLClassifierWidget(EngineWidget):
    moduleParameterNode = staticmethod(parameterNode)
    logicClass = ("ACLClassifierLib", "ACLClassifierLogic")
    readyText = "Select a sagittal volume, or pick a study from the DICOM database."
    noModelText = "No ACL model is installed."

    def __init__(self, parent=None):
        EngineWidget.__init__(self, parent)
        self._evidence, self._evidenceIndex = [], 0

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui = self.loadModuleUI("ACLClassifier")
        ui.resultSelector.addAttribute("vtkMRMLScalarVolumeNode", EVIDENCE_ATTRIBUTE, "true")
        for button, slot in ((ui.applyButton, self.onApply), (ui.cancelButton, self.onCancel),
                             (ui.installDependenciesButton, self.onInstallDependencies),
                             (ui.refreshStudiesButton, self.onRefreshStudies), (ui.loadStudyButton, self.onLoadStudy),
                             (ui.keySliceButton, self.onKeySlice), (ui.nextEvidenceButton, self.onNextEvidence),
                             (ui.showChartButton, self.onShowChart), (ui.saveButton, self.onSave),
                             (ui.remeasureButton, self.onRemeasure),
                             (ui.processDatabaseButton, self.onProcessDatabase)):
            button.connect("clicked(bool)", slot)
        ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        ui.dicomStudyTable.connect("itemSelectionChanged()", self.updateGui)
        ui.showOverlayCheckBox.connect("toggled(bool)", self.onShowOverlay)
        ui.opacitySliderWidget.connect("valueChanged(double)", self.onOpacityChanged)
        ui.resultSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onResultChanged)
        self.startObserving()

    def currentResult(self):
        """The shown result (dict, see ACLClassifierLogic.resultOf), or None."""
        p = self._parameterNode
        if not (self.logic and p and self.logic.isResult(p.result)):
            return None
        return self.logic.resultOf(p.result)

    def inputMessage(self, volume):
        if not (volume and self.logic):
            return ""
        plane = self.logic.planeOf(volume)
        if plane == "sagittal":
            return "Plane: sagittal."
        return (f"This volume is {plane}: the ACL classifier reads sagittal slices. Choose the sagittal series, or "
                "pick a study below and the sagittal series is chosen for you.")

    def updateGui(self, caller=None, event=None):
        p, ui, running = self._parameterNode, self.ui, self.job is not None
        if not p:
            return
        self.showModel()
        ui.inputPlaneLabel.text = self.inputMessage(p.inputVolume)
        ui.applyButton.enabled = bool(p.inputVolume) and not running
        ui.cancelButton.enabled = running
        ui.inputCollapsibleButton.enabled = ui.modelCollapsibleButton.enabled = not running
        ui.processDatabaseButton.enabled = not running
        ui.loadStudyButton.enabled = bool(ui.dicomStudyTable.selectedItems())
        result = self.currentResult()
        for widget in (ui.showOverlayCheckBox, ui.opacitySliderWidget, ui.keySliceButton, ui.nextEvidenceButton,
                       ui.showChartButton, ui.saveButton):
            widget.enabled = bool(result)
        ui.remeasureButton.enabled = bool(result and result["ligaments"]) and not running
        ui.verdictLabel.text = f"ACL: {self.verdictOf(result)}" if result else "No result yet."
        ui.resultReasonLabel.text = f"Series: {result['seriesReason']}" if result else ""

    @guiAction("Failed to list the DICOM database.", waitCursor=True)
    def onRefreshStudies(self):
        self.fillDicomTable(self.ui.dicomStudyTable, self.getLogic().databaseStudies(self.databaseDirectory()),
                            ("patient", "study", "date", "series", "modalities"), "studyUID", "studies")

    @guiAction("Failed to pick the sagittal series of the study.", waitCursor=True)
    def onLoadStudy(self):
        study = self.ui.dicomStudyTable.selectedItems()[0].data(qt.Qt.UserRole)
        uid, reason = self.getLogic().chooseStudySeries(self.databaseDirectory(), study)
        volume = self.loadDicomSeries(uid)
        self.getLogic().markChosen(volume, reason)
        self.ui.seriesReasonLabel.text = f"Picked: {reason}"

    @guiAction("Failed to start the classification.")
    def onApply(self):
        p = self.inputToRun("Select a sagittal input volume first.")
        if p is None:
            return
        job = self.getLogic().startClassification(p.inputVolume, model=p.model or None,
                                                  onProgress=self.onProgress, onFinished=self.onFinished)
        self.onProgress("starting", 0.0)
        self.runInBackground(job, "Classifying in the background: Slicer stays usable.")

    def onFinished(self, result):
        if self.jobEnded(result, "Classification failed", "Cancelled: the scene is as it was."):
            parameterNode().result = result["cam"]  # also when the module is not shown
            self.onProgress("done", 1.0)
            demo = result["report"].get("model", {}).get("demo", True)
            self.ui.statusLabel.text = (f"Done: {self.verdictOf(result)}. "
                                        + (mskai.DEMO_NOTICE if demo else ""))
            self.onResultChanged(result["cam"])
        self.updateGui()

    @guiAction("Failed to show the result.")
    def onResultChanged(self, node):
        """Show a result: probabilities table, overlay with legend (when ticked), views on the key slice."""
        self._evidence, self._evidenceIndex = [], 0
        if not (self.logic and self.logic.isResult(node)):
            self.ui.evidenceSliceLabel.text = ""
            return
        result = self.logic.resultOf(node)
        self.ui.probabilitiesTableView.setMRMLTableNode(result["table"])
        self._evidence = self.logic.evidenceSlices(node)
        if self._parameterNode.showOverlay:
            self.logic.showResult(node, opacity=self._parameterNode.opacity)
        else:
            self.logic.jumpToSlice(node, result["keySlice"])
        self.showEvidenceIndex()

    def showEvidenceIndex(self):
        if not self._evidence:
            self.ui.evidenceSliceLabel.text = ""
            return
        n = self._evidenceIndex
        which = "the key slice" if n == 0 else f"number {n + 1} by evidence"
        self.ui.evidenceSliceLabel.text = (f"Slice {self._evidence[n] + 1}: {which} "
                                           f"(of {len(self._evidence)} slices with the strongest evidence)")

    @guiAction("Failed to jump to the slice.")
    def onKeySlice(self):
        self._evidenceIndex = 0
        self.logic.jumpToSlice(self._parameterNode.result, self._evidence[0])
        self.showEvidenceIndex()

    @guiAction("Failed to jump to the slice.")
    def onNextEvidence(self):
        if not self._evidence:
            raise ValueError("This result has no slice with evidence.")
        self._evidenceIndex = (self._evidenceIndex + 1) % len(self._evidence)
        self.logic.jumpToSlice(self._parameterNode.result, self._evidence[self._evidenceIndex])
        self.showEvidenceIndex()

    @guiAction("Failed to show the evidence overlay.")
    def onShowOverlay(self, checked):
        cam = self._parameterNode.result if self._parameterNode else None
        if not (self.logic and self.logic.isResult(cam)):
            return
        if checked:
            self.logic.showResult(cam, opacity=self._parameterNode.opacity, jump=False)
        else:
            slicer.util.setSliceViewerLayers(foreground=None)
            legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(cam)
            if legend:
                legend.SetVisibility(False)

    def onOpacityChanged(self, value):
        if self._parameterNode and self._parameterNode.showOverlay and self.currentResult():
            slicer.util.setSliceViewerLayers(foregroundOpacity=value)

    def verdictOf(self, result) -> str:
        return self.logic.verdict(result["probabilities"], result["predicted"], result["reason"])

    @guiAction("Failed to measure the signs again.", waitCursor=True)
    def onRemeasure(self):
        anatomy = self.getLogic().remeasureSigns(self._parameterNode.result)
        self.ui.statusLabel.text = (f"Signs measured again on the corrected segmentation: "
                                    f"{self.logic.describeAnatomy(anatomy)}.")
        self.updateGui()

    @guiAction("Failed to show the bar chart.")
    def onShowChart(self):
        slicer.modules.plots.logic().ShowChartInLayout(self.currentResult()["chart"])

    @guiAction("Failed to save the result.", waitCursor=True)
    def onSave(self):
        folder = self.ui.saveFolderPathLineEdit.currentPath
        if not folder:
            raise ValueError("Choose a folder to save into.")
        files = self.getLogic().saveResult(self._parameterNode.result, folder)
        self.ui.saveFolderPathLineEdit.addCurrentPathToHistory()
        self.ui.statusLabel.text = f"Saved {', '.join(Path(f).name for f in files)} to {folder}."

    @guiAction("Failed to start the batch.")
    def onProcessDatabase(self):
        self.startBatch("Classifying every study")


class ACLClassifierTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ClassifySyntheticStudy()

    def test_ClassifySyntheticStudy(self):
        """The headless tests' scenario in the application: synthetic knee studies in a DICOM database (one
        sagittal, one coronal), the sagittal series picked and classified, the evidence shown on the slice views."""
        if engineMissing(self):
            return
        from ACLClassifierLib import ACLClassifierLogic
        from SlicerMSKCommon.nodes import same_geometry
        from mskai import MskaiError
        from mskai.dicom import index_folder
        from mskai.runner.engine import EngineJob

        logic = ACLClassifierLogic(slicer.mrmlScene)
        models = logic.models()
        if not models:
            self.delayDisplay("Skipped: no ACL model is installed.")
            return
        from mskai.models.tasks import ACL_MODEL

        model = next((m for m in models if m["id"] == ACL_MODEL), models[0])
        self.delayDisplay("Writing synthetic knee studies (a sagittal and a coronal series)")
        folder = Path(tempfile.mkdtemp(prefix="ACLClassifierTest-"))
        try:
            for plane in ("sagittal", "coronal"):
                job = EngineJob(["synth", "knee", folder / plane, "--plane", plane, "--seed", "7",
                                 "--spacing", "0.6", "0.6", "3.0"]).start()
                job.wait()
                self.assertEqual(job.state, "done", job.error)
            index_folder(folder, folder / "db")
            studies = logic.databaseStudies(folder / "db")
            self.assertEqual(len(studies), 2)
            picked, refused = [], []
            for study in studies:
                try:
                    picked.append(logic.loadStudy(folder / "db", study["studyUID"]))
                except MskaiError as error:
                    refused.append(str(error))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        (volume, reason), = picked
        self.assertIn("the only sagittal series", reason)
        self.assertIn("no sagittal series: found coronal", refused[0])
        self.assertEqual(logic.planeOf(volume), "sagittal")
        self.delayDisplay("Classifying")
        result = logic.classifyVolume(volume, model=modelKey(model))
        self.assertAlmostEqual(sum(result["probabilities"].values()), 1.0, places=3)
        self.assertTrue(same_geometry(result["cam"], volume))
        self.assertTrue(0 <= result["keySlice"] < volume.GetImageData().GetDimensions()[result["keySliceAxis"]])
        logic.showResult(result["cam"])
        verdict = logic.verdict(result["probabilities"], result["predicted"], result["reason"])
        self.delayDisplay(f"Test passed: {verdict}")
