"""ACL input: which series is read (and why), and every preprocessing switch, with the exact way back to the input."""

import time

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from mskai import MskaiError
from mskai.acl.intensity import HIST_PERCENTILES, _Intensity, _landmarks, _sample, fit_histogram_landmarks
from mskai.acl.preprocess import AclPreprocessing, Prepared, check_sagittal, prepare
from mskai.acl.series import choose_series, description_flags
from mskai.dicom import read_volume, scan_folder, scan_source
from mskai.synth.dicom_writer import write_series
from mskai.synth.phantom import ORIENTATIONS, grid_affine, phantom, rotation
from mskai.volume import Volume

NAME, PID = "DOE^JANE", "PAT-4711"


# --- series choice ------------------------------------------------------------------------------------


def _write(root, name, plane="sagittal", description="", number=1, echo_times=None, shape=(48, 40, 12), study=None,
           tr=None, **kwargs):
    volumes = [phantom(plane=plane, shape=shape, seed=s) for s in range(len(echo_times or [None]))]
    paths = write_series(volumes, root / name, patient=(NAME, PID), study_uid=study, series_number=number,
                         description=description, echo_times=echo_times, **kwargs)
    if tr is not None:
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.RepetitionTime = tr
            ds.save_as(p)
    return paths


def _choose(root, **kwargs):
    return choose_series(scan_folder(root).series, **kwargs)


def test_picks_the_sagittal_series_prefers_pd_fat_suppressed_and_says_why_without_patient_data(tmp_path):
    study = generate_uid()
    _write(tmp_path, "cor", "coronal", "COR PD FS", 2, study=study)
    _write(tmp_path, "ax", "axial", "AX T2", 3, study=study)
    _write(tmp_path, "sag_t1", "sagittal", "SAG T1", 4, study=study)
    _write(tmp_path, "sag_pd", "sagittal", f"SAG PD FS {NAME}", 5, study=study)
    _write(tmp_path, "sag_pd_plain", "sagittal", "SAG PD", 6, study=study)
    plan, reason = _choose(tmp_path)
    assert plan.series.number == 5 and plan.plane.name == "sagittal"
    assert reason.startswith("picked series #5 (sagittal, 12 slices") and "fat-suppressed: yes" in reason
    assert "PD-weighted (from description)" in reason and "3 sagittal series" in reason
    assert "fat suppression" in reason  # what beat the runner-up (series #6, PD without FS)
    for secret in (NAME, "DOE", PID, "SAG PD FS", plan.series.uid, plan.series.study_uid):
        assert secret not in reason
    _, shown = _choose(tmp_path, show_descriptions=True)
    assert "SAG PD FS" in shown  # only when the caller allows free text


def test_prefers_pd_over_t2_and_shorter_te_then_more_slices(tmp_path):
    _write(tmp_path / "a", "t2fs", description="sag_t2_tse_fs", number=1)
    _write(tmp_path / "a", "pd", description="sag_pd_tse", number=2)
    assert _choose(tmp_path / "a")[0].series.number == 2  # contrast before fat suppression
    _write(tmp_path / "b", "long", number=1, echo_times=[90.0])
    _write(tmp_path / "b", "short", number=2, echo_times=[30.0])
    plan, reason = _choose(tmp_path / "b")
    assert plan.series.number == 2 and "TE 30 ms" in reason and "contrast" in reason
    _write(tmp_path / "c", "few", number=1, description="PD FS")
    _write(tmp_path / "c", "many", number=2, description="PD FS", shape=(48, 40, 20))
    plan, reason = _choose(tmp_path / "c")
    assert plan.series.number == 2 and "more slices (20 vs 12)" in reason


def test_repetition_time_tells_t1_from_pd(tmp_path):
    _write(tmp_path, "t1", number=1, echo_times=[12.0], tr=500)
    _write(tmp_path, "pd", number=2, echo_times=[12.0], tr=3000)
    plan, reason = _choose(tmp_path)
    assert plan.series.number == 2 and "PD-weighted (from TR/TE)" in reason and "T1-weighted" in reason


