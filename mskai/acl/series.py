"""Pick the sagittal knee series the ACL classifier reads, and say why, without patient data.

Rules, in order (the first that differs decides; every step is named in the returned reason):

1. plane: only volumes whose Image Orientation (Patient) is sagittal (slice normal within 25 deg of L-R, so
   oblique-sagittal knee protocols count) with at least ``MIN_SLICES`` slices (3-plane localisers drop out);
   MR only. A study without one is refused naming the planes it has.
2. contrast: proton-density (intermediate) weighted > T2 weighted > unknown > T1 weighted. Read from the
   Series Description when it names one weighting ("PD", "DP", "PDW", "proton", "intermediate"; "T2"; "T1";
   "STIR"/"TIRM" count as T2), else from the headers: Repetition Time >= 1000 ms and Echo Time < 50 ms is PD,
   Echo Time >= 50 ms is T2, TR < 1000 ms and TE < 30 ms is T1; without TR, TE 20-50 ms counts as PD.
   Gradient echo (Scanning Sequence GR without SE) stays unknown unless the description says otherwise.
3. fat suppression: yes > no. From the description ("FS", "FAT SAT", "fatsat", "fat sup...", "SPAIR", "SPIR",
   "STIR", "TIRM", "CHESS", "WE", "water exc..."; also glued on as in "PDFS", "T2FS"), Scan Options "FS",
   Enhanced MR Spectrally Selected Suppression FAT/FAT_AND_WATER, or an inversion-recovery sequence with
   Inversion Time < 250 ms (STIR).
4. more slices, then 5. finer in-plane pixels (area to 0.01 mm^2), then
6. echo time closest to ``TARGET_TE_MS`` (30 ms). This decides between the echoes of one multi-echo series
   (e.g. a multi-echo spin-echo T2 map, TR 2450 ms, TE 6-50 ms): the intermediate echo gives the PD-like
   contrast of clinical sagittal PD(-FS) knee sequences that ACL data sets (MRNet, KneeMRI) were read on, with
   less noise than late echoes; echoes at TE >= 50 ms already lose at rule 2.
7. the earlier series in the list.

The reason never holds patient name, ID, dates or UIDs; the free-text Series Description is quoted only with
``show_descriptions=True`` (flags derived from it are always fine to show).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from mskai import MskaiError
from mskai.dicom.scan import ScanReport, Series, read_header
from mskai.dicom.series import VolumePlan, plan_volumes

MIN_SLICES = 8  # fewer sagittal slices cannot cover the intercondylar notch (also preprocess.check_sagittal)
TARGET_TE_MS = 30.0
CONTRAST_RANK = {"PD": 3, "T2": 2, None: 1, "T1": 0}
CONTRAST_NAME = {"PD": "PD-weighted", "T2": "T2-weighted", "T1": "T1-weighted", None: "weighting unknown"}

_B = r"(?<![a-z0-9])"  # token boundaries: letters and digits around a keyword make it another word
_E = r"(?![a-z0-9])"
_FS_WORDS = r"(?:fs|fsat|fat[\s_-]*sat\w*|fatsat\w*|fat[\s_-]*sup\w*|spair|spir|stir|tirm|chess|we|water[\s_-]*exc\w*)"
_GLUED_FS = r"(?:[\s_-]?" + _FS_WORDS + r")?"  # "PDFS", "T2_FS": the weighting keyword still counts
_PD = re.compile(_B + r"(?:pd|dp|pd[\s_-]?w|proton\w*|intermediate|iw)" + _GLUED_FS + _E)
_T2 = re.compile(_B + r"t2(?:[\s_-]?w)?" + _GLUED_FS + r"(?![a-z0-9*])(?!\s*star)")  # not T2* / T2 star
_T1 = re.compile(_B + r"t1(?:[\s_-]?w)?" + _GLUED_FS + _E)
_STIR = re.compile(_B + r"(?:stir|tirm)" + _E)
_FS = re.compile(_B + r"(?:pd|dp|pdw|t1|t2|t1w|t2w)?" + _FS_WORDS + _E)


@dataclass
class _Candidate:
    plan: VolumePlan
    position: int  # 1-based position of the series in the list (what --series takes besides the UID)
    echo: tuple | None  # (n, of) for one echo of a multi-echo series
    slices: int
    pixel_mm: tuple
    te: float | None
    tr: float | None
    contrast: str | None
    contrast_from: str
    fat_suppressed: bool

    def key(self) -> tuple:
        te_distance = abs(self.te - TARGET_TE_MS) if self.te is not None else np.inf
        return (CONTRAST_RANK[self.contrast], self.fat_suppressed, self.slices,
                -round(self.pixel_mm[0] * self.pixel_mm[1], 2), -te_distance, -self.position)

    def name(self) -> str:
        n = self.plan.series.number
        return f"series #{n}" if n is not None else f"series {self.position} of the list"

    def describe(self, show_descriptions: bool) -> str:
        parts = [str(self.plan.plane), f"{self.slices} slices",
                 f"{self.pixel_mm[0]:.3g}x{self.pixel_mm[1]:.3g} mm pixels"]
        if self.te is not None:
            parts.append(f"TE {self.te:.3g} ms")
        if self.tr is not None:
            parts.append(f"TR {self.tr:.4g} ms")
        parts.append(CONTRAST_NAME[self.contrast] + (f" ({self.contrast_from})" if self.contrast else ""))
        parts.append(f"fat-suppressed: {'yes' if self.fat_suppressed else 'no'}")
        echo = f" echo {self.echo[0]} of {self.echo[1]}" if self.echo else ""
        text = f"{self.name()}{echo} ({', '.join(parts)})"
        if show_descriptions and self.plan.series.description:
            text += f" {self.plan.series.description!r}"
        return text


def description_flags(description: str) -> tuple[str | None, bool]:
    """(weighting named by a Series Description: "PD" | "T2" | "T1" | None, fat suppression named)."""
    d = (description or "").lower()
    named = {w for w, rx in (("PD", _PD), ("T2", _T2), ("T1", _T1)) if rx.search(d)}
    if not named and _STIR.search(d):
        named = {"T2"}
    return (named.pop() if len(named) == 1 else None), bool(_FS.search(d))


def _header_fields(series: Series) -> dict:
    """Repetition Time, Scanning Sequence, Scan Options, Inversion Time, fat suppression of the first file.

    Read from the file (the scan keeps no TR); an unreadable header gives nothing (the rules fall back).
    """
    out = {}
    try:
        ds = read_header(series.files[0])
        shared = ds.get("SharedFunctionalGroupsSequence")
        shared = shared[0] if shared else None

        def get(keyword, sequence=None):
            value = ds.get(keyword)
            if value in (None, "") and shared is not None and sequence and shared.get(sequence):
                value = shared.get(sequence)[0].get(keyword)
            return value

        def number(value):
            try:
                v = float(value)
            except (TypeError, ValueError):
                return None
            return v if np.isfinite(v) and 0 < v < 1e6 else None

        def words(value):
            values = [value] if isinstance(value, str) else list(value)
            return {str(v).strip().upper() for v in values if v not in (None, "")}

        out["tr"] = number(get("RepetitionTime", "MRTimingAndRelatedParametersSequence"))
        out["ti"] = number(get("InversionTime", "MRModifierSequence"))
        out["scanning"] = words(ds.get("ScanningSequence") or "")
        out["options"] = words(ds.get("ScanOptions") or "")
        out["fat_suppression"] = str(get("SpectrallySelectedSuppression", "MRModifierSequence") or "").upper()
        pulse = str(ds.get("PulseSequenceName", "") or "").upper()  # Enhanced MR: no Scanning Sequence
        if ds.get("EchoPulseSequence"):
            out["scanning"] |= {"GR"} if str(ds.EchoPulseSequence).upper() == "GRADIENT" else {"SE"}
        if "IR" in pulse:
            out["scanning"].add("IR")
    except Exception:  # noqa: BLE001 - a hint only: a damaged header just gives no hint
        pass
    return out


def _header_contrast(tr, te, scanning) -> str | None:
    if te is None or ("GR" in scanning and "SE" not in scanning):
        return None
    if te >= 50:
        return "T2"
    if tr is None:
        return "PD" if te >= 20 else None
    if tr >= 1000:
        return "PD"
    return "T1" if te < 30 else None


def _candidates(series: Series, position: int, plans) -> list[_Candidate]:
    headers = None
    sagittal = [p for p in plans if p.plane is not None and p.plane.name == "sagittal"]
    out = []
    for plan in sagittal:
        if headers is None:
            headers = _header_fields(series)
        f = plan.frames[0]
        te, tr = f.echo_time, headers.get("tr")
        named, fs_named = description_flags(series.description)
        contrast, source = (named, "from description") if named else (
            _header_contrast(tr, te, headers.get("scanning", set())), "from TR/TE")
        fs = (fs_named or "FS" in headers.get("options", set())
              or headers.get("fat_suppression", "") in ("FAT", "FAT_AND_WATER")
              or ("IR" in headers.get("scanning", set()) and headers.get("ti") is not None and headers["ti"] < 250))
        out.append(_Candidate(plan, position, None, len(plan.frames), tuple(float(x) for x in f.pixel_spacing),
                              te, tr, contrast, source, bool(fs)))
    echoes = sorted({c.te for c in out if c.te is not None})
    if len(echoes) > 1:
        for c in out:
            if c.te is not None:
                c.echo = (echoes.index(c.te) + 1, len(echoes))
    return out


def _plane_word(plan: VolumePlan) -> str:
    if plan.problem:
        return "unusable"
    return str(plan.plane) if plan.plane is not None else "unknown plane"


def _why(best: _Candidate, other: _Candidate) -> str:
    """The rule that ranked ``best`` above ``other``."""
    reasons = (
        f"contrast ({CONTRAST_NAME[best.contrast]} over {CONTRAST_NAME[other.contrast]}; PD > T2 > unknown > T1)",
        "fat suppression",
        f"more slices ({best.slices} vs {other.slices})",
        f"finer pixels ({best.pixel_mm[0]:.3g} vs {other.pixel_mm[0]:.3g} mm)",
        f"echo time closer to {TARGET_TE_MS:g} ms (PD-like)",
        "earlier in the list (otherwise equal)",
    )
    for a, b, reason in zip(best.key(), other.key(), reasons):
        if a != b:
            return reason
    return reasons[-1]


def _rank(candidates: list[_Candidate], show_descriptions: bool, forced: bool) -> tuple[VolumePlan, str]:
    ranked = sorted(candidates, key=lambda c: c.key(), reverse=True)
    best = ranked[0]
    text = ("the given " if forced else "picked ") + best.describe(show_descriptions)
    same = [c for c in ranked[1:] if c.plan.series is best.plan.series]
    others = [c for c in ranked[1:] if c.plan.series is not best.plan.series]
    series_count = len({id(c.plan.series) for c in candidates})
    if others:
        text += (f"; best of {series_count} sagittal series, over {others[0].name()} by "
                 f"{_why(best, others[0])}")
    elif not forced:
        text += "; the only sagittal series"
    if same:
        text += f"; of its {len(same) + 1} volumes the best by {_why(best, same[0])}"
    return best.plan, text


def choose_series(series_list, key: str | None = None, show_descriptions: bool = False) -> tuple[VolumePlan, str]:
    """The sagittal volume of a study the ACL classifier should read, and a one-line reason.

    series_list: a ScanReport or a list of Series (``scan_source(...).series``, folder or Slicer database).
    key: the user's ``--series`` choice (Series Instance UID or 1-based position, as ``ScanReport.find``);
        it must be sagittal (else MskaiError naming its plane); among its volumes (echoes) the rules pick.
    show_descriptions: quote the Series Description in the reason (free text: may hold names; off by default).
    Raises MskaiError when there is no usable sagittal MR series, naming the planes found, and (without ``key``)
    when the series belong to more than one patient.
    """
    report = series_list if isinstance(series_list, ScanReport) else ScanReport(series=list(series_list))
    if key is not None:
        series = report.find(str(key))
        position = report.series.index(series) + 1
        name = f"series #{series.number}" if series.number is not None else f"series {position} of the list"
        if series.modality and series.modality != "MR":
            raise MskaiError(f"{name} is {series.modality}; the ACL classifier reads MR")
        plans = plan_volumes(series)
        candidates = _candidates(series, position, plans)
        if not candidates:
            planes = ", ".join(sorted({_plane_word(p) for p in plans}))
            raise MskaiError(f"{name} is {planes}, not sagittal: the ACL classifier reads sagittal slices "
                             "(choose a sagittal series)")
        usable = [c for c in candidates if not c.plan.problem and c.slices >= MIN_SLICES]
        if not usable:
            c = candidates[0]
            why = c.plan.problem or f"{c.slices} slices (at least {MIN_SLICES} needed)"
            raise MskaiError(f"{name} is sagittal but cannot be used: {why}")
        return _rank(usable, show_descriptions, forced=True)

    patients = {series.patient for series in report.series if series.is_image}
    if len(patients) > 1:  # never pick "the best series" across patients (e.g. a Study Instance UID they share)
        raise MskaiError(f"the series come from {len(patients)} patients; the ACL is classified per patient: give "
                         "one patient's study (or --series), or use `mskai batch classify`, which classifies each "
                         "patient on its own")
    found = Counter()  # plane -> number of series holding volumes in it
    candidates, thin, broken, unusable = [], 0, [], []
    for position, series in enumerate(report.series, 1):
        if not series.is_image:
            continue
        if series.modality and series.modality != "MR":
            found[f"{series.modality} (not MR)"] += 1
            continue
        try:
            plans = plan_volumes(series)
        except MskaiError as exc:
            found["unusable"] += 1
            unusable.append(str(exc))
            continue
        for word in {_plane_word(p) for p in plans}:
            found[word] += 1
        for c in _candidates(series, position, plans):
            if c.plan.problem:
                broken.append(c.plan.problem)
            elif c.slices < MIN_SLICES:
                thin += 1
            else:
                candidates.append(c)
    if not candidates:
        if not found:
            raise MskaiError("no image series found")
        listing = ", ".join(f"{plane} ({n})" for plane, n in sorted(found.items(), key=lambda x: (-x[1], x[0])))
        detail = ""
        if thin:
            detail = f"; the sagittal one(s) have fewer than {MIN_SLICES} slices (localisers?)"
        elif broken:
            detail = f"; the sagittal one cannot be used: {broken[0]}"
        elif unusable:
            detail = f"; {unusable[0]}"
        what = "no usable sagittal series" if thin or broken or unusable else "no sagittal series"
        raise MskaiError(f"{what}: found {listing}{detail}")
    return _rank(candidates, show_descriptions, forced=False)
