"""ACLClassifierLogic: what the ACLClassifier module does, on any MRML scene (Slicer's, or slicer-core's in tests)."""

from __future__ import annotations

import slicer

from mskai import MskaiError
from mskai.models.tasks import ACL_CLASSIFICATION, ACL_MODEL
from mskai.volume import LPS_TO_RAS
from SlicerMSKCommon.jobs import EngineBatchJob, installed_models
from SlicerMSKCommon.nodes import add_volume_node, dicom_study_item, ijk_to_ras

from . import results
from .job import ClassificationJob


class ACLClassifierLogic:
    """Classifies the anterior cruciate ligament on sagittal knee MR with the mskai engine; no widget references.

    scene: a vtkMRMLScene (``slicer.mrmlScene`` in the application).
    model (for classifyVolume, startClassification, startBatch, processDatabase): an ACL model id[@version] or a
    package path; None: the bundled demo model (mskai-acl-demo).
    """

    def __init__(self, scene):
        self.scene = scene

    # --- models and inputs ---------------------------------------------------------------------------

    @staticmethod
    def models() -> list[dict]:
        """Installed ACL models: id, version, description, demo flag and a display title."""
        return installed_models(ACL_CLASSIFICATION)

    @staticmethod
    def databaseStudies(databaseDir) -> list[dict]:
        """The studies of a Slicer DICOM database (from its index only: fast): studyUID, patient, study
        (description), date, series (count), modalities. For display in the user's own Slicer, never written out."""
        from mskai.dicom import DicomDatabase

        rows = []
        with DicomDatabase(databaseDir) as database:
            for patient in database.patients():
                for study in database.studies(patient["UID"]):
                    series = database.series(study["StudyInstanceUID"])
                    rows.append({"studyUID": study["StudyInstanceUID"],
                                 "patient": patient["PatientsName"] or patient["PatientID"] or "",
                                 "study": study["StudyDescription"] or "", "date": study["StudyDate"] or "",
                                 "series": len(series),
                                 "modalities": ", ".join(sorted({s["Modality"] or "?" for s in series}))})
        return rows

    @staticmethod
    def _chosen(databaseDir, studyUID, showDescriptions):
        """(volume plan, reason, study row, patient row) of the series `mskai classify` reads in a study."""
        from mskai.acl.series import choose_series
        from mskai.dicom import DicomDatabase

        with DicomDatabase(databaseDir) as database:
            uids = [s["SeriesInstanceUID"] for s in database.series(studyUID) if database.files(s["SeriesInstanceUID"])]
            if not uids:
                raise MskaiError("The study has no images in the DICOM database")
            study = next((s for p in database.patients() for s in database.studies(p["UID"])
                          if s["StudyInstanceUID"] == studyUID), {})
            patient = next((p for p in database.patients() if p["UID"] == study.get("PatientsUID")), {})
            scan = database.scan(uids)
        plan, reason = choose_series(scan, show_descriptions=showDescriptions)
        return plan, reason, study, patient

    def chooseStudySeries(self, databaseDir, studyUID, showDescriptions=False) -> tuple[str, str]:
        """(Series Instance UID, reason) of the sagittal series of a study in a DICOM database, chosen as `mskai
        classify` does (mskai.acl.series: sagittal, then PD > T2 > T1, fat suppression, slices, pixels, echo time).

        The reason names the series by number and says why it won, without patient data (quoting its description
        only with ``showDescriptions``). MskaiError when the study has no usable sagittal series, naming the planes
        it has. In the application the widget loads that UID with Slicer's DICOM loader, then ``markChosen``."""
        plan, reason, _, _ = self._chosen(databaseDir, studyUID, showDescriptions)
        return plan.series.uid, reason

    @staticmethod
    def markChosen(volumeNode, reason):
        """Remember why ``volumeNode`` was chosen (the saved report gives it)."""
        volumeNode.SetAttribute(results.SERIES_REASON, reason)

    def loadStudy(self, databaseDir, studyUID, showDescriptions=False):
        """``chooseStudySeries`` and the series read by the engine's reader into the scene, under the study in the
        subject hierarchy: for scripts and scenes without Slicer's DICOM loader (slicer-core). Returns (volume
        node, reason)."""
        from mskai.dicom import read_volume

        plan, reason, study, patient = self._chosen(databaseDir, studyUID, showDescriptions)
        series = plan.series
        name = f"{series.number}: " if series.number is not None else ""
        name += (series.description or "sagittal MR") + (f" ({plan.label})" if plan.label != "volume" else "")
        node = add_volume_node(self.scene, read_volume(plan), name)
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        study_name = study.get("StudyDescription") or study.get("StudyDate") or ""
        study_item = dicom_study_item(self.scene, studyUID, study_name,
                                      patient.get("PatientsName") or patient.get("PatientID") or "")
        hierarchy.CreateItem(study_item, node)
        self.markChosen(node, reason)
        return node, reason

    @staticmethod
    def planeOf(volumeNode) -> str:
        """The plane of a volume node's slices, from its geometry (the slice axis is the thickest, else K):
        sagittal, coronal, axial or oblique (near ...)."""
        from mskai.dicom.plane import volume_plane

        return str(volume_plane(LPS_TO_RAS @ ijk_to_ras(volumeNode))[0])

    def checkInput(self, volumeNode):
        """Refuse, before any work, what the ACL classifier cannot read: no scalar volume, or not sagittal (the
        message names the plane). The engine checks the rest (slice count, size) with its own messages."""
        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.GetImageData() is None:
            raise MskaiError("Select a sagittal MR volume as input")
        plane = self.planeOf(volumeNode)
        if plane != "sagittal":
            raise MskaiError(f"The ACL classifier reads sagittal slices; {volumeNode.GetName()!r} is {plane}. "
                             "Choose the sagittal series of the study (or pick a study from the DICOM database).")

    # --- classification ------------------------------------------------------------------------------

    def startClassification(self, volumeNode, model=None, onProgress=None, onFinished=None) -> ClassificationJob:
        """Start the engine on ``volumeNode`` in a background process and return at once.

        Call ``job.poll()`` from a timer: it calls ``onProgress(stage, fraction)`` and, once, ``onFinished(result)``
        (a dict as classifyVolume returns, or {"error": message}, or {"cancelled": True}). ``job.cancel()`` ends
        the process and leaves the scene as it was. A non-sagittal input is refused here (MskaiError).
        """
        self.checkInput(volumeNode)
        return ClassificationJob(self.scene, volumeNode, model, onProgress, onFinished)

    def classifyVolume(self, volumeNode, model=None) -> dict:
        """Classify ``volumeNode`` and block until done.

        Returns {"probabilities" (class -> p), "predicted", "keySlice" (0-based voxel slice of the input along
        "keySliceAxis", its IJK axis), "cam" (evidence volume node, float 0-1, on the input's grid), "table"
        (probabilities table node), "chart" (bar chart node), "input", "report" (the engine's report),
        "seriesReason"}. Raises MskaiError with the engine's message when the run fails.
        """
        result = self.startClassification(volumeNode, model=model).wait()
        if "error" in result:
            raise MskaiError(result["error"])
        if result.get("cancelled"):
            raise MskaiError("Classification cancelled")
        return result

    # --- results -------------------------------------------------------------------------------------

    @staticmethod
    def isResult(node) -> bool:
        """True for an evidence volume node made by this module (the result selector lists those)."""
        return results.is_result(node)

    @staticmethod
    def resultOf(camNode) -> dict:
        """The result an evidence node belongs to, read back from the scene (same keys as classifyVolume)."""
        return results.result_of(camNode)

    @staticmethod
    def verdict(probabilities: dict, predicted: str, reason=None) -> str:
        """One line: predicted class and probability (and, for the four grades, the probability of a tear), or
        "indeterminate" and ``reason``."""
        return results.verdict(probabilities, predicted, reason)

    @staticmethod
    def describeAnatomy(anatomy: dict) -> str:
        """One line: the grade the tear signs give and P(torn), or indeterminate and why."""
        from mskai.acl.anatomy import describe

        return describe(anatomy)

    def remeasureSigns(self, camNode, model=None) -> dict:
        """The tear signs and their grade measured again on the result's (corrected) ligament segmentation, with
        the grader of ``model`` (default: the model that made the result); updates the signs table, the Blumensaat
        line and the footprints. Returns the new anatomy (signs, landmarks, grade, reason)."""
        from mskai.models.registry import resolve_model
        from mskai.models.tasks import ACL_CLASSIFICATION

        from .anatomy import remeasure

        made_by = results.result_of(camNode)["report"]["model"]
        package = resolve_model(model or f"{made_by['id']}@{made_by['version']}", ACL_CLASSIFICATION)
        return remeasure(self.scene, camNode, package)

    def showResult(self, camNode, opacity=0.4, jump=True):
        """Evidence as coloured foreground over the input in every slice view with a colour legend, views centred
        on the key slice. Returns the legend display node (None in a scene without legend support)."""
        return results.show_evidence(self.scene, camNode, opacity, jump)

    @staticmethod
    def evidenceSlices(camNode, count=5) -> list[int]:
        """Voxel slices (along the key slice axis) with the strongest evidence, the key slice first."""
        return results.evidence_slices(camNode, count)

    def jumpToSlice(self, camNode, index):
        """Centre every slice view on voxel slice ``index`` (along the key slice axis) of the result."""
        results.jump_to_slice(self.scene, camNode, index)

    @staticmethod
    def saveResult(camNode, folder) -> list[str]:
        """Write report.json, report.csv, cam.nrrd and key_slice.png (key slice with the overlay) into ``folder``,
        one unit; returns the paths. ``folder`` must be new, empty or an earlier mskai output."""
        return results.save_result(camNode, folder)

    # --- batch ---------------------------------------------------------------------------------------

    @staticmethod
    def startBatch(databaseDir, outputDir, resume=True, model=None, onProgress=None, onFinished=None) -> EngineBatchJob:
        """processDatabase in a background process (`mskai batch classify`), for the GUI: returns at once; poll the
        job from a timer, ``job.cancel()`` stops it keeping the finished studies."""
        return EngineBatchJob("classify", databaseDir, outputDir, resume, [f"--model={model}"] if model else [],
                              onProgress, onFinished)

    @staticmethod
    def processDatabase(databaseDir, outputDir, resume=True, model=None, cluster=None) -> dict:
        """Classify the ACL of every study of a DICOM database (its sagittal series chosen as for loadStudy), each
        into ``outputDir``/study-<pseudonym>/ (report.json, cam.nrrd, key_slice.png).

        Shares `mskai batch classify`'s runner: a failing study (no sagittal series, a broken one) is recorded with
        its reason and the batch goes on; with ``resume`` finished studies are skipped. Returns {"done", "skipped",
        "failed"}; ``outputDir``/batch.csv has one row per study: study, series (pseudonyms), predicted and one
        p_<class> column per class. cluster: a ``mskai.runner.cluster.ClusterOptions`` (default: a local Dask cluster).
        """
        from mskai.runner.batch import run_batch_classify

        summary = run_batch_classify(databaseDir, outputDir, resume=resume, model=model or ACL_MODEL,
                                     cluster=cluster)
        return {key: summary[key] for key in ("done", "skipped", "failed")}
