"""ACL evaluation figures: hand-computed examples, perfect and random predictions, absent classes, bootstrap
confidence intervals, the printed table and the PNG plots."""

import json

import numpy as np
import pytest
from PIL import Image

from mskai import MskaiError
from mskai.training.acl_metrics import classification_report, confusion_png, format_table, roc_png, training_curves_png

FOUR = ["healthy", "minor strain", "partial rupture", "complete rupture"]


def _close(a, b):
    return a == pytest.approx(b, abs=1e-9)


def test_binary_example_by_hand():
    # Scores of "torn": predicted torn only above 0.5, so case 3 (0.35, torn) is missed.
    r = classification_report([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], ["intact", "torn"], n_boot=200)
    assert r["confusion_matrix"] == [[2, 0], [1, 1]]
    intact, torn = r["per_class"]
    assert _close(intact["precision"], 2 / 3) and _close(intact["recall"], 1) and _close(intact["f1"], 0.8)
    assert _close(torn["precision"], 1) and _close(torn["recall"], 0.5) and _close(torn["f1"], 2 / 3)
    assert _close(r["accuracy"], 0.75) and _close(r["macro_f1"], (0.8 + 2 / 3) / 2)
    # AUC: of the 4 (torn, intact) pairs, 0.35 < 0.4 is the one ranked wrongly -> 3/4.
    assert _close(r["auc_positive"], 0.75) and _close(torn["auc"], 0.75) and _close(intact["auc"], 0.75)
    assert r["auc_positive_ci"] is not None and r["notes"] == []
    json.dumps(r)  # JSON-ready


def test_three_class_example_by_hand():
    y = [0, 0, 1, 1, 2, 2]
    p = [[.7, .2, .1], [.3, .4, .3], [.2, .6, .2], [.1, .3, .6], [.1, .1, .8], [.2, .2, .6]]
    r = classification_report(y, p, ["a", "b", "c"], n_boot=100)
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    expected = {"a": (1, 0.5, 2 / 3, 2), "b": (0.5, 0.5, 0.5, 2), "c": (2 / 3, 1, 0.8, 2)}
    for c in r["per_class"]:
        precision, recall, f1, support = expected[c["name"]]
        assert _close(c["precision"], precision) and _close(c["recall"], recall) and _close(c["f1"], f1)
        assert c["support"] == support
    assert _close(r["accuracy"], 4 / 6) and _close(r["macro_f1"], (2 / 3 + 0.5 + 0.8) / 3)
    # One-vs-rest AUCs, counting (positive, negative) pairs ranked right out of 2 x 4 (a tie counts 1/2):
    # a: 8/8; b: 0.6 beats all 4, 0.3 beats 3 of 4 -> 7/8; c: 0.8 beats 4, 0.6 beats 3 and ties 1 -> 7.5/8.
    assert [c["auc"] for c in r["per_class"]] == pytest.approx([1.0, 0.875, 0.9375])
    assert _close(r["macro_auc"], (1 + 0.875 + 0.9375) / 3)
    assert "auc_positive" not in r


def test_perfect_predictions():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    p = np.full((40, 4), 0.02) + np.eye(4)[y] * 0.94
    p[:, 0] += rng.random(40) * 0.01
    r = classification_report(y, p, FOUR, n_boot=200)
    assert r["accuracy"] == 1 and r["macro_f1"] == 1 and r["macro_auc"] == 1
    assert all(c["auc_ci"] == pytest.approx([1.0, 1.0]) for c in r["per_class"])
    assert r["macro_auc_ci"] == pytest.approx([1.0, 1.0])
    assert np.array_equal(np.diag(r["confusion_matrix"]), [10] * 4)


def test_random_predictions_have_chance_auc_inside_the_interval():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 800)
    r = classification_report(y, rng.dirichlet(np.ones(4), 800), FOUR, n_boot=200)
    assert abs(r["macro_auc"] - 0.5) < 0.05 and abs(r["accuracy"] - 0.25) < 0.06
    lo, hi = r["macro_auc_ci"]
    assert lo < 0.5 < hi
    for c in r["per_class"]:
        assert c["auc_ci"][0] < 0.5 < c["auc_ci"][1] or abs(c["auc"] - 0.5) > 0.04


