"""The engine's third-party packages: which are missing in this Python, and installing them with consent.

Inside 3D Slicer the ``mskai`` code ships with the extension, but torch, MONAI, pydicom... do not. The modules
call :func:`missing_requirements` (fast: it reads package metadata, it never imports torch), show the text of
:func:`install_plan` and, only when the user agrees, :func:`install` them into Slicer's own Python.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass

from mskai import MskaiError

# The ``dependencies`` of pyproject.toml, kept here because the extension ships this code without its
# distribution metadata (a test checks both lists are equal). The list travels with the code it describes,
# so it is used even where an ``mskai`` distribution is installed: that metadata may belong to another copy
# of the package or be stale (an editable install keeps the list it was installed with).
REQUIREMENTS = (
    "numpy>=1.24",
    "pydicom>=3.0",
    "pylibjpeg>=2.0",
    "pylibjpeg-libjpeg>=2.1",
    "pylibjpeg-openjpeg>=2.3",
    "pyjpegls>=1.4",
    "nibabel>=5.0",
    "pynrrd>=1.0",
    "dicognito>=0.17",
    "dicom-anonymizer>=2.1",
    "torch>=2.1",
    "monai>=1.3",
    "scipy>=1.10",
    "vtk>=9.3",
    "slicerio>=1.0",
    "highdicom>=0.22",
    "safetensors>=0.4",
    "jsonschema>=4.0",
    "matplotlib>=3.7",
    "tqdm>=4.60",
    "psutil>=5.9",
    "scikit-learn>=1.3",
    "scikit-image>=0.21",
    "dask>=2024.1",
    "distributed>=2024.1",
    "onnx>=1.16",
    "onnxruntime>=1.18",
)

# Import names that differ from the distribution names (used only when a distribution has no metadata).
IMPORT_NAMES = {
    "pylibjpeg-libjpeg": "libjpeg",
    "pylibjpeg-openjpeg": "openjpeg",
    "pyjpegls": "jpeg_ls",
    "pynrrd": "nrrd",
    "dicom-anonymizer": "dicomanonymizer",
    "scikit-learn": "sklearn",
    "scikit-image": "skimage",
}

# Typical wheel sizes in MB (Python 3.11, 64-bit), for the confirmation text only.
TYPICAL_MB = {
    "numpy": 16, "pydicom": 2.4, "pylibjpeg": 0.1, "pylibjpeg-libjpeg": 4, "pylibjpeg-openjpeg": 2.5,
    "pyjpegls": 2, "nibabel": 3.5, "pynrrd": 0.1, "dicognito": 0.2, "dicom-anonymizer": 0.1,
    "torch": 200, "monai": 2.7, "scipy": 36, "vtk": 100, "slicerio": 0.1, "highdicom": 1,
    "safetensors": 0.5, "jsonschema": 0.5, "matplotlib": 8.5, "tqdm": 0.1, "psutil": 0.3, "scikit-learn": 13, "scikit-image": 15,
    "dask": 7, "distributed": 10,  # with their own requirements (cloudpickle, msgpack, tornado, ...)
}
TORCH_CUDA_MB = 2500  # torch + the NVIDIA libraries pip pulls with a CUDA build
UNKNOWN_MB = 5

# Packages that come with 3D Slicer itself: installing another copy with pip would break the application.
SLICER_PROVIDED = {"vtk"}


@dataclass(frozen=True)
class Requirement:
    """One requirement: ``name`` + ``specifier`` (">=2.1"), and the version found (None: absent)."""

    name: str
    specifier: str = ""
    installed: str | None = None

    def __str__(self) -> str:
        return self.name + self.specifier

    @property
    def reason(self) -> str:
        return "not installed" if self.installed is None else f"{self.installed} is too old"


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*((?:[<>=!~]=?\s*[\w.*+!-]+\s*,?\s*)*)$")


def parse(text) -> Requirement:
    """A ``Requirement`` from ``"name>=1.0"`` (a Requirement passes through); extras and markers are refused."""
    if isinstance(text, Requirement):
        return text
    match = _REQUIREMENT.match(str(text))
    if not match:
        raise MskaiError(f"Not a simple requirement: {text!r}")
    return Requirement(_normalise(match.group(1)), re.sub(r"\s+", "", match.group(2)))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def engine_requirements() -> list[Requirement]:
    """The engine's requirements (``REQUIREMENTS``), parsed."""
    return [parse(r) for r in REQUIREMENTS]


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``; "" when importable but without metadata (e.g. the VTK
    built into 3D Slicer); None when absent. Nothing is imported."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    module = IMPORT_NAMES.get(_normalise(name), _normalise(name).replace("-", "_"))
    try:
        return "" if importlib.util.find_spec(module) is not None else None
    except (ImportError, ValueError):  # a broken package, or a module in sys.modules without a spec
        return None


