"""mskai.dependencies: missing-package detection, the install plan, and consent before any install."""

import ast
import sys
import tomllib

import pytest

import mskai
from mskai import dependencies as deps

from conftest import REPO


class Recorder:
    """A fake installer that records its calls and returns ``result``."""

    def __init__(self, result=True, error=None):
        self.calls, self.result, self.error = [], result, error

    def __call__(self, *args):
        self.calls.append(args[0] if len(args) == 1 else args)
        if self.error:
            raise self.error
        return self.result


def test_module_list_equals_pyproject_dependencies():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert list(deps.REQUIREMENTS) == pyproject["project"]["dependencies"]
    # every requirement is pinned to a range (never a bare "torch") and parses
    assert all(r.specifier for r in deps.engine_requirements())


def test_missing_detection_on_fake_and_present_names(monkeypatch):
    fake = "mskai-surely-absent-package-xyz>=1.0"
    monkeypatch.setattr(deps, "REQUIREMENTS", (fake, "pytest>=1.0", "pytest>=999.0"))
    missing = deps.missing_requirements()
    assert [str(r) for r in missing] == [fake, "pytest>=999.0"]
    assert missing[0].installed is None and missing[0].reason == "not installed"
    assert missing[1].installed and "too old" in missing[1].reason


def test_detection_imports_nothing_heavy(monkeypatch):
    for name in ("torch", "monai", "scipy", "matplotlib"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    deps.missing_requirements()
    assert not {"torch", "monai", "scipy", "matplotlib"} & set(sys.modules)


def test_module_without_metadata_counts_as_present(monkeypatch, tmp_path):
    (tmp_path / "mskai_fake_slicer_builtin.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert deps.installed_version("mskai-fake-slicer-builtin") == ""
    assert deps.missing_requirements(["mskai-fake-slicer-builtin>=9.3"]) == []


@pytest.mark.parametrize("version,spec,ok", [
    ("2.13.0+cpu", ">=2.1", True), ("2.0.1", ">=2.1", False), ("1.10", ">=1.9", True), ("4.60.0", ">=4.60", True),
    ("3.0", ">=3.0,<4", True), ("4.0", ">=3.0,<4", False), ("", ">=9", True),
])
def test_version_compare_with_and_without_packaging(monkeypatch, version, spec, ok):
    assert deps.satisfies(version, spec) is ok
    monkeypatch.setitem(sys.modules, "packaging", None)  # "import packaging" now fails
    monkeypatch.setitem(sys.modules, "packaging.specifiers", None)
    assert deps.satisfies(version, spec) is ok


def test_plan_text_names_sizes_destination_and_offline():
    plan = deps.install_plan(["torch>=2.1", "monai>=1.3"], torch_installer=True)
    text = plan["text"]
    assert "torch>=2.1" in text and "monai>=1.3" in text and "MB" in text and "GB" in text
    assert sys.prefix in text and "Offline" in text and "--no-index --find-links" in text
    assert [p["via"] for p in plan["packages"]] == ["PyTorch extension", "pip"]
    assert plan["total_mb"] >= 200 and plan["max_mb"] > plan["total_mb"]


def test_plan_warns_about_cuda_torch_from_pypi_on_linux():
    plan = deps.install_plan(["torch>=2.1"], platform="linux")
    assert plan["total_mb"] >= 2000 and "multi-GB CUDA" in plan["text"] and "PyTorch extension" in plan["text"]
    assert deps.install_plan(["torch>=2.1"], platform="win32")["total_mb"] < 1000


def test_nothing_installed_when_refused():
    pip, torch, confirm = Recorder(), Recorder(), Recorder(result=False)
    assert deps.install(["torch>=2.1", "monai>=1.3"], pip, confirm, install_torch=torch) is False
    assert len(confirm.calls) == 1 and "monai>=1.3" in confirm.calls[0]
    assert pip.calls == [] and torch.calls == []


def test_torch_goes_to_the_extension_first_and_the_rest_to_pip_pinned():
    order = []
    pip = Recorder()
    torch = Recorder()
    pip_logged = lambda r: (order.append("pip"), pip(r))[1]  # noqa: E731
    torch_logged = lambda r: (order.append("torch"), torch(r))[1]  # noqa: E731
    missing = deps.missing_requirements(["mskai-absent-a>=1.0", "mskai-absent-b>=2.0"]) + [deps.parse("torch>=2.1")]
    assert deps.install(missing, pip_logged, Recorder(), install_torch=torch_logged) is True
    assert order == ["torch", "pip"]
    assert torch.calls == ["torch>=2.1"]
    assert pip.calls == ["mskai-absent-a>=1.0 mskai-absent-b>=2.0"]


def test_torch_through_pip_when_no_extension_is_pinned():
    pip = Recorder()
    assert deps.install(["torch>=2.1", "monai>=1.3"], pip, Recorder()) is True
    assert pip.calls == ["torch>=2.1", "monai>=1.3"]


def test_declined_in_the_pytorch_extension_installs_nothing_else():
    pip = Recorder()
    assert deps.install(["torch>=2.1", "monai>=1.3"], pip, Recorder(), install_torch=Recorder(result=None)) is False
    assert pip.calls == []


def test_failures_become_mskai_errors_with_offline_advice():
    pip = Recorder(error=RuntimeError("network unreachable"))
    with pytest.raises(mskai.MskaiError, match="network unreachable") as raised:
        deps.install(["monai>=1.3"], pip, Recorder())
    assert "--no-index --find-links" in str(raised.value)


def test_slicer_provided_vtk_is_never_pip_installed():
    pip, confirm = Recorder(), Recorder()
    with pytest.raises(mskai.MskaiError, match="comes with 3D Slicer"):
        deps.install([deps.Requirement("vtk", ">=9.3", "9.2.0")], pip, confirm)
    assert pip.calls == [] and confirm.calls == []


def test_nothing_missing_asks_nothing():
    confirm = Recorder()
    assert deps.install([], Recorder(), confirm) is True and confirm.calls == []


def test_bad_requirement_text_is_refused():
    with pytest.raises(mskai.MskaiError):
        deps.parse("torch; python_version < '3'")


def test_ensure_reports_ready_refused_and_restart(monkeypatch):
    pip = Recorder()
    assert deps.ensure(pip, Recorder(), missing=[]) == {"ready": True, "restart": False,
                                                        "message": "The engine's Python packages are installed."}
    refused = deps.ensure(pip, Recorder(result=False), missing=["mskai-absent-a>=1.0"])
    assert not refused["ready"] and not refused["restart"] and "--no-index" in refused["message"] and pip.calls == []
    # the fake pip installs nothing, so the package is still absent afterwards: a restart is the way forward
    after = deps.ensure(pip, Recorder(), missing=["mskai-absent-a>=1.0"])
    assert after["restart"] and not after["ready"] and pip.calls == ["mskai-absent-a>=1.0"]
    # installed for real (here: already present) and nothing loaded: ready without a restart
    monkeypatch.setattr(deps, "missing_requirements", lambda requirements=None: [])
    assert deps.ensure(pip, Recorder(), missing=["mskai-absent-b>=1.0"])["ready"]


def test_the_check_imports_no_third_party_module():
    """Inside Slicer the check runs before anything is installed: it may use only the standard library."""
    import subprocess

    code = ("import sys; before = set(sys.modules); from mskai import dependencies; dependencies.missing_requirements();"
            " new = {m.split('.')[0] for m in set(sys.modules) - before};"
            " print(sorted(n for n in new if n not in sys.stdlib_module_names))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert set(ast.literal_eval(result.stdout)) <= {"mskai", "packaging"}
