"""Evaluation of the ACL classifier: per-class and macro figures with bootstrap confidence intervals, plots.

All numbers come from scikit-learn (precision_recall_fscore_support, f1_score, accuracy_score, confusion_matrix,
roc_auc_score, roc_curve). Plots are written with matplotlib's Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mskai import MskaiError


def _inputs(y_true, probabilities, class_names):
    names = [str(n) for n in class_names]
    k = len(names)
    if k < 2 or len(set(names)) != k:
        raise MskaiError(f"class_names must be 2 or more different names, not {names!r}")
    try:
        y = np.asarray(y_true)
        p = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError):
        raise MskaiError("labels and probabilities must be numbers") from None
    if y.ndim != 1 or y.size == 0:
        raise MskaiError("y_true must be a non-empty list of class indices")
    if y.dtype.kind == "b":
        y = y.astype(int)
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(int)
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= k:
        raise MskaiError(f"y_true must hold class indices 0-{k - 1}")
    if k == 2 and p.ndim == 1:
        p = np.column_stack([1.0 - p, p])  # probabilities of the positive class
    if p.shape != (y.size, k):
        raise MskaiError(f"probabilities must be {y.size} x {k} (cases x classes), not {list(p.shape)}")
    if not np.all(np.isfinite(p)):
        raise MskaiError("probabilities hold NaN or infinite values")
    return y.astype(int), p, names


def _float(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _auc(y_binary, scores):
    from sklearn.metrics import roc_auc_score

    if y_binary.all() or not y_binary.any():
        return None
    return float(roc_auc_score(y_binary, scores))


def _bootstrap_aucs(y, p, defined, n_boot: int, seed: int):
    """({class: [AUC of each resample]}, [macro AUC of each resample]) over ``n_boot`` resamples of the cases with
    replacement (seeded) for the classes in ``defined``; a resample lacking either side of a class is skipped for
    that class, and for the macro AUC."""
    from sklearn.metrics import roc_auc_score

    n = y.size
    rng = np.random.default_rng(seed)
    boot = {c: [] for c in defined}
    boot_macro = []
    onehot = (y[:, None] == np.array(defined)[None, :]) if defined else None
    for _ in range(n_boot if defined else 0):
        idx = rng.integers(0, n, n)
        yb, pb = onehot[idx], p[idx][:, defined]
        both = yb.any(axis=0) & ~yb.all(axis=0)  # resamples lacking either side of a class are skipped for it
        if both.all():  # one call for all classes (scikit-learn's multilabel form): half the time
            values = roc_auc_score(yb, pb, average=None)
            boot_macro.append(float(np.mean(values)))
        else:
            values = [roc_auc_score(yb[:, j], pb[:, j]) if ok else None for j, ok in enumerate(both)]
        for c, v in zip(defined, values):
            if v is not None:
                boot[c].append(float(v))
    return boot, boot_macro


def _interval(samples, ci: float):
    """The percentile bootstrap interval [lo, hi] holding ``ci`` of the samples, or None for fewer than two."""
    tail = (1 - ci) / 2 * 100
    if len(samples) < 2:
        return None
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _per_class(names, scores, aucs, boot, ci: float, notes: list) -> list:
    """One row per class (precision, recall, F1, support, AUC and its CI); a note for each undefined value."""
    precision, recall, f1, support = scores
    per_class = []
    for c in range(len(names)):
        note = None
        if support[c] == 0:
            note = f"{names[c]} is absent from the data: recall, F1 and AUC undefined"
        elif aucs[c] is None:
            note = f"every case is {names[c]}: AUC undefined"
        elif math.isnan(precision[c]):
            note = f"{names[c]} was never predicted: precision undefined"
        if note:
            notes.append(note)
        per_class.append({
            "name": names[c], "precision": _float(precision[c]),
            "recall": _float(recall[c]) if support[c] else None,
            "f1": _float(f1[c]) if support[c] else None, "support": int(support[c]),
            "auc": aucs[c], "auc_ci": _interval(boot[c], ci) if c in boot else None,
        })
    return per_class


def classification_report(y_true, probabilities, class_names, n_boot: int = 1000, seed: int = 0,
                          ci: float = 0.95) -> dict:
    """Per-class and overall figures of a classifier's probabilities (JSON-ready dict).

    y_true: (N,) class indices. probabilities: (N, K) rows of class probabilities (for 2 classes also (N,)
    probabilities of class 1). The predicted class is the most probable one.
    Returns: n, class_names, accuracy, macro_f1 (over the classes present in y_true), confusion_matrix (rows
    true, columns predicted), per_class [{name, precision, recall, f1, support, auc, auc_ci}], macro_auc and
    macro_auc_ci (mean of the defined one-vs-rest AUCs), for 2 classes auc_positive/auc_positive_ci (class 1),
    bootstrap {n_boot, seed, ci, used}, notes. Undefined values are None and a note says why (a class absent
    from y_true has no recall and no AUC; a class never predicted has no precision).
    CIs: percentile bootstrap over cases (``n_boot`` resamples with replacement, seeded); a resample lacking
    either side of a one-vs-rest problem is skipped for that AUC; ``used`` counts the resamples kept.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y, p, names = _inputs(y_true, probabilities, class_names)
    if not (isinstance(n_boot, int) and 0 <= n_boot <= 100000):
        raise MskaiError(f"n_boot must be a whole number from 0 to 100000, not {n_boot!r}")
    if not 0 < ci < 1:
        raise MskaiError(f"ci must lie between 0 and 1, not {ci!r}")
    k, n = len(names), y.size
    labels = list(range(k))
    pred = p.argmax(axis=1)
    scores = precision_recall_fscore_support(y, pred, labels=labels, zero_division=np.nan)
    support = scores[3]
    present = [c for c in labels if support[c] > 0]
    notes = []
    macro_f1 = float(f1_score(y, pred, labels=present, average="macro", zero_division=0.0))
    if len(present) < k:
        notes.append("macro F1 and macro AUC cover the classes present in the data: "
                     + ", ".join(names[c] for c in present))

    aucs = [_auc(y == c, p[:, c]) for c in labels]
    defined = [c for c in labels if aucs[c] is not None]
    boot, boot_macro = _bootstrap_aucs(y, p, defined, n_boot, seed)
    per_class = _per_class(names, scores, aucs, boot, ci, notes)
    report = {
        "n": int(n), "class_names": names,
        "accuracy": float(accuracy_score(y, pred)), "macro_f1": macro_f1,
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "per_class": per_class,
        "macro_auc": float(np.mean([aucs[c] for c in defined])) if defined else None,
        "macro_auc_ci": _interval(boot_macro, ci),
        "bootstrap": {"n_boot": n_boot, "seed": seed, "ci": ci,
                      "used": {names[c]: len(boot[c]) for c in defined} | {"macro": len(boot_macro)}},
        "notes": notes,
    }
    if not defined:
        notes.append("AUC undefined: the data hold a single class")
    if k == 2:
        report["auc_positive"] = aucs[1]
        report["auc_positive_ci"] = per_class[1]["auc_ci"]
    return report


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def _fmt_auc(auc, ci_):
    if auc is None:
        return "-"
    return f"{auc:.3f} ({ci_[0]:.3f}-{ci_[1]:.3f})" if ci_ else f"{auc:.3f}"