def satisfies(version: str, specifier: str) -> bool:
    """Whether ``version`` meets ``specifier`` (e.g. ">=2.1,<3"); an unknown version ("") is accepted."""
    if not version or not specifier:
        return True
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion
    except ImportError:
        return _simple_satisfies(version, specifier)
    try:
        return SpecifierSet(specifier).contains(version, prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return _simple_satisfies(version, specifier)


def _release(version: str) -> tuple:
    """Leading numeric release of a version ("2.13.0+cpu" -> (2, 13, 0)), trailing zeros dropped."""
    parts = []
    for piece in re.split(r"[.+-]", version.strip().lstrip("vV")):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _simple_satisfies(version: str, specifier: str) -> bool:
    """A small comparison for when ``packaging`` is not importable: numeric releases only, no wildcards."""
    have = _release(version)
    compare = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
               "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
               "~=": lambda a, b: a >= b}
    for clause in filter(None, specifier.split(",")):
        op = re.match(r"[<>=!~]=?", clause).group()
        if not compare[op](have, _release(clause[len(op):])):
            return False
    return True


def missing_requirements(requirements=None) -> list[Requirement]:
    """The requirements (default: the engine's) that are absent or too old in the running interpreter.

    Each result carries the version found in ``installed`` (None when absent). Reads package metadata only.
    """
    importlib.invalidate_caches()  # packages installed since the last call are seen
    missing = []
    for requirement in (engine_requirements() if requirements is None else [parse(r) for r in requirements]):
        version = installed_version(requirement.name)
        if version is None or not satisfies(version, requirement.specifier):
            missing.append(Requirement(requirement.name, requirement.specifier, version))
    return missing


def _already_imported(name: str) -> bool:
    module = IMPORT_NAMES.get(name, name.replace("-", "_"))
    return module in sys.modules


def _quoted(requirements) -> str:
    return " ".join(f'"{r}"' for r in requirements)


def install_plan(missing, torch_installer: bool = False, platform: str | None = None) -> dict:
    """What :func:`install` would do for ``missing``, with approximate sizes and the text for a confirmation.

    ``torch_installer``: torch goes through the PyTorch Slicer extension (it picks the CPU or CUDA build).
    Returns a dict: ``packages`` (requirement, reason, size_mb, via), ``total_mb``, ``max_mb`` (with a CUDA torch),
    ``blocked`` (requirements that come with 3D Slicer and cannot be installed), ``restart`` (packages already
    loaded: restart Slicer after installing), ``pip_command``, ``offline_commands`` and ``text``.
    """
    platform = platform or sys.platform
    missing = [parse(r) for r in missing]
    packages, blocked = [], []
    for r in missing:
        if r.name in SLICER_PROVIDED:
            blocked.append(r)
            continue
        via = "PyTorch extension" if r.name == "torch" and torch_installer else "pip"
        size = TYPICAL_MB.get(r.name, UNKNOWN_MB)
        if r.name == "torch" and via == "pip" and platform.startswith("linux"):
            size = TORCH_CUDA_MB  # PyPI's Linux torch is the CUDA build
        packages.append({"requirement": str(r), "name": r.name, "reason": r.reason, "size_mb": size, "via": via})
    total = sum(p["size_mb"] for p in packages)
    cuda_extra = TORCH_CUDA_MB - TYPICAL_MB["torch"] if any(p["via"] == "PyTorch extension" for p in packages) else 0
    names = [p["requirement"] for p in packages]
    restart = [p["name"] for p in packages if _already_imported(p["name"])]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    pip_command = f"PythonSlicer -m pip install {_quoted(names)}"
    offline = [f"python{python} -m pip download --only-binary=:all: -d wheels {_quoted(names)}",
               f"PythonSlicer -m pip install --no-index --find-links wheels {_quoted(names)}"]

    lines = []
    if blocked:
        lines.append(f"{', '.join(f'{r} ({r.reason})' for r in blocked)} comes with 3D Slicer and cannot be "
                     "installed separately: use a newer 3D Slicer.")
    if packages:
        lines.append(f"The mskai engine needs {len(packages)} Python package(s) that are missing or too old in "
                     f"3D Slicer's own Python ({sys.prefix}):")
        for p in packages:
            size = _mb(p["size_mb"])
            if p["name"] == "torch" and p["via"] == "PyTorch extension":
                size += f" for the CPU build, {_mb(TORCH_CUDA_MB)} for the CUDA build it picks for an NVIDIA GPU"
            elif p["name"] == "torch" and p["size_mb"] == TORCH_CUDA_MB:
                size += " (the CUDA build from PyPI)"
            lines.append(f"  - {p['requirement']}: {p['reason']}, about {size}, via {p['via']}")
        total_text = f"about {_mb(total)}" + (f" (up to {_mb(total + cuda_extra)} with CUDA)" if cuda_extra else "")
        lines.append(f"Download: {total_text}, plus small packages these depend on. It needs an internet "
                     "connection and takes a few minutes. Nothing outside 3D Slicer's Python is changed.")
        if any(p["name"] == "torch" and p["via"] == "pip" for p in packages):
            lines.append("Note: a plain 'pip install torch' on Linux downloads the multi-GB CUDA build from PyPI. "
                         "Prefer the PyTorch extension (Extensions Manager > PyTorch): it installs the build that "
                         "matches your GPU, or the CPU build.")
        if restart:
            lines.append(f"Restart 3D Slicer after installing: {', '.join(restart)} is already loaded.")
        lines.append(f"Offline: on a computer with internet, the same operating system and Python {python}, run\n"
                     f"    {offline[0]}\n"
                     "(for a CPU-only torch add --extra-index-url https://download.pytorch.org/whl/cpu), copy the "
                     f"'wheels' folder here and run (PythonSlicer is in Slicer's bin folder)\n    {offline[1]}")
    return {"packages": packages, "total_mb": total, "max_mb": total + cuda_extra, "blocked": [str(r) for r in blocked],
            "restart": restart, "pip_command": pip_command, "offline_commands": offline, "text": "\n".join(lines)}