def test_multi_echo_series_gives_the_echo_nearest_30_ms(tmp_path, knee_dicom):
    plan, reason = choose_series(scan_source(knee_dicom).series)
    assert plan.frames[0].echo_time == pytest.approx(31.56) and len(plan.frames) == 24
    assert "echo 5 of 8" in reason and "the only sagittal series" in reason and "TR 2450 ms" in reason
    _write(tmp_path, "me", number=7, echo_times=[10.0, 25.0, 40.0, 80.0])
    plan, reason = _choose(tmp_path)
    assert plan.frames[0].echo_time == 25.0 and "echo 2 of 4" in reason


def test_coronal_or_axial_only_study_and_forced_non_sagittal_series_are_refused(tmp_path):
    study = generate_uid()
    _write(tmp_path, "c1", "coronal", "COR T1", 1, study=study)
    _write(tmp_path, "c2", "coronal", "COR PD", 2, study=study)
    _write(tmp_path, "a1", "axial", "AX PD", 3, study=study)
    with pytest.raises(MskaiError, match=r"^no sagittal series: found coronal \(2\), axial \(1\)$"):
        _choose(tmp_path)
    _write(tmp_path, "s", "sagittal", "SAG PD", 4, study=study)
    report = scan_folder(tmp_path)
    with pytest.raises(MskaiError, match=r"series #1 is coronal, not sagittal"):
        choose_series(report, key="1")
    coronal_uid = report.series[2].uid
    with pytest.raises(MskaiError, match="is axial, not sagittal"):
        choose_series(report, key=coronal_uid)
    plan, reason = choose_series(report, key=report.series[3].uid)
    assert plan.series.number == 4 and reason.startswith("the given series #4")
    with pytest.raises(MskaiError, match="No series '9'"):
        choose_series(report, key="9")


def test_localiser_with_few_sagittal_slices_is_not_taken(tmp_path):
    _write(tmp_path, "loc", "sagittal", "3-plane loc", 1, shape=(48, 40, 3))
    _write(tmp_path, "cor", "coronal", "COR", 2)
    with pytest.raises(MskaiError, match="no usable sagittal series: .*fewer than 8 slices"):
        _choose(tmp_path)


def test_description_keywords():
    assert description_flags("sag_pd_fs") == ("PD", True)
    assert description_flags("PDFS SAG") == ("PD", True)
    assert description_flags("T2 FSE SAG") == ("T2", False)  # FSE is fast spin echo, not fat suppression
    assert description_flags("DP FAT SAT") == ("PD", True)
    assert description_flags("SAG STIR") == ("T2", True)
    assert description_flags("Sag T2*") == (None, False)
    assert description_flags("PD/T2 dual echo") == (None, False)


# --- volumes for preprocessing ------------------------------------------------------------------------


def _sagittal(array, spacing=(0.5, 0.5, 3.0), tilt_deg=0.0, flip=()):
    """A Volume of ``array`` on a sagittal grid (i -> P, j -> I, k -> R), optionally tilted and with axes flipped.

    Unflipped and untilted, the network layout (slices L->R, rows S->I, columns A->P) is array.transpose(2, 1, 0).
    """
    directions = rotation((0, 1, 0), tilt_deg) @ ORIENTATIONS["sagittal"]
    affine = grid_affine(directions, spacing, (-20.0, -30.0, 40.0))
    array = np.asarray(array)
    for axis in flip:
        affine[:3, 3] = affine[:3, 3] + affine[:3, axis] * (array.shape[axis] - 1)
        affine[:3, axis] = -affine[:3, axis]
        array = np.flip(array, axis)
    return Volume(np.ascontiguousarray(array), affine)