def test_class_absent_from_the_data():
    y = [0, 0, 1, 2, 2, 1, 0]
    p = np.array([[.6, .2, .1, .1], [.5, .1, .1, .3], [.1, .7, .1, .1], [.1, .1, .7, .1], [.2, .1, .3, .4],
                  [.2, .5, .2, .1], [.7, .1, .1, .1]])
    r = classification_report(y, p, FOUR, n_boot=100)
    absent = r["per_class"][3]
    assert absent["support"] == 0 and absent["auc"] is None and absent["auc_ci"] is None
    assert absent["recall"] is None and absent["f1"] is None
    assert _close(absent["precision"], 0.0)  # predicted once (the fifth case), never right
    assert any("complete rupture is absent" in n for n in r["notes"])
    assert any("macro F1 and macro AUC cover" in n for n in r["notes"])
    present_aucs = [c["auc"] for c in r["per_class"][:3]]
    assert _close(r["macro_auc"], float(np.mean(present_aucs)))
    text = format_table(r)
    assert "complete rupture" in text and "note: complete rupture is absent" in text
    assert text.splitlines()[0].split()[:2] == ["class", "precision"]
    never = classification_report([0, 1, 1], [[.9, .1], [.8, .2], [.7, .3]], ["intact", "torn"], n_boot=0)
    assert never["per_class"][1]["precision"] is None and any("never predicted" in n for n in never["notes"])
    assert never["auc_positive"] == 1.0 and never["auc_positive_ci"] is None  # ranked right; no resamples asked
    single = classification_report([1, 1], [[.2, .8], [.4, .6]], ["intact", "torn"], n_boot=10)
    assert single["macro_auc"] is None and any("single class" in n for n in single["notes"])


def _noisy(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.normal(0, 1.3, n))))


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_cases():
    widths = []
    for n in (60, 600):
        y, score = _noisy(n, seed=n)
        r = classification_report(y, score, ["intact", "torn"], n_boot=300, seed=5)
        lo, hi = r["auc_positive_ci"]
        assert lo <= r["auc_positive"] <= hi
        for c in r["per_class"]:
            assert c["auc_ci"][0] <= c["auc"] <= c["auc_ci"][1]
        widths.append(hi - lo)
        assert r["bootstrap"]["used"]["torn"] == 300
    assert widths[1] < 0.6 * widths[0], widths
    y, score = _noisy(60, seed=60)
    first = classification_report(y, score, ["intact", "torn"], n_boot=100, seed=9)
    assert classification_report(y, score, ["intact", "torn"], n_boot=100, seed=9) == first
    assert classification_report(y, score, ["intact", "torn"], n_boot=100, seed=10) != first


def test_resamples_with_one_class_are_skipped():
    y = [0] * 19 + [1]
    r = classification_report(y, np.linspace(0, 1, 20), ["intact", "torn"], n_boot=200, seed=0)
    used = r["bootstrap"]["used"]["torn"]
    assert 100 < used < 200  # about (1 - (19/20)^20) = 64 % of resamples hold the one torn case
    assert r["auc_positive_ci"][0] <= r["auc_positive"] <= r["auc_positive_ci"][1]


def test_bad_inputs_are_refused():
    with pytest.raises(MskaiError, match="4 x 2"):
        classification_report([0, 1, 0, 1], np.zeros((4, 3)) + [0.2, 0.3, 0.5], ["a", "b"])
    with pytest.raises(MskaiError, match="class indices 0-1"):
        classification_report([0, 2], [[.5, .5], [.5, .5]], ["a", "b"])
    with pytest.raises(MskaiError, match="NaN"):
        classification_report([0, 1], [[np.nan, .5], [.5, .5]], ["a", "b"])
    with pytest.raises(MskaiError, match="class_names"):
        classification_report([0, 0], [[1.0], [1.0]], ["a"])
    with pytest.raises(MskaiError, match="n_boot"):
        classification_report([0, 1], [0.2, 0.8], ["a", "b"], n_boot=-1)
    with pytest.raises(MskaiError, match="non-empty"):
        training_curves_png([], "x.png")


def test_plots_are_written(tmp_path):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 120)
    p = rng.dirichlet(np.ones(4), 120) + np.eye(4)[y] * 0.8
    p /= p.sum(axis=1, keepdims=True)
    r = classification_report(y, p, FOUR, n_boot=50)
    history = [{"epoch": e, "train_loss": 1.2 / e, "val_loss": 1.3 / e + 0.05 * (e > 6),
                "train_accuracy": 1 - 0.5 / e, "val_accuracy": 0.9 - 0.5 / e, "val_macro_f1": 0.8 - 0.5 / e,
                "val_macro_auc": 0.95 - 0.4 / e if e != 3 else None, "val_macro_auc_ci": [0.1, 0.2]}
               for e in range(1, 11)]
    paths = [roc_png(y, p, FOUR, tmp_path / "roc.png"),
             confusion_png(r["confusion_matrix"], FOUR, tmp_path / "confusion.png"),
             training_curves_png(history, tmp_path / "curves.png"),
             roc_png(y > 0, p[:, 1:].sum(axis=1), ["intact", "torn"], tmp_path / "roc2.png")]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 300
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "curves.png", "roc.png", "roc2.png"]
    with pytest.raises(MskaiError, match="png"):
        roc_png(y, p, FOUR, tmp_path / "roc.jpg")
    with pytest.raises(MskaiError, match="4 x 4"):
        confusion_png([[1, 2], [3, 4]], FOUR, tmp_path / "c.png")
