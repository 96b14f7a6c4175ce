"""Write valid MR DICOM series from volumes: any orientation, spacing, transfer syntax, echoes, multi-frame.

Used by the tests and by the demo where no real data exists. Every series it writes says
"SYNTHETIC" in its descriptions; the patient is invented.
"""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from mskai import __version__
from mskai.volume import Volume

TRANSFER_SYNTAXES = {
    "explicit-le": ExplicitVRLittleEndian,
    "implicit-le": ImplicitVRLittleEndian,
    "explicit-be": ExplicitVRBigEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg-lossless": JPEGLosslessSV1,  # encoded with GDCM (python-gdcm)
    "jpeg-baseline": JPEGBaseline8Bit,  # 8-bit lossy, encoded with Pillow
}


def _stored(array: np.ndarray, slope: float, intercept: float, bits8: bool) -> np.ndarray:
    values = np.rint((np.asarray(array, dtype=np.float64) - intercept) / slope)
    if bits8:
        return np.clip(values, 0, 255).astype(np.uint8)
    if values.min() >= 0:
        return np.clip(values, 0, 65535).astype(np.uint16)
    return np.clip(values, -32768, 32767).astype(np.int16)


def _base_dataset(sop_class, patient, study_uid, series_uid, series_number, description, modality):
    ds = Dataset()
    today = datetime.date.today().strftime("%Y%m%d")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.SOPClassUID = sop_class
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.Modality = modality
    ds.Manufacturer = "mskai synthetic writer"
    ds.SoftwareVersions = __version__
    ds.PatientName, ds.PatientID = patient
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC study"
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame"])
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = "KNEE"
    ds.SamplesPerPixel = 1
    return ds


def _set_pixel_format(ds, stored: np.ndarray, monochrome1: bool):
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = stored.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if stored.dtype.kind == "i" else 0


def _invert(stored: np.ndarray) -> np.ndarray:
    if stored.dtype.kind == "i":
        return (-1 - stored.astype(np.int32)).astype(stored.dtype)
    return (np.iinfo(stored.dtype).max - stored).astype(stored.dtype)


def _encode_pixels(ds, frames: np.ndarray, syntax):
    """Put frames (n, rows, cols) or one frame (rows, cols) into ds in the given transfer syntax."""
    if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.PixelData = frames.astype(frames.dtype.newbyteorder("<")).tobytes()
    elif syntax == ExplicitVRBigEndian:
        ds.PixelData = frames.astype(frames.dtype.newbyteorder(">")).tobytes()
    elif syntax == JPEGBaseline8Bit:
        from PIL import Image

        chunks = []
        for frame in frames.reshape((-1,) + frames.shape[-2:]):
            out = io.BytesIO()
            Image.fromarray(frame, mode="L").save(out, format="JPEG", quality=95)
            chunks.append(out.getvalue())
        ds.PixelData = encapsulate(chunks)
    elif syntax == JPEGLosslessSV1:
        ds.PixelData = frames.astype(frames.dtype.newbyteorder("<")).tobytes()
        return "gdcm"
    else:
        ds.compress(syntax, frames, generate_instance_uid=False)
        return None
    ds["PixelData"].VR = "OB" if frames.dtype.itemsize == 1 or syntax.is_compressed else "OW"
    if syntax.is_compressed:
        ds["PixelData"].is_undefined_length = True
    return None


def _save(ds, path: Path, syntax, encoder=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if encoder == "gdcm" else syntax
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True, implicit_vr=meta.TransferSyntaxUID.is_implicit_VR,
               little_endian=meta.TransferSyntaxUID.is_little_endian)
    if encoder == "gdcm":
        _gdcm_transcode(path, syntax)


def _gdcm_transcode(path: Path, syntax):
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(syntax))))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {syntax.name}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {path}")


def _geometry(volume: Volume):
    """Image Orientation (Patient), Pixel Spacing (row, column) and the slice step of a volume."""
    a = volume.affine_lps
    spacing = volume.spacing
    orientation = np.concatenate([a[:3, 0] / spacing[0], a[:3, 1] / spacing[1]])
    return orientation, [float(spacing[1]), float(spacing[0])], float(spacing[2])


def _ds_list(values):
    return [f"{v:.6f}".rstrip("0").rstrip(".") if v != 0 else "0" for v in values]


