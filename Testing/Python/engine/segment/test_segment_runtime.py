"""ONNX Runtime inference (mskai.segment.runtime, windows) against the torch + MONAI path it replaces on the CPU."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, make_package
from mskai.models.package import load_package


@pytest.mark.parametrize("shape", [(70, 50, 41), (40, 30, 20)])  # several windows per axis; smaller than one window
def test_windows_equal_monai_sliding_window_inference(shape):
    from monai.inferers import sliding_window_inference

    from mskai.segment.windows import count_windows, sliding_windows

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 3, 1)).eval()
    image = torch.rand(1, *shape)
    roi, done = (32, 32, 32), []
    with torch.inference_mode():
        expected = sliding_window_inference(image[None], roi, 2, net, overlap=0.25, mode="gaussian")[0].numpy()
        got = sliding_windows(lambda w: net(torch.from_numpy(w)).numpy(), image.numpy(), roi, 3, 0.25, 2, done.append)
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-5
    assert done[-1] == count_windows(shape, roi, 0.25) and len(done) == -(-done[-1] // 2)


def test_onnx_runtime_segments_the_real_knee_as_torch_does(knee_dicom, tmp_path, monkeypatch):
    """The bundled model on the real knee series: the same labels by ONNX Runtime as by torch (Dice >= 0.999 per
    bone), the export cached by the weights' hash and reused."""
    from mskai.dicom import plan_volumes, read_volume, scan_folder
    from mskai.models.registry import find_model
    from mskai.segment.infer import SegmentOptions, segment_volume
    from mskai.segment.metrics import evaluate

    monkeypatch.setenv("MSKAI_CACHE_DIR", str(tmp_path / "cache"))
    (series,) = scan_folder(knee_dicom).series
    volume = read_volume(plan_volumes(series)[0])
    package = find_model("mskai-bones-demo")
    fast = segment_volume(volume, package, SegmentOptions(device="cpu"))
    monkeypatch.setenv("MSKAI_RUNTIME", "torch")
    reference = segment_volume(volume, package, SegmentOptions(device="cpu"))
    assert fast.settings["runtime"] == "onnxruntime" and reference.settings["runtime"] == "torch"
    rows = [r for r in evaluate(fast.labels, reference.labels) if np.isfinite(r["dice"])]
    assert rows and all(r["dice"] >= 0.999 for r in rows), rows
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1


def test_a_damaged_export_falls_back_to_torch_and_is_made_again(tmp_path, monkeypatch):
    from mskai.segment.runtime import _cache_path, onnx_runner

    monkeypatch.setenv("MSKAI_CACHE_DIR", str(tmp_path / "cache"))
    package = load_package(make_package(tmp_path / "model"))
    path = _cache_path(package, (32, 32, 32))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx file")
    with pytest.warns(UserWarning, match="ONNX Runtime not used"):
        assert onnx_runner(package, (32, 32, 32), 1) is None
    assert not path.exists()
    run = onnx_runner(package, (32, 32, 32), 1)
    window = np.random.default_rng(1).random((2, 1, 32, 32, 32), dtype=np.float32)
    with torch.inference_mode():
        expected = package.build_network().eval()(torch.from_numpy(window)).numpy()
    assert np.abs(run(window) - expected).max() < 1e-3


def test_segmenting_on_the_cpu_does_not_import_monai_once_exported(tmp_path):
    """After the one export, a segmentation process runs without importing MONAI (its import is most of the
    start-up of a knee)."""
    package = make_package(tmp_path / "model")
    code = ("import sys; import numpy as np; from mskai.models.package import load_package; "
            "from mskai.segment.infer import SegmentOptions, segment_volume; from mskai.synth.phantom import phantom; "
            f"r = segment_volume(phantom(shape=(40, 40, 20)), load_package({str(package)!r}), "
            "SegmentOptions(device='cpu', check_compatibility=False)); "
            "print(r.settings['runtime'], 'monai' in sys.modules)")
    env = {"MSKAI_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    runs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                           env=env) for _ in range(2)]
    assert [r.stdout.split()[-2:] for r in runs] == [["onnxruntime", "True"], ["onnxruntime", "False"]], \
        [r.stderr[-2000:] for r in runs]
