"""The one label table of the bone models: values, names, colours and SNOMED CT codes.

Values keep the seed project's encoding (0 background, 1 tibia, 2 femur, 3 fibula, 4 pelvis) and add 5 patella and
6 sacrum (with the coccyx: taught as its own bone so that it is never called hip bone; the lumbar spine stays
background). Packages carry their own table: a 0.3.0 package has no sacrum.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SNOMED = "SCT"
ANATOMICAL_CATEGORY = ("123037004", SNOMED, "Anatomical Structure")
BONE_TYPE = ("272673000", SNOMED, "Bone")  # Body structure > Bone structure
LATERALITY = {"left": ("7771000", SNOMED, "Left"), "right": ("24028007", SNOMED, "Right")}


@dataclass(frozen=True)
class Label:
    value: int
    name: str
    color: tuple  # RGB, 0-1
    snomed_code: str
    snomed_meaning: str

    def to_json(self) -> dict:
        return asdict(self) | {"color": list(self.color)}


BONES = (
    Label(1, "tibia", (0.89, 0.81, 0.34), "12611008", "Tibia"),
    Label(2, "femur", (0.87, 0.51, 0.37), "71341001", "Femur"),
    Label(3, "fibula", (0.55, 0.78, 0.45), "87342007", "Fibula"),
    Label(4, "pelvis", (0.42, 0.61, 0.85), "29836001", "Hip bone"),
    Label(5, "patella", (0.80, 0.45, 0.75), "64234005", "Patella"),
    Label(6, "sacrum", (0.55, 0.45, 0.85), "54735007", "Sacrum"),
)


BONE_VALUES = {b.name: b.value for b in BONES}  # name -> label value of the project's table


def label_table(labels=BONES) -> list[dict]:
    """The table as JSON-ready dicts (model metadata, reports)."""
    return [label.to_json() for label in labels]


def labels_from_table(table) -> tuple[Label, ...]:
    return tuple(Label(int(t["value"]), t["name"], tuple(t["color"]), str(t["snomed_code"]), t["snomed_meaning"])
                 for t in table)


def terminology_tag(label: Label, laterality: str | None = None) -> str:
    """Slicer's segment terminology string (``Segment<N>_Tags`` ``TerminologyEntry``) for a label."""
    def code(triple):
        value, scheme, meaning = triple
        return f"{scheme}^{value}^{meaning}"

    modifier = code(LATERALITY[laterality]) if laterality else "^^"
    return (f"Segmentation category and type - 3D Slicer General Anatomy list~{code(ANATOMICAL_CATEGORY)}"
            f"~{SNOMED}^{label.snomed_code}^{label.snomed_meaning}~{modifier}~Anatomic codes - DICOM master list~^^~^^")
