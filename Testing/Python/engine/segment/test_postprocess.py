"""The anatomical clean-up: bone identity from the whole field of view, in patient LPS millimetres."""

import numpy as np
import pytest

from mskai.segment.postprocess import PostprocessOptions, clean_anatomical, clean_labels

TIBIA, FEMUR, FIBULA, PELVIS, PATELLA, SACRUM = 1, 2, 3, 4, 5, 6
VALUES = [TIBIA, FEMUR, FIBULA, PELVIS, PATELLA, SACRUM]
SPACING = 4.0


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


class Scene:
    """A sagittal grid tilted by 10 degrees (i: posterior, j: inferior, k: right, oblique), bones drawn in LPS mm."""

    def __init__(self, extent_mm=(150.0, 480.0, 300.0), centre=(0.0, 0.0, 30.0)):
        directions = _rotation([1, 1, 0], 10) @ np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], float).T
        self.shape = tuple(int(e / SPACING) for e in extent_mm)
        self.affine = np.eye(4)
        self.affine[:3, :3] = directions * SPACING
        self.affine[:3, 3] = np.asarray(centre) - self.affine[:3, :3] @ ((np.array(self.shape) - 1) / 2)
        ijk = np.indices(self.shape).reshape(3, -1).T
        self.lps = (ijk @ self.affine[:3, :3].T + self.affine[:3, 3]).reshape(*self.shape, 3)
        self.labels = np.zeros(self.shape, np.uint8)

    def capsule(self, value, a, b, radius):
        a, b = np.asarray(a, float), np.asarray(b, float)
        t = np.clip((self.lps - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
        self.labels[np.linalg.norm(self.lps - (a + t[..., None] * (b - a)), axis=-1) <= radius] = value
        return self

    def ball(self, value, centre, radius):
        return self.capsule(value, centre, np.asarray(centre, float) + [0, 0, 1e-3], radius)

    def knee(self, x=0.0):
        """Femur (condyles down to S -4, shaft up to S 264) over the tibia (plateau below S -12), leg at L = x."""
        self.capsule(FEMUR, [x, 0, 20], [x, 0, 250], 14).capsule(FEMUR, [x - 18, 5, 12], [x + 18, 5, 12], 16)
        self.capsule(TIBIA, [x - 18, 0, -26], [x + 18, 0, -26], 14).capsule(TIBIA, [x, 0, -26], [x, 0, -200], 13)
        return self

    def clean(self, options=None, **kwargs):
        return clean_labels(self.labels, VALUES, options, voxel_ml=SPACING ** 3 / 1000, affine=self.affine, **kwargs)


def _label_at(scene, labels, lps):
    """The label of the voxel nearest a patient position."""
    ijk = np.linalg.solve(scene.affine[:3, :3], np.asarray(lps, float) - scene.affine[:3, 3])
    return labels[tuple(np.rint(ijk).astype(int))]


def test_tibia_piece_on_the_femoral_shaft_becomes_femur():
    wrong = Scene().knee().capsule(TIBIA, [0, 0, 100], [0, 0, 230], 15)  # a large "tibia" piece cuts the shaft
    out = wrong.clean()
    expected = Scene().knee().capsule(FEMUR, [0, 0, 100], [0, 0, 230], 15)  # and the femur above it joins up again
    np.testing.assert_array_equal(out, expected.labels)
    old = wrong.clean(PostprocessOptions(anatomical=False))
    assert _label_at(wrong, old, [0, 0, 150]) == TIBIA  # the per-bone clean-up kept it as the other leg's tibia


def test_femur_labelled_tibia_above_a_tibia_labelled_femur_is_swapped_back():
    """The larger pieces are the wrong ones: the femur and tibia kept are the largest pair with the femur above."""
    scene = Scene().knee().capsule(TIBIA, [0, 0, 100], [0, 0, 250], 14).capsule(FEMUR, [0, 0, -70], [0, 0, -200], 13)
    np.testing.assert_array_equal(scene.clean(), Scene().knee().labels)


def test_pelvis_blob_behind_the_knee_is_removed():
    scene = Scene().knee().ball(PELVIS, [0, 70, 10], 18)  # 24 mL in the popliteal fossa, touching no bone
    out = scene.clean()
    assert not np.any(out == PELVIS)
    np.testing.assert_array_equal(out, Scene().knee().labels)
    assert np.any(scene.clean(PostprocessOptions(anatomical=False)) == PELVIS)


def test_patella_behind_the_femur_is_removed_and_in_front_kept():
    front = Scene().knee().ball(PATELLA, [0, -40, 20], 12)  # LPS: anterior is -P
    assert _label_at(front, front.clean(), [0, -40, 20]) == PATELLA
    fossa = Scene().knee().ball(PATELLA, [0, 60, 30], 12)  # the only "patella", behind the knee
    assert _label_at(fossa, fossa.clean(), [0, 60, 30]) == 0
    assert _label_at(fossa, fossa.clean(PostprocessOptions(anatomical=False)), [0, 60, 30]) == PATELLA


def test_hip_scan_keeps_its_pelvis():
    scene = Scene(extent_mm=(150, 360, 300), centre=(0, 0, -20))
    scene.capsule(PELVIS, [-40, 0, 50], [-40, 0, 120], 30)  # ilium
    scene.capsule(PELVIS, [-40, 0, 50], [40, -40, 40], 10)  # pubis
    scene.ball(FEMUR, [0, 0, 0], 22).capsule(FEMUR, [0, 0, 0], [-35, 0, -30], 15)  # head and neck below the ilium
    scene.capsule(FEMUR, [-35, 0, -30], [-35, 0, -190], 14)  # shaft
    assert np.count_nonzero(scene.labels == PELVIS) * SPACING ** 3 > 100_000
    np.testing.assert_array_equal(scene.clean(), scene.labels)


def test_a_small_tibia_in_a_hip_scan_goes_not_the_hip_bone():
    def hip():
        scene = Scene(extent_mm=(150, 360, 300), centre=(0, 0, -20))
        scene.capsule(PELVIS, [-40, 0, 50], [-40, 0, 120], 30).capsule(PELVIS, [-40, 0, 50], [40, -40, 40], 10)
        scene.ball(FEMUR, [0, 0, 0], 22).capsule(FEMUR, [0, 0, 0], [-35, 0, -30], 15)
        return scene.capsule(FEMUR, [-35, 0, -30], [-35, 0, -190], 14)

    scene = hip().ball(TIBIA, [50, 40, -150], 10)  # 4 mL of "tibia" in the thigh, touching no bone
    np.testing.assert_array_equal(scene.clean(), hip().labels)


def test_the_sacrum_is_one_piece_above_the_femur():
    def hip():
        scene = Scene(extent_mm=(150, 360, 300), centre=(0, 0, -20))
        scene.capsule(PELVIS, [-40, 0, 50], [-40, 0, 120], 30).capsule(PELVIS, [-40, 0, 50], [40, -40, 40], 10)
        scene.capsule(SACRUM, [40, 50, 60], [40, 40, 130], 25)  # on the midline, behind the hip bone
        scene.ball(FEMUR, [0, 0, 0], 22).capsule(FEMUR, [0, 0, 0], [-35, 0, -30], 15)
        return scene.capsule(FEMUR, [-35, 0, -30], [-35, 0, -190], 14)

    np.testing.assert_array_equal(hip().clean(), hip().labels)  # a hip scan with its sacrum is left as it is
    scene = hip().ball(SACRUM, [-40, 0, 100], 26)  # a "sacrum" piece in the ilium, a third of the sacrum, beside it
    assert _label_at(scene, scene.clean(), [-40, 0, 100]) == PELVIS  # not a second sacrum: it joins the hip bone
    femur = Scene().capsule(FEMUR, [0, 0, 20], [0, 0, 250], 14).ball(SACRUM, [60, 0, 40], 20)
    assert not np.any(femur.clean() == SACRUM)  # below the femur's centroid


def test_no_hip_bone_below_the_femur_nor_near_the_tibia():
    femur = Scene().capsule(FEMUR, [0, 0, 20], [0, 0, 250], 14).ball(PELVIS, [60, 0, 40], 20)  # no tibia in view
    assert not np.any(femur.clean() == PELVIS)  # below the femur's centroid
    for s, kept in ((165, True), (120, False)):  # no femur in view; the tibia's top is at S -100
        scene = Scene().capsule(TIBIA, [0, 0, -200], [0, 0, -120], 20).ball(PELVIS, [0, 0, s], 25)  # tibia larger
        assert np.any(scene.clean() == PELVIS) == kept


def test_two_legs_side_by_side_keep_both_femurs_and_tibias():
    scene = Scene(extent_mm=(150, 480, 330)).knee(x=-75).knee(x=75)
    out = scene.clean()
    np.testing.assert_array_equal(out, scene.labels)
    for x in (-75, 75):
        assert _label_at(scene, out, [x, 0, 150]) == FEMUR and _label_at(scene, out, [x, 0, -150]) == TIBIA


def test_second_tibia_piece_above_the_tibia_is_not_a_second_leg():
    """A large tibia piece directly above the tibia (the femoral condyles) joins the femur it lies on."""
    scene = Scene().knee().capsule(TIBIA, [-18, 5, 12], [18, 5, 12], 16)
    assert _label_at(scene, scene.clean(PostprocessOptions(anatomical=False)), [0, 5, 12]) == TIBIA
    np.testing.assert_array_equal(scene.clean(), Scene().knee().labels)


def test_stray_piece_touching_nothing_becomes_background():
    scene = Scene().knee().capsule(FEMUR, [40, 40, 60], [40, 40, 160], 14)  # 40 % of the femur, only 40 mm aside
    assert _label_at(scene, scene.clean(PostprocessOptions(anatomical=False)), [40, 40, 100]) == FEMUR
    np.testing.assert_array_equal(scene.clean(), Scene().knee().labels)


@pytest.mark.parametrize("chunk", [3, 17])
def test_chunk_borders_change_nothing(chunk):
    scene = Scene().knee().capsule(TIBIA, [0, 0, 100], [0, 0, 230], 15).ball(PELVIS, [0, 70, 10], 18)
    scene.capsule(FEMUR, [40, 40, 60], [40, 40, 160], 14).ball(PATELLA, [0, -40, 10], 10)
    whole, chunked = scene.labels.copy(), scene.labels.copy()
    clean_anatomical(whole, VALUES, PostprocessOptions(), scene.affine, SPACING ** 3 / 1000, chunk=1000)
    clean_anatomical(chunked, VALUES, PostprocessOptions(), scene.affine, SPACING ** 3 / 1000, chunk=chunk)
    np.testing.assert_array_equal(chunked, whole)
    expected = Scene().knee().capsule(FEMUR, [0, 0, 100], [0, 0, 230], 15).ball(PATELLA, [0, -40, 10], 10)
    np.testing.assert_array_equal(whole, expected.labels)


def test_switches():
    scene = Scene().knee().capsule(TIBIA, [0, 0, 100], [0, 0, 230], 15).ball(PELVIS, [0, 70, 10], 18)
    per_bone = clean_labels(scene.labels, VALUES, voxel_ml=SPACING ** 3 / 1000)  # no affine: the per-bone clean-up
    off = scene.clean(PostprocessOptions(anatomical=False))
    np.testing.assert_array_equal(off, per_bone)
    assert not np.array_equal(scene.clean(), per_bone)
    np.testing.assert_array_equal(scene.clean(PostprocessOptions(enabled=False)), scene.labels)
    assert not PostprocessOptions.from_settings(anatomical=False).anatomical
    from mskai.cli import build_parser

    for extra, on in (([], False), (["--no-anatomical-cleanup"], True)):
        assert build_parser().parse_args(["segment", "in.nrrd", "-o", "out", *extra]).anatomical == (not on)
    labels = scene.labels.copy()
    assert scene.clean(in_place=False) is not scene.labels and np.array_equal(scene.labels, labels)


def test_synthetic_truths_are_left_as_they_are():
    from mskai.synth.synthseg import BUNDLED_KNEE_LABELS, KneeLabelSource, LowerLimbPhantom, synthetic_case

    rng = np.random.default_rng(7)
    knee = KneeLabelSource(BUNDLED_KNEE_LABELS)
    truths = [synthetic_case(knee, rng, (3.0, 3.0, 3.0), extent_mm=(150, 150, 120), plane="sagittal",
                             centre=knee.centre_mm + rng.normal(0, 5, 3))[1],
              synthetic_case(LowerLimbPhantom(rng), rng, (3.5, 3.5, 3.5), extent_mm=(170, 170, 170), plane="axial",
                             centre=np.array([0.0, 0.0, 20.0]))[1],  # hip
              synthetic_case(LowerLimbPhantom(rng), rng, (4.0, 4.0, 4.0), extent_mm=(160, 900, 160), plane="coronal",
                             centre=np.array([0.0, 0.0, -400.0]))[1]]  # hip to ankle: pelvis far above the tibia
    for labels in truths:
        a = labels.array
        out = clean_labels(a, VALUES, voxel_ml=float(np.prod(labels.spacing)) / 1000, affine=labels.affine_lps)
        assert np.count_nonzero(out != a) < 0.005 * np.count_nonzero(a), np.unique(a)
        for value in np.unique(a[a > 0]):
            assert np.any(out == value)
