"""AutoSegMSKLogic: what the AutoSegMSK module does, on any MRML scene (Slicer's, or slicer-core's in tests)."""

from __future__ import annotations

from mskai import MskaiError
from mskai.models.tasks import BONE_MODEL, SEGMENTATION
from SlicerMSKCommon.jobs import installed_models
from SlicerMSKCommon.nodes import new_table, show_overlay

from . import segmentations as seg
from .job import CONFIDENCE_REFERENCE, LEAST_CERTAIN, BatchJob, SegmentationJob, SegmentationOptions


class AutoSegMSKLogic:
    """Runs the mskai bone engine on volume nodes and the DICOM database; holds no widget references.

    scene: a vtkMRMLScene (``slicer.mrmlScene`` in the application).
    Segmentation options (keyword arguments of segmentVolume / startSegmentation): model (id[@version] or
    package path; default: the bundled bone model), device ("auto", "cpu", "cuda"), fast, confidence,
    slab ((low, high) patient S in mm), postprocess, fillHoles, anatomical, smoothing (surface smoothing 0-1).
    """

    def __init__(self, scene):
        self.scene = scene

    # --- models and inputs ---------------------------------------------------------------------------

    @staticmethod
    def models() -> list[dict]:
        """Installed bone models: id, version, description, demo flag and a display title."""
        return installed_models(SEGMENTATION)

    @staticmethod
    def databaseSeries(databaseDir, modality="MR") -> list[dict]:
        """The image series of a Slicer DICOM database with their plane and size, for choosing an input.

        The rows name patients and studies: they are for display in the user's own Slicer, never written out.
        """
        from mskai.dicom import DicomDatabase, plan_volumes

        rows = []
        with DicomDatabase(databaseDir) as database:
            for series in database.scan().series:
                if not series.is_image or (modality and series.modality != modality):
                    continue
                try:
                    plans = plan_volumes(series)
                except MskaiError as exc:
                    plans, problem = [], str(exc)
                else:
                    problem = next((p.problem or p.uneven_gaps for p in plans if p.problem or p.uneven_gaps), "")
                rows.append({"seriesUID": series.uid, "patient": series.patient_name or series.patient_id or "",
                             "study": series.study_description or series.study_date or "",
                             "description": series.description or "", "files": len(series.files),
                             "plane": "/".join(sorted({p.plane.name for p in plans if p.plane})) or "?",
                             "size": ", ".join(sorted({"x".join(map(str, p.shape)) for p in plans})),
                             "problem": problem})
        return rows

    # --- segmentation --------------------------------------------------------------------------------

    def startSegmentation(self, volumeNode, onProgress=None, onFinished=None, **options) -> SegmentationJob:
        """Start the engine on ``volumeNode`` in a background process and return at once.

        Call ``job.poll()`` from a timer: it calls ``onProgress(stage, fraction)`` and, once, ``onFinished(result)``
        (see SegmentationJob). ``job.cancel()`` ends the process and leaves the scene as it was.
        """
        return SegmentationJob(self.scene, volumeNode, SegmentationOptions(**options), onProgress, onFinished)

    def segmentVolume(self, volumeNode, model=None, fast=False, confidence=False, **options):
        """Segment ``volumeNode`` and block until done; returns the new vtkMRMLSegmentationNode.

        The full result (confidence volume, statistics table, least certain bones) is kept in ``lastResult``.
        Raises MskaiError with the engine's message when the run fails.
        """
        job = self.startSegmentation(volumeNode, model=model, fast=fast, confidence=confidence, **options)
        result = job.wait()
        if "error" in result:
            raise MskaiError(result["error"])
        if result.get("cancelled"):
            raise MskaiError("Segmentation cancelled")
        self.lastResult = result
        return result["segmentation"]

    @staticmethod
    def confidenceNode(segmentationNode):
        """The confidence map made with a segmentation, or None."""
        return segmentationNode.GetNodeReference(CONFIDENCE_REFERENCE) if segmentationNode else None

    @staticmethod
    def leastCertainBones(segmentationNode) -> list[str]:
        """Bone names of a result, least certain first (empty without a confidence map)."""
        text = (segmentationNode.GetAttribute(LEAST_CERTAIN) or "") if segmentationNode else ""
        return [name for name in text.split(",") if name]

    def showConfidence(self, volumeNode, confidenceNode, opacity=0.4):
        """Show the confidence map (red: uncertain, green: certain) over the input in every slice view."""
        show_overlay(self.scene, volumeNode, confidenceNode, opacity)

    # --- tables --------------------------------------------------------------------------------------

    def statisticsTable(self, segmentationNode, confidenceNode=None, csvPath=None):
        """A table node of per-bone volume (mL), surface area (cm2) and, with a confidence map, mean confidence;
        computed from the segmentation as it is now. Also written as CSV when ``csvPath`` is given."""
        rows = seg.statistics_rows(self.scene, segmentationNode, confidenceNode)
        if csvPath:
            from mskai.outputs import write_csv

            write_csv(csvPath, rows)
        return new_table(self.scene, f"{segmentationNode.GetName()} statistics", rows)

    def compare(self, segmentationNode, referenceSegmentationNode):
        """A table node of Dice, HD95, mean surface distance and volume error per bone against a reference."""
        rows = seg.compare_rows(self.scene, segmentationNode, referenceSegmentationNode)
        return new_table(self.scene, f"{segmentationNode.GetName()} vs {referenceSegmentationNode.GetName()}", rows)

    # --- export --------------------------------------------------------------------------------------

    def exportModels(self, segmentationNode, folder, segmentNames=None, formats=("stl",)) -> list[str]:
        """Write surfaces of the chosen segments (all by default) as STL/OBJ/PLY files (LPS mm) into ``folder``."""
        return seg.export_models(segmentationNode, folder, segmentNames, tuple(formats))

    def exportSegNrrd(self, segmentationNode, path) -> str:
        """Save the segmentation as .seg.nrrd with Slicer's storage node."""
        return seg.write_seg_nrrd(self.scene, segmentationNode, path)

    def exportDicomSeg(self, segmentationNode, volumeNode, databaseDir, importer=None) -> str:
        """Write a DICOM SEG of the segmentation that references the DICOM series ``volumeNode`` was loaded from,
        and add it to the database (``importer(folder)`` when given: Slicer's own importer in the application).

        The SEG carries the patient and study of its source series, as DICOM requires.
        """
        from .dicom_seg import export_dicom_seg

        return export_dicom_seg(self.scene, segmentationNode, volumeNode, databaseDir, importer)

    # --- learning from corrections ------------------------------------------------------------------

    def saveTrainingCase(self, segmentationNode, volumeNode=None, libraryDir=None) -> dict:
        """Save the segmentation as corrected now, with its source volume, as a training case (replacing the
        volume's earlier case). libraryDir: a case library folder (default: the drawing model's own library).
        Returns the case record: pseudonymous id, voxels changed per bone, model; nothing that names the patient."""
        from mskai.cases import CaseLibrary

        from .cases import save_case

        return save_case(self.scene, segmentationNode, volumeNode, CaseLibrary(libraryDir) if libraryDir else None)

    @staticmethod
    def trainingCases(model=None, libraryDir=None) -> tuple[list[dict], list[str]]:
        """(case records, damaged case folders with the reason) of a model's library."""
        cases, problems = _library(model, libraryDir).cases()
        return [c.record for c in cases], problems

    @staticmethod
    def removeTrainingCase(caseId, model=None, libraryDir=None):
        _library(model, libraryDir).remove(caseId)

    @staticmethod
    def exportTrainingCases(zipPath, model=None, libraryDir=None) -> int:
        """Write the cases into a zip that `mskai train-seg` reads; returns how many."""
        return _library(model, libraryDir).export(zipPath)

    @staticmethod
    def startImprove(model=None, minutes=10.0, libraryDir=None, onProgress=None, onFinished=None):
        """Fine-tune ``model`` on its cases in a background process (`mskai cases improve`); poll the returned job
        from a timer, ``job.cancel()`` stops it leaving nothing behind. The result is the default model only if it is
        better on the held-out cases (``result["accepted"]``)."""
        from .cases import ImproveJob

        return ImproveJob(model, minutes, libraryDir, onProgress, onFinished)

    @staticmethod
    def useShippedModel(modelId=None) -> str:
        """Make the shipped version of a model (default: the bone model) the default again; returns the version."""
        from mskai.models.registry import set_default, shipped_version

        modelId = modelId or BONE_MODEL
        version = shipped_version(modelId)
        set_default(modelId, version)
        return version

    # --- batch ---------------------------------------------------------------------------------------

    @staticmethod
    def startBatch(databaseDir, outputDir, resume=True, onProgress=None, onFinished=None, **options) -> BatchJob:
        """processDatabase in a background process (`mskai batch segment`), for the GUI: returns at once;
        poll the job from a timer, ``job.cancel()`` stops it keeping the finished series."""
        return BatchJob(databaseDir, outputDir, resume, onProgress, onFinished, **options)

    @staticmethod
    def processDatabase(databaseDir, outputDir, resume=True, seriesFilter=None, model=None, cluster=None,
                        **options) -> dict:
        """Segment every MR image series of a DICOM database, each into its own folder under ``outputDir``.

        Shares `mskai batch segment`'s runner: a failing series is recorded and the batch goes on; with ``resume``
        finished series are skipped. seriesFilter: a callable taking a series summary dict, True to process it.
        cluster: a ``mskai.runner.cluster.ClusterOptions`` (default: a local Dask cluster, one worker per core).
        Returns {"done", "skipped", "failed", "pending"}, also written to ``outputDir``/batch.json and batch.csv.
        """
        from mskai.runner.batch import run_batch

        return run_batch(databaseDir, outputDir, resume=resume, series_filter=seriesFilter, model=model,
                         cluster=cluster, **options)



def _library(model, folder):
    """A case library: ``folder`` when given, else the library of ``model`` (id[@version]; None: the bone model)."""
    from mskai.cases import CaseLibrary

    return CaseLibrary(folder) if folder else CaseLibrary.for_model((model or BONE_MODEL).partition("@")[0])
