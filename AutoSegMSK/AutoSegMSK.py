"""AutoSegMSK: lower-limb bone segmentation of MR volumes (the Qt widget, module class and self-test).

The logic lives in AutoSegMSKLib (MRML glue, no Qt) and the work runs in the mskai engine's own process.
AutoSegMSKLib imports the engine's third-party packages, so it is imported only once they are found or installed.
"""

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)

import mskai
from SlicerMSKCommon.widget import EngineWidget, engineMissing, guiAction, singletonParameterNode


class AutoSegMSK(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "AutoSegMSK"
        parent.categories = ["Segmentation"]
        parent.contributors = ["SlicerAutoSegMSK developers"]
        parent.helpText = (
            f"Segments the lower-limb bones (tibia, femur, fibula, hip bone, patella) in MR volumes.<p><b>"
            f"{mskai.DEMO_NOTICE}</b></p><ol><li>Choose the input volume, or load an MR series from the DICOM list."
            "</li><li>Pick the model and options (fast mode on a CPU; a slab segments part of the S range only).</li>"
            "<li>Press Segment: it runs in the background; Cancel stops it.</li><li>Review the least certain bones "
            "first (confidence overlay) and correct them in the Segment Editor.</li><li>Export surfaces, .seg.nrrd, "
            "DICOM SEG or statistics; compare with a reference.</li></ol>The first run asks before installing the "
            "Python packages the engine needs (PyTorch, MONAI, pydicom...); the dialog also says how to do it offline.")
        parent.acknowledgementText = (
            "The demo models are trained on synthetic images rendered from: the pymskt knee sample data (MIT); "
            "femur/tibia masks of Osteoarthritis Initiative knees (wilsonkchung/knee-osteoarthritis-classification-"
            "using-bone-distance, Apache-2.0); a corrected PD knee label map (hmc-humble/patellar-instability-skm, "
            "BSD-3-Clause); pelvis and thigh labels of the Pelvic Reference Data (yuta-hi/pelvic-annonation, MIT). "
            "See NOTICE.md.")


@parameterNodeWrapper
class AutoSegMSKParameterNode:
    """What the user chose, saved with the scene. model: "id@version" of the chosen model."""

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    fast: bool = False
    slabEnabled: bool = False
    slabLow: Annotated[float, WithinRange(-5000.0, 5000.0)] = -100.0
    slabHigh: Annotated[float, WithinRange(-5000.0, 5000.0)] = 100.0
    postprocess: bool = True
    fillHoles: bool = True
    anatomical: bool = True
    smoothing: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    confidence: bool = False
    segmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode


def parameterNode():
    """The module's singleton parameter node of slicer.mrmlScene (created when absent)."""
    return singletonParameterNode("AutoSegMSK", AutoSegMSKParameterNode)


class AutoSegMSKWidget(EngineWidget):
    moduleParameterNode = staticmethod(parameterNode)
    logicClass = ("AutoSegMSKLib", "AutoSegMSKLogic")
    readyText, noModelText = "Select an input volume.", "No model is installed."

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        ui = self.loadModuleUI("AutoSegMSK")
        for button, slot in ((ui.applyButton, self.onApply), (ui.cancelButton, self.onCancel),
                             (ui.installDependenciesButton, self.onInstallDependencies),
                             (ui.refreshSeriesButton, self.onRefreshSeries), (ui.loadSeriesButton, self.onLoadSeries),
                             (ui.segmentEditorButton, self.onCorrect), (ui.exportModelsButton, self.onExportModels),
                             (ui.saveSegNrrdButton, self.onSaveSegNrrd), (ui.exportDicomSegButton, self.onDicomSeg),
                             (ui.statisticsButton, self.onStatistics), (ui.saveStatisticsButton, self.onSaveStatistics),
                             (ui.compareButton, self.onCompare), (ui.processDatabaseButton, self.onProcessDatabase),
                             (ui.saveCaseButton, self.onSaveCase), (ui.refreshCasesButton, self.onRefreshCases),
                             (ui.removeCaseButton, self.onRemoveCase), (ui.exportCasesButton, self.onExportCases),
                             (ui.improveButton, self.onImprove), (ui.useShippedButton, self.onUseShipped)):
            button.connect("clicked(bool)", slot)
        ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        ui.dicomSeriesTable.connect("itemSelectionChanged()", self.updateGui)
        ui.casesListWidget.connect("itemSelectionChanged()", self.updateGui)
        ui.slabCheckBox.connect("toggled(bool)", self.onSlabToggled)
        ui.showConfidenceCheckBox.connect("toggled(bool)", self.onShowConfidence)
        ui.segmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.startObserving()

    def updateGui(self, caller=None, event=None):
        p, ui, running = self._parameterNode, self.ui, self.job is not None
        if not p:
            return
        self.showModel()
        ui.slabLowSpinBox.enabled = ui.slabHighSpinBox.enabled = p.slabEnabled
        ui.fillHolesCheckBox.enabled = ui.anatomicalCheckBox.enabled = p.postprocess
        ui.applyButton.enabled = bool(p.inputVolume) and not running
        ui.cancelButton.enabled = running
        ui.inputCollapsibleButton.enabled = ui.modelCollapsibleButton.enabled = not running
        for button in (ui.segmentEditorButton, ui.exportModelsButton, ui.saveSegNrrdButton, ui.exportDicomSegButton,
                       ui.statisticsButton, ui.saveStatisticsButton):
            button.enabled = bool(p.segmentation)
        ui.compareButton.enabled = bool(p.segmentation and p.referenceSegmentation)
        ui.saveCaseButton.enabled = bool(p.segmentation) and not running
        ui.improveButton.enabled = ui.exportCasesButton.enabled = not running
        ui.removeCaseButton.enabled = bool(ui.casesListWidget.selectedItems()) and not running
        ui.showConfidenceCheckBox.enabled = bool(self.logic and self.logic.confidenceNode(p.segmentation))
        ui.loadSeriesButton.enabled = bool(ui.dicomSeriesTable.selectedItems())

    @guiAction("Failed to list the DICOM database.", waitCursor=True)
    def onRefreshSeries(self):
        self.fillDicomTable(self.ui.dicomSeriesTable, self.getLogic().databaseSeries(self.databaseDirectory()),
                            ("patient", "study", "description", "plane", "size"), "seriesUID", "MR series",
                            tooltip=lambda row: row.get("problem") or f"{row['files']} files")

    @guiAction("Failed to load the series.", waitCursor=True)
    def onLoadSeries(self):
        self.loadDicomSeries(self.ui.dicomSeriesTable.selectedItems()[0].data(qt.Qt.UserRole))

    def onSlabToggled(self, checked):
        p, bounds = self._parameterNode, [0.0] * 6
        if checked and p and p.inputVolume:  # start from the volume's own S range
            p.inputVolume.GetRASBounds(bounds)
            if not bounds[4] <= p.slabLow < p.slabHigh <= bounds[5]:
                p.slabLow, p.slabHigh = round(bounds[4], 1), round(bounds[5], 1)

    @guiAction("Failed to start the segmentation.")
    def onApply(self):
        p = self.inputToRun("Select an input volume first.")
        if p is None:
            return
        if p.slabEnabled and not p.slabLow < p.slabHigh:
            raise ValueError("The slab's inferior end must be below its superior end.")
        options = {"model": p.model or None, "device": p.device, "fast": p.fast, "confidence": p.confidence,
                   "slab": (p.slabLow, p.slabHigh) if p.slabEnabled else None, "postprocess": p.postprocess,
                   "fillHoles": p.fillHoles, "anatomical": p.anatomical, "smoothing": p.smoothing}
        job = self.getLogic().startSegmentation(p.inputVolume, onProgress=self.onProgress,
                                                onFinished=self.onFinished, **options)
        self.onProgress("starting", 0.0)
        self.runInBackground(job, "Segmenting in the background: Slicer stays usable.")

    def onFinished(self, result):
        if self.jobEnded(result, "Segmentation failed", "Cancelled: the scene is as it was."):
            segmentation = result["segmentation"]
            self.ui.showConfidenceCheckBox.checked = False
            parameterNode().segmentation = segmentation  # also when the module is not shown
            self.ui.statisticsTableView.setMRMLTableNode(result["table"])
            self.onProgress("done", 1.0)
            demo = result["report"].get("model", {}).get("demo", True)
            self.ui.statusLabel.text = (f"Done: {segmentation.GetSegmentation().GetNumberOfSegments()} bones in "
                                        f"'{segmentation.GetName()}'. " + (mskai.DEMO_NOTICE if demo else ""))
        self.updateGui()

    def sourceVolume(self):
        """The volume the chosen segmentation was made on (its reference geometry), else the input volume."""
        p = self._parameterNode
        role = vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        return p.segmentation.GetNodeReference(role) or p.inputVolume

    def onSegmentationChanged(self, node):
        self.ui.leastCertainListWidget.clear()
        if self.logic:
            self.ui.leastCertainListWidget.addItems(self.logic.leastCertainBones(node))
        self.ui.exportSegmentsListWidget.clear()
        segmentation = node.GetSegmentation() if node else None
        for i in range(segmentation.GetNumberOfSegments() if segmentation else 0):
            item = qt.QListWidgetItem(segmentation.GetNthSegment(i).GetName())
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked)
            self.ui.exportSegmentsListWidget.addItem(item)

    @guiAction("Failed to show the confidence map.")
    def onShowConfidence(self, checked):
        confidence = self.getLogic().confidenceNode(self._parameterNode.segmentation) if self._parameterNode else None
        if not confidence:
            return
        legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(confidence)
        if checked:
            self.getLogic().showConfidence(self.sourceVolume(), confidence)
            legend = legend or slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(confidence)
        else:
            slicer.util.setSliceViewerLayers(foreground=None)
        if legend:
            legend.SetVisibility(checked)

    @guiAction("Failed to open the Segment Editor.")
    def onCorrect(self):
        segmentation, volume = self._parameterNode.segmentation, self.sourceVolume()
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume)

    @guiAction("Failed to export the surfaces.", waitCursor=True)
    def onExportModels(self):
        ui = self.ui
        formats = [f for f, box in (("stl", ui.stlCheckBox), ("obj", ui.objCheckBox), ("ply", ui.plyCheckBox))
                   if box.checked]
        items = [ui.exportSegmentsListWidget.item(i) for i in range(ui.exportSegmentsListWidget.count)]
        names = [item.text() for item in items if item.checkState() == qt.Qt.Checked]
        folder = ui.exportFolderPathLineEdit.currentPath
        if not folder or not formats or not names:
            raise ValueError("Choose a folder and tick at least one format and one segment.")
        files = self.getLogic().exportModels(self._parameterNode.segmentation, folder, segmentNames=names,
                                             formats=formats)
        ui.exportFolderPathLineEdit.addCurrentPathToHistory()
        ui.statusLabel.text = f"Wrote {len(files)} surface file(s) to {folder}."

    def saveFileName(self, caption, suffix, filter):
        name = f"{self._parameterNode.segmentation.GetName()}{suffix}"
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), caption, name, filter)
        return path if not path or path.endswith(suffix) else path + suffix

    @guiAction("Failed to save the segmentation.")
    def onSaveSegNrrd(self):
        path = self.saveFileName("Save segmentation", ".seg.nrrd", "Segmentation (*.seg.nrrd)")
        if path:
            self.ui.statusLabel.text = f"Saved {self.getLogic().exportSegNrrd(self._parameterNode.segmentation, path)}."

    @guiAction("Failed to write the DICOM SEG.", waitCursor=True)
    def onDicomSeg(self):
        from DICOMLib import DICOMUtils

        def importer(folder):
            if not DICOMUtils.importDicom(folder):
                raise RuntimeError(f"Slicer could not add {folder} to the DICOM database.")

        path = self.getLogic().exportDicomSeg(self._parameterNode.segmentation, self.sourceVolume(),
                                              self.databaseDirectory(), importer=importer)
        self.ui.statusLabel.text = f"Wrote {path} and added it to the DICOM database."

    @guiAction("Failed to compute the statistics.", waitCursor=True)
    def onStatistics(self, csvPath=None):
        segmentation = self._parameterNode.segmentation
        logic = self.getLogic()
        table = logic.statisticsTable(segmentation, logic.confidenceNode(segmentation), csvPath=csvPath or None)
        self.ui.statisticsTableView.setMRMLTableNode(table)
        self.ui.statusLabel.text = f"Saved {csvPath}." if csvPath else "Statistics of the segmentation as it is now."

    def onSaveStatistics(self):
        path = self.saveFileName("Save statistics", ".csv", "CSV (*.csv)")
        if path:
            self.onStatistics(path)

    @guiAction("Failed to compare the segmentations.", waitCursor=True)
    def onCompare(self):
        p = self._parameterNode
        self.ui.compareTableView.setMRMLTableNode(self.getLogic().compare(p.segmentation, p.referenceSegmentation))

    @guiAction("Failed to start the batch.")
    def onProcessDatabase(self):
        p = self._parameterNode
        self.startBatch("Segmenting every MR series", device=p.device, fast=p.fast, confidence=p.confidence)


    # --- learning from corrections ---

    def modelId(self):
        return (self._parameterNode.model or "").partition("@")[0] or None

    @guiAction("Failed to save the training case.", waitCursor=True)
    def onSaveCase(self):
        record = self.getLogic().saveTrainingCase(self._parameterNode.segmentation, self.sourceVolume())
        changed = record["changed_voxels"]
        self.ui.statusLabel.text = (f"Saved {record['case']} in the case library"
                                    + (f" ({sum(changed.values())} voxels corrected)." if changed else "."))
        self.onRefreshCases()

    @guiAction("Failed to list the training cases.")
    def onRefreshCases(self):
        records, damaged = self.getLogic().trainingCases(self.modelId())
        cases = self.ui.casesListWidget
        cases.clear()
        for r in records:
            changed = "?" if r["changed_voxels"] is None else sum(r["changed_voxels"].values())
            item = qt.QListWidgetItem(f"{r['case']}  saved {r['saved_utc']}  {changed} voxels corrected")
            item.setData(qt.Qt.UserRole, r["case"])
            cases.addItem(item)
        cases.addItems([f"damaged, skipped: {problem}" for problem in damaged])
        self.updateGui()

    @guiAction("Failed to remove the training case.")
    def onRemoveCase(self):
        case = self.ui.casesListWidget.selectedItems()[0].data(qt.Qt.UserRole)
        if case and self.confirm(f"Remove {case} from the case library?"):
            self.getLogic().removeTrainingCase(case, self.modelId())
            self.onRefreshCases()

    @guiAction("Failed to export the training cases.", waitCursor=True)
    def onExportCases(self):
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export cases", "cases.zip", "Zip (*.zip)")
        if path:
            count = self.getLogic().exportTrainingCases(path, self.modelId())
            self.ui.statusLabel.text = f"Exported {count} case(s) to {path}."

    @guiAction("Failed to start improving the model.")
    def onImprove(self):
        job = self.getLogic().startImprove(self._parameterNode.model or None, self.ui.improveMinutesSpinBox.value,
                                           onProgress=self.onProgress, onFinished=self.onImproved)
        self.runInBackground(job, "Improving the model in the background: Slicer stays usable, Cancel stops it.")

    def onImproved(self, result):
        if self.jobEnded(result, "Improving the model failed", "Cancelled: no new model was written."):
            figures = ", ".join(f"{bone} {result['before'][bone]['dice']:.2f} -> {after['dice']:.2f}"
                                for bone, after in result["after"].items() if bone in result["before"])
            verdict = ("better on the held-out cases: now the default" if result["accepted"] else
                       "NOT better on the held-out cases: kept aside, the default is unchanged")
            self.fillModels(chooseDefault=True)
            self.ui.statusLabel.text = f"{result['model']} {verdict} (held-out Dice {figures})."
        self.updateGui()

    @guiAction("Failed to go back to the shipped model.")
    def onUseShipped(self):
        version = self.getLogic().useShippedModel(self.modelId())
        self.fillModels(chooseDefault=True)
        self.ui.statusLabel.text = f"Using the shipped {self.modelId()} {version} again."


class AutoSegMSKTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSyntheticKnee()

    def test_SegmentSyntheticKnee(self):
        """The headless tests' scenario in the application: a synthetic knee in, five named bones out."""
        if engineMissing(self):
            return
        from AutoSegMSKLib import AutoSegMSKLogic
        from SlicerMSKCommon.nodes import table_rows
        from mskai.runner.engine import EngineJob
        from mskai.segment.labels import BONES

        self.delayDisplay("Rendering a synthetic knee MR series")
        folder = Path(tempfile.mkdtemp(prefix="AutoSegMSKTest-"))
        try:
            for args in (["synth", "knee", folder / "dicom", "--seed", "7"],
                         ["dicom", "convert", folder / "dicom", folder / "knee.nrrd"]):
                job = EngineJob(args).start()
                job.wait()
                self.assertEqual(job.state, "done", job.error)
            volume = slicer.util.loadVolume(str(folder / "knee.nrrd"))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Segmenting")
        logic = AutoSegMSKLogic(slicer.mrmlScene)
        segmentation = logic.segmentVolume(volume, device="cpu", confidence=True)
        segments = segmentation.GetSegmentation()
        names = [segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())]
        self.assertEqual(names, [bone.name for bone in BONES])
        role = vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        self.assertEqual(segmentation.GetNodeReference(role).GetID(), volume.GetID())
        femurId = segments.GetSegmentIdBySegmentName("femur")
        femur = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, femurId, volume)
        self.assertEqual(femur.shape, slicer.util.arrayFromVolume(volume).shape)
        rows = {row["segment"]: row for row in table_rows(logic.lastResult["table"])}
        self.assertGreater(rows["femur"]["volume_ml"], 40)
        self.assertGreater(rows["tibia"]["volume_ml"], 20)
        self.assertIsNotNone(logic.lastResult["confidence"])
        self.delayDisplay("Test passed")
