"""Fuzzing the DICOM reader: a mutated series gives a correct volume or a clear MskaiError, nothing else.

Tags and bytes of a valid series are mutated at random (seeded). Every volume that comes out is
compared with SimpleITK's reading of the same files where SimpleITK reads them. The run is bounded
in time (MSKAI_FUZZ_SECONDS, default 20) and prints how many mutations ran and what became of them.
"""

import os
import shutil
import time
import warnings
from collections import Counter

import numpy as np
import pydicom
import pytest

from mskai import MskaiError
from mskai.dicom import load_series, scan_folder
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import phantom

SECONDS = float(os.environ.get("MSKAI_FUZZ_SECONDS", "20"))
SEED = int(os.environ.get("MSKAI_FUZZ_SEED", "20261125"))

TAGS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
        "PhotometricInterpretation", "NumberOfFrames", "PixelSpacing", "ImagePositionPatient",
        "ImageOrientationPatient", "SliceThickness", "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept",
        "EchoTime", "AcquisitionNumber", "InstanceNumber", "SeriesInstanceUID", "StudyInstanceUID",
        "FrameOfReferenceUID", "PatientID", "Modality", "SOPClassUID", "PlanarConfiguration"]
NUMBERS = [0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 64, 255, 4096, 65535, -1]
TEXTS = ["", "nan", "inf", "-inf", "-0.5", "0", "1e308", "1e-30", "12.5", "garbage", "1\\2", "1\\2\\3",
         "1\\0\\0\\0\\1\\0", "0\\0\\0\\0\\0\\0", "MONOCHROME1", "RGB", "PALETTE COLOR", "MR", "CT", "1.2.3",
         "-100000\\0\\0", "1e20\\1e20\\1e20", "0.5\\0.5", "-0.5\\0.5", "X" * 200]


def _set_random_tag(path, rng):
    ds = pydicom.dcmread(path)
    keyword = str(rng.choice(TAGS))
    if rng.random() < 0.2:
        if keyword in ds:
            delattr(ds, keyword)
        what = f"delete {keyword}"
    else:
        vr = pydicom.datadict.dictionary_VR(keyword)
        value = int(rng.choice(NUMBERS)) if vr in ("US", "SS", "UL", "SL") else str(rng.choice(TEXTS))
        if vr in ("US", "UL") and value < 0:
            value = 65535
        setattr(ds, keyword, value)
        what = f"{keyword} = {value!r}"[:80]
    ds.save_as(path)
    return what


def _flip_bytes(path, rng):
    data = bytearray(path.read_bytes())
    for _ in range(int(rng.integers(1, 8))):
        data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
    path.write_bytes(bytes(data))
    return "flip bytes"


def _truncate(path, rng):
    data = path.read_bytes()
    path.write_bytes(data[: int(rng.integers(0, len(data)))])
    return "truncate"


def _resize_pixels(path, rng):
    ds = pydicom.dcmread(path)
    data = ds.PixelData
    ds.PixelData = data[: int(rng.integers(0, len(data)))] if rng.random() < 0.5 else data + data[:64]
    if rng.random() < 0.5:
        ds.add_new(0xFFFCFFFC, "OB", b"\x01" * 256)  # something to read past the pixels into
    ds.save_as(path)
    return "resize pixel data"


def _copy_over(path, rng):
    others = sorted(p for p in path.parent.iterdir() if p != path)
    shutil.copy(others[int(rng.integers(0, len(others)))], path)
    return "duplicate a file"


MUTATIONS = [_set_random_tag] * 6 + [_flip_bytes, _truncate, _resize_pixels, _copy_over]


def _compare_with_simpleitk(volume, sitk_series):
    files = list(dict.fromkeys(volume.meta["frame_files"]))
    try:
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        sop_classes = {str(ds.get("SOPClassUID", "")) for ds in headers}
        kinds = {(ds.PixelRepresentation, ds.BitsAllocated, str(ds.get("RescaleSlope")),
                  str(ds.get("RescaleIntercept"))) for ds in headers}
    except Exception:  # an element mskai does not use is damaged
        return "volume (an unused element is damaged, no reference)"
    if not all(uid in pydicom.uid.UID_dictionary for uid in sop_classes):
        return "volume (SOP class unknown: GDCM then ignores Pixel Spacing, no reference)"
    if len(kinds) > 1:
        return "volume (pixel types or rescales differ: ITK casts every slice to the first one's, no reference)"
    try:
        reference, affine = sitk_series(files)
    except Exception:
        return "volume (SimpleITK cannot read it)"
    if reference.shape[2] != volume.shape[2]:  # GDCM left files out (e.g. an unrelated damaged element)
        return "volume (SimpleITK leaves out some of its files)"
    assert reference.shape == volume.shape, (reference.shape, volume.shape)
    columns = slice(0, 3) if volume.shape[2] > 1 else slice(0, 2)  # one slice: no measured slice spacing
    np.testing.assert_allclose(volume.affine_lps[:3, columns], affine[:3, columns], atol=1e-3)
    np.testing.assert_allclose(volume.affine_lps[:3, 3], affine[:3, 3], atol=1e-3)
    np.testing.assert_allclose(volume.array.astype(np.float64), reference.astype(np.float64), rtol=1e-5, atol=1e-3)
    return "volume equal to SimpleITK's"


def test_mutated_series_give_a_correct_volume_or_a_clear_error(tmp_path, sitk_series):
    base = tmp_path / "base"
    write_series(phantom(shape=(20, 16, 6), plane="sagittal", tilt_deg=10), base)
    rng = np.random.default_rng(SEED)
    outcomes = Counter()
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        case = tmp_path / "case"
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(base, case)
        files = sorted(case.iterdir())
        mutations = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(int(rng.integers(1, 4))):
                mutate = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
                try:
                    mutations.append(mutate(files[int(rng.integers(0, len(files)))], rng))
                except Exception:  # an earlier mutation made the file unreadable to the mutator itself
                    mutations.append(None)
        if None in mutations:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = scan_folder(case)
                volumes = [v for s in report.series for v in load_series(s)]
                for volume in volumes:
                    outcomes[_compare_with_simpleitk(volume, sitk_series)] += 1
            outcomes["runs ending in volumes"] += 1
        except MskaiError:
            outcomes["runs ending in a clear MskaiError"] += 1
        except Exception as exc:
            kept = tmp_path.parent / "fuzz-failure"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(case, kept)
            pytest.fail(f"mutations {mutations} gave {exc.__class__.__name__}: {exc} (series kept in {kept})")
    total = outcomes["runs ending in volumes"] + outcomes["runs ending in a clear MskaiError"]
    print(f"\nfuzz: {total} mutated series in {SECONDS:.0f} s (seed {SEED}): {dict(outcomes)}")
    assert total >= 20 and outcomes["runs ending in a clear MskaiError"] and outcomes["volume equal to SimpleITK's"]