def write_series(
    volumes,
    folder,
    *,
    echo_times=None,
    acquisition_numbers=None,
    transfer_syntax: str = "explicit-le",
    multiframe: bool = False,
    monochrome1: bool = False,
    rescale: tuple = (1.0, 0.0),
    patient: tuple = ("SYNTHETIC^PHANTOM", "SYNTH0001"),
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    description: str = "SYNTHETIC MR",
    modality: str = "MR",
    first_instance: int = 1,
) -> list[Path]:
    """Write one DICOM series holding one or several volumes on their own grids.

    volumes: a Volume or a list of them (one per echo / acquisition); voxel values are the
        intended rescaled values (stored = (value - intercept) / slope).
    echo_times, acquisition_numbers: one per volume, written as Echo Time / Acquisition Number.
    transfer_syntax: a key of TRANSFER_SYNTAXES.
    multiframe: write a single Enhanced MR file with per-frame functional groups instead of one file per slice.
    Returns the written paths.
    """
    volumes = [volumes] if isinstance(volumes, Volume) else list(volumes)
    syntax = TRANSFER_SYNTAXES[transfer_syntax]
    folder = Path(folder)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    echo_times = echo_times or [None] * len(volumes)
    acquisition_numbers = acquisition_numbers or [1] * len(volumes)
    slope, intercept = rescale
    sop_class = EnhancedMRImageStorage if multiframe else MRImageStorage
    base = _base_dataset(sop_class, patient, study_uid, series_uid, series_number, description, modality)

    entries = []  # (volume index, k, stored frame)
    for v_index, volume in enumerate(volumes):
        stored = _stored(volume.array, slope, intercept, bits8=syntax == JPEGBaseline8Bit)
        if monochrome1:
            stored = _invert(stored)
        for k in range(volume.shape[2]):
            entries.append((v_index, k, np.ascontiguousarray(stored[:, :, k].T)))

    if multiframe:
        return [_write_enhanced(base, volumes, entries, folder, syntax, echo_times, slope, intercept, monochrome1)]

    paths = []
    for n, (v_index, k, frame) in enumerate(entries):
        volume = volumes[v_index]
        orientation, pixel_spacing, step = _geometry(volume)
        ds = base.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = first_instance + n
        ds.AcquisitionNumber = acquisition_numbers[v_index]
        if echo_times[v_index] is not None:
            ds.EchoTime = echo_times[v_index]
            ds.EchoNumbers = v_index + 1
        ds.ImagePositionPatient = _ds_list(volume.ijk_to_lps([0, 0, k])[0])
        ds.ImageOrientationPatient = _ds_list(orientation)
        ds.PixelSpacing = _ds_list(pixel_spacing)
        ds.SliceThickness = f"{step:.4g}"
        ds.Rows, ds.Columns = frame.shape
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.RescaleType = "US"
        _set_pixel_format(ds, frame, monochrome1)
        encoder = _encode_pixels(ds, frame, syntax)
        path = folder / f"IM{first_instance + n:05d}.dcm"
        _save(ds, path, syntax, encoder)
        paths.append(path)
    return paths


def _write_enhanced(base, volumes, entries, folder, syntax, echo_times, slope, intercept, monochrome1) -> Path:
    ds = base.copy()
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(entries)
    first = entries[0][2]
    ds.Rows, ds.Columns = first.shape
    _set_pixel_format(ds, first, monochrome1)

    shared = Dataset()
    vt = Dataset()
    vt.RescaleSlope, vt.RescaleIntercept, vt.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
    shared.PixelValueTransformationSequence = Sequence([vt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    per_frame = []
    for v_index, k, _ in entries:
        volume = volumes[v_index]
        orientation, pixel_spacing, step = _geometry(volume)
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = _ds_list(volume.ijk_to_lps([0, 0, k])[0])
        ori = Dataset()
        ori.ImageOrientationPatient = _ds_list(orientation)
        meas = Dataset()
        meas.PixelSpacing = _ds_list(pixel_spacing)
        meas.SliceThickness = f"{step:.4g}"
        content = Dataset()
        content.InStackPositionNumber = k + 1
        content.TemporalPositionIndex = 1
        item.PlanePositionSequence = Sequence([pos])
        item.PlaneOrientationSequence = Sequence([ori])
        item.PixelMeasuresSequence = Sequence([meas])
        item.FrameContentSequence = Sequence([content])
        if echo_times[v_index] is not None:
            echo = Dataset()
            echo.EffectiveEchoTime = echo_times[v_index]
            item.MREchoSequence = Sequence([echo])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    frames = np.stack([e[2] for e in entries])
    encoder = _encode_pixels(ds, frames, syntax)
    path = folder / "ENHANCED_MR.dcm"
    _save(ds, path, syntax, encoder)
    return path


def write_non_image(folder, kind: str = "SR", study_uid: str | None = None) -> Path:
    """A small non-image object (Basic Text SR, Grayscale Softcopy Presentation State, or RT Structure Set)."""
    sop = {
        "SR": pydicom.uid.BasicTextSRStorage,
        "PR": pydicom.uid.GrayscaleSoftcopyPresentationStateStorage,
        "RTSTRUCT": pydicom.uid.RTStructureSetStorage,
    }[kind]
    ds = _base_dataset(sop, ("SYNTHETIC^PHANTOM", "SYNTH0001"), study_uid or generate_uid(), generate_uid(), 99,
                       f"SYNTHETIC {kind}", kind)
    ds.SOPInstanceUID = generate_uid()
    path = Path(folder) / f"{kind}.dcm"
    _save(ds, path, ExplicitVRLittleEndian)
    return path