def format_table(report) -> str:
    """The per-class table and summary lines of a classification_report, as `mskai evaluate-acl` prints them."""
    rows = [("class", "precision", "recall", "F1", "support", "AUC (95% CI)" if report["bootstrap"]["ci"] == 0.95
             else f"AUC ({report['bootstrap']['ci']:.0%} CI)")]
    for c in report["per_class"]:
        rows.append((c["name"], _fmt(c["precision"]), _fmt(c["recall"]), _fmt(c["f1"]), str(c["support"]),
                     _fmt_auc(c["auc"], c["auc_ci"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             .rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    summary = (f"accuracy {report['accuracy']:.3f}   macro F1 {report['macro_f1']:.3f}   "
               f"macro AUC {_fmt_auc(report['macro_auc'], report['macro_auc_ci'])}   n={report['n']}")
    lines += ["", summary]
    if "auc_positive" in report:
        lines.append(f"AUC of {report['class_names'][1]}: "
                     f"{_fmt_auc(report['auc_positive'], report['auc_positive_ci'])}")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plots


def _figure(width=6.0, height=5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    from mskai.outputs import atomic_output

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise MskaiError(f"Cannot write {path.name}: plots are written as .png")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.15)
    return path


def roc_png(y_true, probabilities, class_names, path) -> Path:
    """One-vs-rest ROC curves of every class present (AUC in the legend) and the chance diagonal, as a PNG."""
    from sklearn.metrics import roc_curve

    y, p, names = _inputs(y_true, probabilities, class_names)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    classes = [1] if len(names) == 2 else range(len(names))
    for c in classes:
        auc = _auc(y == c, p[:, c])
        if auc is None:
            why = "absent" if not (y == c).any() else "the only class"
            ax.plot([], [], " ", label=f"{names[c]}: AUC undefined ({why})")
            continue
        fpr, tpr, _ = roc_curve(y == c, p[:, c])
        ax.plot(fpr, tpr, linewidth=2, label=f"{names[c]} (AUC {auc:.3f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(f"ROC, one class vs the rest (n={y.size})" if len(names) > 2 else f"ROC of {names[1]} (n={y.size})")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def confusion_png(matrix, class_names, path) -> Path:
    """The confusion matrix (rows true, columns predicted): counts, and shading by the share of each true row."""
    names = [str(n) for n in class_names]
    m = np.asarray(matrix)
    if m.shape != (len(names), len(names)) or m.dtype.kind not in "iuf" or (m < 0).any():
        raise MskaiError(f"the confusion matrix must be {len(names)} x {len(names)} non-negative counts")
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)
    size = 2.0 + 1.1 * len(names)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{m[i, j]:g}\n{share[i, j]:.0%}" if rows[i, 0] else f"{m[i, j]:g}", ha="center",
                    va="center", fontsize=9, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (n={m.sum():g})")
    return _save(fig, path)


_PANELS = (("loss", "loss"), ("accuracy", "acc"), ("macro F1", "f1"), ("AUC", "auc"))


def training_curves_png(history, path) -> Path:
    """Per-epoch curves in four panels: loss, accuracy, macro F1, AUC.

    history: one dict per epoch, e.g. {"epoch": 1, "train_loss": .., "val_loss": .., "train_accuracy": ..,
    "val_accuracy": .., "val_macro_f1": .., "val_macro_auc": ..}. Each numeric key goes to the panel whose
    word it contains (loss, acc, f1, auc); None or NaN values are left out; keys ending in "_ci" are ignored.
    """
    if not isinstance(history, (list, tuple)) or not history or not all(isinstance(h, dict) for h in history):
        raise MskaiError("training history must be a non-empty list of per-epoch dicts")
    epochs = [h.get("epoch", n + 1) for n, h in enumerate(history)]
    keys = sorted({key for h in history for key in h if key != "epoch" and not key.endswith("_ci")})
    fig = _figure(10, 7)
    drawn = 0
    for n, (title, word) in enumerate(_PANELS):
        ax = fig.add_subplot(2, 2, n + 1)
        for key in keys:
            if word not in key.lower() or (word == "acc" and "auc" in key.lower()):
                continue
            points = [(e, h[key]) for e, h in zip(epochs, history)
                      if isinstance(h.get(key), (int, float)) and not isinstance(h.get(key), bool)
                      and math.isfinite(h[key])]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
                drawn += 1
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, color="0.5")
        if word != "loss":
            ax.set_ylim(-0.02, 1.02)
    if not drawn:
        raise MskaiError("the training history holds no loss, accuracy, F1 or AUC values")
    return _save(fig, path)
