"""Label-free anatomical plausibility checks: each one passes on a plausible knee and fails on its own defect."""

import numpy as np
import pytest

from mskai.segment.plausibility import passed, plausibility
from mskai.volume import Volume

SHAPE = (60, 60, 100)  # 2 mm voxels, axes L, P, S (LPS): a 200 mm tall knee field of view


def _box(labels, value, i, j, k):
    labels[slice(*i), slice(*j), slice(*k)] = value


def _knee(offset_i=0):
    labels = np.zeros(SHAPE, np.uint8)
    _box(labels, 2, (20 + offset_i, 40 + offset_i), (20, 40), (52, 100))  # femur above the joint
    _box(labels, 1, (20 + offset_i, 40 + offset_i), (20, 40), (0, 48))  # tibia below
    _box(labels, 5, (26 + offset_i, 34 + offset_i), (10, 16), (55, 65))  # patella anterior (smaller P)
    return labels


def _checks(labels):
    return {c["check"]: c["passed"] for c in plausibility(Volume(labels, np.diag([2.0, 2.0, 2.0, 1.0])))}


def test_a_plausible_knee_passes_every_check():
    checks = _checks(_knee())
    assert all(ok is not False for ok in checks.values()), checks
    assert checks["no hip bone below the lesser trochanter"] is None  # no hip bone: nothing to check
    assert passed(plausibility(Volume(_knee(), np.diag([2.0, 2.0, 2.0, 1.0]))))


@pytest.mark.parametrize("damage,failing", [
    (lambda l: _box(l, 4, (0, 10), (45, 55), (40, 50)), "no hip bone in a knee field of view"),
    (lambda l: _box(l, 1, (40, 44), (20, 40), (0, 95)), "no tibia above the femur's centre"),  # one piece
    (lambda l: _box(l, 2, (40, 44), (20, 40), (5, 100)), "no femur below the tibia's centre"),
    (lambda l: _box(l, 5, (0, 4), (0, 4), (0, 4)), "each bone one piece per leg"),
    (lambda l: (_box(l, 0, (26, 34), (10, 16), (55, 65)), _box(l, 5, (26, 34), (44, 50), (55, 65))),
     "patella anterior to the femur"),
])
def test_each_check_fails_on_its_defect(damage, failing):
    labels = _knee()
    damage(labels)
    checks = _checks(labels)
    assert checks[failing] is False, checks
    assert [name for name, ok in checks.items() if ok is False] == [failing]


def test_two_legs_may_have_two_pieces_of_each_bone_and_are_checked_leg_by_leg():
    labels = _knee(offset_i=-18) | _knee(offset_i=18)
    assert all(ok is not False for ok in _checks(labels).values())
    _box(labels, 1, (40, 56), (22, 38), (80, 95))  # tibia above the femur of one leg only
    assert _checks(labels)["no tibia above the femur's centre"] is False


def test_checks_without_the_bones_they_need_do_not_apply():
    labels = np.zeros(SHAPE, np.uint8)
    _box(labels, 2, (20, 40), (20, 40), (10, 90))  # a femoral shaft alone
    checks = _checks(labels)
    assert checks["each bone one piece per leg"] is True
    assert {name for name, ok in checks.items() if ok is None} == {
        "no hip bone in a knee field of view", "no tibia above the femur's centre", "no femur below the tibia's centre",
        "patella anterior to the femur", "no hip bone below the lesser trochanter"}


def test_hip_bone_below_the_lesser_trochanter_fails_and_a_hip_passes():
    labels = np.zeros(SHAPE, np.uint8)  # a hip field of view: femoral head top at S = 160 mm, shaft below
    _box(labels, 2, (20, 40), (20, 40), (0, 80))
    _box(labels, 4, (5, 25), (20, 40), (70, 100))  # hip bone above and beside the head
    assert _checks(labels)["no hip bone below the lesser trochanter"] is True
    _box(labels, 4, (0, 10), (45, 55), (10, 20))  # hip bone 120-140 mm below the head's top
    assert _checks(labels)["no hip bone below the lesser trochanter"] is False


def test_solidity_drops_with_holes_and_with_label_leaking_beside_a_bone():
    import numpy as np

    from mskai.segment.plausibility import solidity
    from mskai.volume import Volume

    bone = np.zeros((40, 40, 40), np.uint8)
    bone[5:35, 5:35, 5:35] = 2
    whole = solidity(Volume(bone, np.eye(4)), 2)
    holed = bone.copy()
    holed[12:28, 12:28, 12:28] = 0
    leaked = bone.copy()
    leaked[35:39, 5:8, 5:35] = 2  # a thin spur beside the bone: the hull grows, the bone hardly
    assert solidity(Volume(holed, np.eye(4)), 2) < whole * 0.9
    assert solidity(Volume(leaked, np.eye(4)), 2) < whole
    assert solidity(Volume(bone, np.eye(4)), 5) is None
