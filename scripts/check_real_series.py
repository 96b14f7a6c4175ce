"""Segment every volume of a real DICOM series and run the label-free anatomical plausibility checks.

    python scripts/check_real_series.py [--source ../shared/data/knee_mese_t2_dicom] [--model mskai-bones-demo]
                                        [--out real_checks]

Writes one three-plane overlay PNG per volume, plausibility.json, and prints a table: one row per volume,
each bone's volume in mL and the checks that failed. No patient data goes into the outputs.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mskai.dicom import load_series, scan_source  # noqa: E402
from mskai.models.registry import find_model  # noqa: E402
from mskai.segment.figures import three_planes_png  # noqa: E402
from mskai.segment.infer import SegmentOptions, segment_volume  # noqa: E402
from mskai.segment.outputs import bone_statistics  # noqa: E402
from mskai.segment.labels import BONES  # noqa: E402
from mskai.segment.plausibility import passed, plausibility, solidity  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "knee_mese_t2_dicom"))
    parser.add_argument("--model", default="mskai-bones-demo")
    parser.add_argument("--out", default="real_checks")
    args = parser.parse_args()
    package = find_model(args.model, task="segmentation")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for n, series in enumerate(scan_source(args.source).series, 1):
        for v, volume in enumerate(load_series(series), 1):
            name = f"series{n}-v{v}"
            labels = segment_volume(volume, package, SegmentOptions()).labels
            checks = plausibility(labels)
            volumes = {b["name"]: b["volume_ml"] for b in bone_statistics(labels)}
            solid = {b.name: solidity(labels, b.value) for b in BONES if b.name in ("femur", "tibia")}
            results.append({"volume": name, "label": volume.label, "plane": volume.meta.get("plane"),
                            "bones_ml": volumes, "solidity": solid, "checks": checks, "passed": passed(checks)})
            failed = [c["check"] + f" ({c['detail']})" for c in checks if c["passed"] is False]
            print(f"{name:<12} {volume.label:<14} " + " ".join(f"{k} {ml:.1f}" for k, ml in volumes.items())
                  + " solidity " + " ".join(f"{k} {v}" for k, v in solid.items())
                  + f"  {'PASS' if not failed else 'FAIL: ' + '; '.join(failed)}", flush=True)
            three_planes_png(volume, labels, out / f"{name}.png",
                             f"{name} ({volume.label}), {package.id} {package.version}: "
                             f"{'plausible' if not failed else 'implausible'} (demo model, not for clinical use)")
    (out / "plausibility.json").write_text(json.dumps({"model": f"{package.id}@{package.version}",
                                                      "results": results}, indent=2))
    print(f"{sum(r['passed'] for r in results)} of {len(results)} volumes pass every check")


if __name__ == "__main__":
    main()