def _mb(size: float) -> str:
    return f"{size / 1000:.1f} GB" if size >= 1000 else f"{max(1, round(size))} MB"


def install(missing, pip_install, confirm, install_torch=None) -> bool:
    """Install ``missing`` requirements after the user agrees; True when done, False when refused.

    :param missing: requirements (``Requirement`` or strings such as "monai>=1.3"), e.g. from missing_requirements().
    :param pip_install: ``pip_install(requirements: str)`` installs space-separated requirement strings
        (``slicer.util.pip_install`` in Slicer); it raises on failure.
    :param confirm: ``confirm(text) -> bool`` shows the install_plan text; nothing is installed unless it returns True.
    :param install_torch: optional ``install_torch(requirement: str)`` (the PyTorch extension's installer); it returns
        a false value when the user declined there. Torch is installed first, so MONAI does not pull PyPI's torch.
    :raises MskaiError: a package comes with 3D Slicer, or an installation failed (the message says what to do).
    """
    missing = [parse(r) for r in missing]
    if not missing:
        return True
    plan = install_plan(missing, torch_installer=install_torch is not None)
    if plan["blocked"]:
        raise MskaiError(plan["text"].splitlines()[0])
    if not confirm(plan["text"]):
        return False
    torch = [r for r in missing if r.name == "torch"]
    rest = [str(r) for r in missing if r.name != "torch"]
    offline = "\n".join(plan["offline_commands"])
    try:
        if torch and install_torch is not None:
            if not install_torch(str(torch[0])):
                return False
        elif torch:
            pip_install(str(torch[0]))
        if rest:
            pip_install(" ".join(rest))
    except MskaiError:
        raise
    except Exception as error:  # pip's CalledProcessError, a network error, the PyTorch extension's errors
        raise MskaiError(f"Installing {', '.join(map(str, missing))} failed: {error}. Check the internet connection "
                         f"and the Python console, or install offline from downloaded wheels:\n{offline}") from error
    return True


def ensure(pip_install, confirm, install_torch=None, missing=None) -> dict:
    """The whole flow of a module: find what is missing, ask, install, and say whether a restart is needed.

    ``missing``: a missing_requirements() result already at hand (default: computed here). The callables are as in
    :func:`install`. Returns {"ready": usable now, "restart": installed but the application must restart,
    "message": one line for the module's status}. Raises MskaiError as install() does.
    """
    missing = missing_requirements() if missing is None else [parse(r) for r in missing]
    if not missing:
        return {"ready": True, "restart": False, "message": "The engine's Python packages are installed."}
    plan = install_plan(missing, torch_installer=install_torch is not None)
    if not install(missing, pip_install, confirm, install_torch):
        return {"ready": False, "restart": False,
                "message": "Nothing was installed. Offline: " + "  then  ".join(plan["offline_commands"])}
    still = missing_requirements([Requirement(r.name, r.specifier) for r in missing])
    if plan["restart"] or still:
        names = ", ".join(plan["restart"] or [r.name for r in still])
        return {"ready": False, "restart": True,
                "message": f"Restart 3D Slicer to finish installing the Python packages ({names})."}
    return {"ready": True, "restart": False, "message": "The engine's Python packages are installed."}