def _known_range(shape, seed=0):
    """Integers 0..1000 with >= 2 % exactly 0 and >= 2 % exactly 1000: the p1..p99 window is exactly 0..1000."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1000, size=shape)
    flat = a.reshape(-1)
    idx = rng.permutation(flat.size)
    flat[idx[: flat.size // 20]] = 0
    flat[idx[flat.size // 20: flat.size // 10]] = 1000
    return a.astype(np.int16)


@pytest.fixture(scope="module")
def knee(knee_dicom):
    plan, _ = choose_series(scan_source(knee_dicom).series)
    return read_volume(plan)


def test_settings_round_trip_through_json_and_bad_settings_are_refused():
    cfg = AclPreprocessing(slices="nmf", depth=10, kmeans_channel=True, kmeans_keep=(1, 4), field_mm=None)
    assert AclPreprocessing.from_json(cfg.to_json()) == cfg
    assert cfg.to_json()["kmeans_keep"] == [1, 4] and cfg.channels == 2
    hist = AclPreprocessing(intensity="histogram", landmarks=list(np.linspace(0, 1, len(HIST_PERCENTILES))))
    assert AclPreprocessing.from_json(hist.to_json()) == hist
    bad = [({"colour": "red"}, "unknown ACL preprocessing setting"), ({"intensity": "zscore"}, "intensity"),
           ({"intensity": "histogram"}, "landmarks"), ({"landmarks": [0, 1]}, "only used with"),
           ({"depth": 0}, "depth"), ({"depth": 2.5}, "depth"), ({"size": 8}, "size"), ({"field_mm": -1}, "field_mm"),
           ({"kmeans_keep": [3, 1]}, "kmeans_keep"), ({"kmeans_keep": [0, 20]}, "kmeans_keep"),
           ({"foreground_mask": 1}, "true or false"), ({"slices": "all"}, "central or nmf")]
    for settings, message in bad:
        with pytest.raises(MskaiError, match=message):
            AclPreprocessing.from_json(settings)
    with pytest.raises(MskaiError, match="JSON object"):
        AclPreprocessing.from_json([1, 2])


def test_real_knee_shapes_ranges_determinism_and_exact_slice_mapping(knee):
    cfg = AclPreprocessing(kmeans_channel=True, foreground_mask=True)
    a, b = prepare(knee, cfg), prepare(knee, cfg)
    assert a.image.shape == (2, 16, 128, 128) and a.image.dtype == np.float32
    assert a.image.min() >= 0 and a.image.max() <= 1 and a.image.max() > 0.9
    assert set(np.unique(a.image[1])) <= {0.0, 1.0} and a.image[1].any()
    assert a.image.tobytes() == b.image.tobytes() and a.notes == b.notes
    assert len(a.notes["input_slices"]) == 16 and a.notes["crop"]["side_mm"] == 160.0
    j = 5
    cam = np.zeros((16, 128, 128), dtype=np.float32)
    cam[j] = 1
    mapped = a.cam_to_input(cam)
    assert mapped.shape == knee.shape and mapped.dtype == np.float32
    assert np.nonzero(mapped.sum(axis=(0, 1)))[0].tolist() == [a.notes["input_slices"][j]]
    assert a.key_slice(cam) == a.notes["input_slices"][j] and mapped.max() == pytest.approx(1.0)


@pytest.mark.parametrize("tilt,flip", [(0.0, ()), (15.0, (0, 2)), (-12.0, (1, 2))])
def test_cam_maps_exactly_back_onto_the_input_grid(tilt, flip):
    """Square isotropic slices, the whole slice at its own size: the network grid is the input grid reoriented, so
    the network image itself mapped back is the normalised input, voxel for voxel, on the slices it came from."""
    vol = _sagittal(_known_range((48, 48, 14)), tilt_deg=tilt, flip=flip)
    p = prepare(vol, AclPreprocessing(depth=8, size=48, field_mm=None))
    assert p.slice_axis == 2
    back = p.cam_to_input(p.image[0])
    used = p.notes["input_slices"]
    assert used == p.input_slices.tolist() and len(set(used)) == 8 and used in (sorted(used), sorted(used)[::-1])
    np.testing.assert_allclose(back[:, :, used], vol.array[:, :, used] / 1000.0, atol=1e-6)
    assert not back[:, :, [k for k in range(14) if k not in used]].any()
    for j in (0, 7):
        one = np.zeros((8, 48, 48))
        one[j] = 1
        mapped = p.cam_to_input(one)
        assert np.nonzero(mapped.sum(axis=(0, 1)))[0].tolist() == [used[j]]
        assert (mapped[:, :, used[j]] == 1).all() and p.key_slice(one) == used[j]
    # slices run from the patient's left to right whatever the input order: first used slice is the leftmost
    lps = [vol.ijk_to_lps([0, 0, k])[0][0] for k in used]
    assert lps == sorted(lps, reverse=True)  # LPS x grows to the left


def test_cropped_field_maps_back_to_a_square_of_that_size_on_one_slice():
    vol = _sagittal(_known_range((96, 96, 12)), spacing=(0.5, 0.5, 3.0))
    p = prepare(vol, AclPreprocessing(depth=8, size=32, field_mm=20.0))
    one = np.zeros((8, 32, 32))
    one[3] = 1
    mapped = p.cam_to_input(one)
    k = p.notes["input_slices"][3]
    rows, cols = np.nonzero(mapped[:, :, k])
    assert np.nonzero(mapped.sum(axis=(0, 1)))[0].tolist() == [k]
    assert np.ptp(rows) + 1 == 40 and np.ptp(cols) + 1 == 40  # 20 mm at 0.5 mm
    assert p.notes["crop"]["output_pixel_mm"] == 0.625


def test_central_slices_centre_on_the_widest_foreground_and_pad_short_series():
    a = np.full((48, 48, 30), 10, dtype=np.int16)
    widths = 4 + 40 * np.exp(-0.5 * ((np.arange(30) - 19) / 4.0) ** 2)  # widest at slice 19
    for k, w in enumerate(widths.astype(int)):
        a[24 - w // 2: 24 + w // 2, 10:40, k] = 1000
    p = prepare(_sagittal(a), AclPreprocessing(depth=8))
    assert p.notes["widest_slice"] == 19 and p.notes["input_slices"] == list(range(15, 23))
    short = prepare(_sagittal(a[:, :, 14:24]), AclPreprocessing(depth=16))
    assert short.image.shape[1] == 16
    assert short.notes["input_slices"] == [0, 0, 0] + list(range(10)) + [9, 9, 9]
    cam = np.zeros((16, 128, 128))
    cam[:4] = np.array([1.0, 0.5, 0.5, 0.0])[:, None, None]  # the four network slices of input slice 0: average
    assert short.cam_to_input(cam)[:, :, 0].max() == pytest.approx(0.5)


def test_foreground_mask_zeroes_the_background_and_fills_rows():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 40, size=(64, 64, 10)).astype(np.int16)  # background noise, below the Otsu threshold
    a[10:15, 20:40, :] = 1000  # (i = columns A->P, j = rows S->I): bright anterior and posterior rims
    a[45:50, 20:40, :] = 1000
    a[15:45, 20:40, :] = 20  # dark inside (as dark as the background): kept by the row filling
    cfg = dict(depth=8, size=64, field_mm=None)
    plain = prepare(_sagittal(a, spacing=(1, 1, 3)), AclPreprocessing(**cfg)).image[0]
    masked = prepare(_sagittal(a, spacing=(1, 1, 3)), AclPreprocessing(foreground_mask=True, **cfg)).image[0]
    inside = np.zeros((64, 64), bool)  # layout rows = j, columns = i
    inside[20:40, 10:50] = True
    assert (masked[:, ~inside] == 0).all() and (plain[:, ~inside] > 0).any()
    np.testing.assert_array_equal(masked[:, inside], plain[:, inside])
    assert (masked[:, 20:40, 15:45] > 0).all()  # the dark middle of every row survives


def test_kmeans_channel_keeps_the_darkest_clusters_of_known_intensities():
    rng = np.random.default_rng(2)
    a = np.zeros((64, 64, 10))
    levels = 1000 + 20 * np.arange(20)  # 20 separated levels, all far above the background, in 3-column stripes
    for n, level in enumerate(levels):
        a[2 + 3 * n: 5 + 3 * n, 8:56, :] = level + rng.uniform(-3, 3, size=(3, 48, 10))
    vol = _sagittal(np.rint(a).astype(np.int16), spacing=(1, 1, 3))
    cfg = dict(depth=10, size=64, field_mm=None, kmeans_channel=True)
    dark = prepare(vol, AclPreprocessing(**cfg)).image[1]
    expect = np.zeros((64, 64))
    expect[8:56, 2:14] = 1  # stripes 0-3 (rows j 8..55, columns i 2..13)
    np.testing.assert_array_equal(dark, np.broadcast_to(expect, dark.shape))
    bright = prepare(vol, AclPreprocessing(kmeans_keep=(18, 19), **cfg)).image[1]
    expect[:] = 0
    expect[8:56, 56:62] = 1
    np.testing.assert_array_equal(bright, np.broadcast_to(expect, bright.shape))
    again = prepare(vol, AclPreprocessing(**cfg)).image
    assert again.shape == (2, 10, 64, 64) and again[1].tobytes() == dark.tobytes()


def test_nmf_reduces_slices_to_basis_images_that_rebuild_the_volume():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:48, 0:48]
    centres = ((12, 12), (30, 20), (20, 38))
    patterns = np.stack([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 60.0) for cy, cx in centres])
    mix = rng.uniform(0.1, 1.0, size=(20, 3))
    a = np.einsum("sk,kij->ijs", mix, patterns) * 1000
    vol = _sagittal(np.rint(a).astype(np.int16), spacing=(1, 1, 3))
    cfg = AclPreprocessing(slices="nmf", depth=3, size=48, field_mm=None)
    p, q = prepare(vol, cfg), prepare(vol, cfg)
    assert p.image.shape == (1, 3, 48, 48) and p.image.tobytes() == q.image.tobytes()
    assert np.allclose(p.image[0].max(axis=(1, 2)), 1.0) and p.notes["nmf_relative_error"] < 0.05
    slices = prepare(vol, AclPreprocessing(depth=20, size=48, field_mm=None)).image[0]  # the NMF's input, in order
    rebuilt = (p.weights @ p.image[0].reshape(3, -1)).reshape(slices.shape)
    assert np.linalg.norm(rebuilt - slices) / np.linalg.norm(slices) < 0.05
    assert p.weights.shape == (20, 3) and p.input_slices.tolist() == list(range(20))
    back = p.cam_to_input(np.ones((3, 48, 48)))  # a weighted average of ones is one, on every slice
    np.testing.assert_allclose(back, 1.0, atol=1e-6)
    bump = np.zeros((3, 48, 48))
    bump[1] = 1
    strongest = int(np.argmax(p.weights[:, 1] / p.weights.sum(axis=1)))
    assert p.key_slice(bump) == strongest


def test_histogram_standardisation_maps_the_learned_landmarks():
    vols = [phantom(shape=(48, 48, 12), seed=s) for s in range(3)]
    landmarks = fit_histogram_landmarks(vols)
    assert len(landmarks) == len(HIST_PERCENTILES) and landmarks[0] == 0 and landmarks[-1] == pytest.approx(1)
    assert all(b > a for a, b in zip(landmarks, landmarks[1:]))
    cfg = AclPreprocessing(intensity="histogram", landmarks=landmarks, depth=8)
    own = _landmarks(_sample(vols[0].array))
    np.testing.assert_allclose(_Intensity(_sample(vols[0].array), cfg)(own), landmarks, atol=1e-5)
    # a scanner's linear intensity change does not change the network input
    base = prepare(vols[0], cfg).image
    scaled = Volume(vols[0].array.astype(np.float32) * 3 + 500, vols[0].affine_lps)
    np.testing.assert_allclose(prepare(scaled, cfg).image, base, atol=1e-4)
    assert base.min() >= 0 and base.max() <= 1


class _FakeBones:
    """A segmenter returning known femur and tibia boxes (array index ranges i, j, k) on the input grid."""

    def __init__(self, femur=None, tibia=None):
        self.boxes = {2: femur, 1: tibia}

    def __call__(self, volume):
        labels = np.zeros(volume.shape, np.uint8)
        for value, box in self.boxes.items():
            if box is not None:
                labels[tuple(slice(a, b + 1) for a, b in box)] = value
        return Volume(labels, volume.affine_lps.copy())


def test_joint_crop_centres_on_the_notch_between_femur_and_tibia():
    vol = _sagittal(_known_range((64, 64, 20)), spacing=(1, 1, 3))
    # i = A->P columns, j = S->I rows, k = slices: femur rows 10..30, tibia rows 34..50 -> joint row 32;
    # condyles slices 4..14 -> slice 9; A-P extent of condyles and plateau 20..44 -> column 32
    bones = _FakeBones(femur=((20, 40), (10, 30), (4, 14)), tibia=((22, 44), (34, 50), (5, 15)))
    cfg = AclPreprocessing(depth=8, size=30, joint_crop=True, joint_crop_mm=30.0)
    p = prepare(vol, cfg, bones)
    assert p.notes["notch_slice"] == 9 and p.notes["input_slices"] == list(range(5, 13))
    expect = [round(float(x), 1) for x in vol.ijk_to_lps([32, 32, 9])[0]]
    assert p.notes["notch_lps_mm"] == expect and p.notes["crop"]["centre_lps_mm"] == expect
    assert p.notes["crop"]["side_mm"] == 30.0 and p.notes["crop"]["source"].startswith("intercondylar notch")
    one = np.zeros((8, 30, 30))
    one[4] = 1
    i, j = np.nonzero(p.cam_to_input(one)[:, :, 9])
    assert (i.min(), i.max(), j.min(), j.max()) == (17, 46, 17, 46)  # 30 mm around (32, 32), half-open
    np.testing.assert_array_equal(p.image[0], prepare(vol, cfg, bones).image[0])


def test_joint_crop_falls_back_without_femur_or_tibia_and_needs_the_bone_model():
    vol = _sagittal(_known_range((64, 64, 20)), spacing=(1, 1, 3))
    cfg = AclPreprocessing(depth=8, joint_crop=True)
    p = prepare(vol, cfg, _FakeBones(femur=((20, 40), (10, 30), (4, 14))))
    assert "no tibia" in p.notes["joint_crop"] and "plain crop" in p.notes["joint_crop"]
    assert p.notes["crop"]["source"].startswith("knee centre") and p.image.shape == (1, 8, 128, 128)
    with pytest.raises(MskaiError, match="needs the bone model"):
        prepare(vol, cfg)
    with pytest.raises(MskaiError, match="not on the input volume's grid"):
        prepare(vol, cfg, lambda v: Volume(np.zeros((10, 10, 10), np.uint8), v.affine_lps))


def test_bad_input_is_refused_with_clear_messages():
    coronal = phantom(plane="coronal", shape=(48, 40, 12))
    with pytest.raises(MskaiError, match="reads sagittal slices; this series is coronal"):
        check_sagittal(coronal)
    with pytest.raises(MskaiError, match="reads sagittal slices; this series is coronal"):
        prepare(coronal, AclPreprocessing())
    thin = phantom(shape=(48, 40, 3))
    with pytest.raises(MskaiError, match="at least 8 sagittal slices; this series has 3"):
        prepare(thin, AclPreprocessing())
    four_d = phantom(shape=(48, 40, 12))
    four_d.array = np.zeros((48, 40, 12, 2))
    with pytest.raises(MskaiError, match="one 3D volume; .*pick one"):
        check_sagittal(four_d)
    with pytest.raises(MskaiError, match="3 dimensions"):
        Volume(np.zeros((48, 40, 12, 2)), np.eye(4))
    with pytest.raises(MskaiError, match="too small"):
        check_sagittal(phantom(shape=(20, 20, 12)))
    with pytest.raises(MskaiError, match="constant intensity"):
        prepare(_sagittal(np.full((48, 48, 12), 7, np.int16)), AclPreprocessing())
    nan = _sagittal(np.full((48, 48, 12), np.nan, np.float32))
    with pytest.raises(MskaiError, match="NaN"):
        check_sagittal(nan)
    assert check_sagittal(phantom(shape=(48, 40, 12), tilt_deg=15, tilt_axis=(0, 1, 0))) is None  # oblique sagittal


def test_a_160_slice_series_prepares_fast():
    k, j, i = np.ogrid[-1:1:160j, -1:1:256j, -1:1:256j]
    buf = (300 + 1500 * ((i / 0.7) ** 2 + (j / 0.8) ** 2 + (k / 0.9) ** 2 < 1) + 200 * i).astype(np.int16)
    vol = _sagittal(buf.transpose(2, 1, 0), spacing=(0.6, 0.6, 0.7))  # the reader's (k, j, i) memory order
    vol.array = buf.transpose(2, 1, 0)
    prepare(vol, AclPreprocessing(depth=8, size=32))  # imports
    start = time.perf_counter()
    p = prepare(vol, AclPreprocessing())
    assert time.perf_counter() - start < 2.0
    cam = np.zeros((16, 128, 128))
    cam[8] = 1
    start = time.perf_counter()
    assert p.key_slice(cam) == p.notes["input_slices"][8] and p.cam_to_input(cam).shape == vol.shape
    assert time.perf_counter() - start < 2.0
    assert isinstance(p, Prepared)
