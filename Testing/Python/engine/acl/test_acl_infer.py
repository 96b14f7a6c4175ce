"""The ACL engine end to end: MRNet-style network, Grad-CAM, `mskai classify`, `train-acl`, `evaluate-acl`."""

import json

import numpy as np
import pytest
import torch

from conftest import make_package, run_mskai
from mskai import MskaiError
from mskai.acl import GRADES
from mskai.models.mrnet import MRNetStyle, load_backbone


def test_network_pools_over_slices_and_any_slice_count():
    torch.manual_seed(0)
    for pooling in ("max", "attention"):
        net = MRNetStyle(in_channels=2, n_classes=4, pooling=pooling).eval()
        x = torch.rand(3, 2, 10, 64, 64)
        assert net(x).shape == (3, 4)
        assert net(torch.rand(1, 2, 23, 64, 64)).shape == (1, 4)  # the slice count is free
        # a network that pools over slices does not care about their order
        assert torch.allclose(net(x), net(x.flip(2)), atol=1e-5)


@pytest.mark.parametrize("layers, widths", [((1, 1, 1, 1), (16, 32, 64, 128)), ((2, 1, 2, 1), (8, 16, 32, 48))])
def test_the_plain_torch_backbone_is_monai_resnet_with_its_names_and_outputs(layers, widths):
    from monai.networks.nets import ResNet

    from mskai.models.mrnet import ResNet2d

    torch.manual_seed(3)
    monai_net = ResNet(block="basic", layers=list(layers), block_inplanes=list(widths), spatial_dims=2,
                       n_input_channels=2, conv1_t_stride=2, bias_downsample=False, feed_forward=False)
    for module in monai_net.modules():  # running statistics as a trained network has them
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    ours = ResNet2d(2, layers, widths)
    assert sorted(ours.state_dict()) == sorted(monai_net.state_dict())
    ours.load_state_dict(monai_net.state_dict())
    x = torch.randn(3, 2, 96, 80)
    assert torch.allclose(ours.eval()(x), monai_net.eval()(x), atol=1e-6)
    with pytest.raises(MskaiError, match="four positive entries"):
        MRNetStyle(layers=(1, 1, 1), widths=(8, 16, 32))


def test_backbone_weights_in_torchvision_layout_load_and_a_mismatch_is_refused(tmp_path):
    from monai.networks.nets import ResNet
    from safetensors.torch import save_file

    rgb = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[16, 32, 64, 128], spatial_dims=2,
                 n_input_channels=3, conv1_t_stride=2, bias_downsample=False, num_classes=1000)
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, tmp_path / "imagenet.safetensors")
    net = MRNetStyle(in_channels=1)
    loaded = load_backbone(net, tmp_path / "imagenet.safetensors")
    assert "layer4.0.conv2.weight" in loaded and "fc.weight" not in loaded
    assert torch.equal(net.backbone.layer2[0].conv1.weight, rgb.layer2[0].conv1.weight)
    assert torch.allclose(net.backbone.conv1.weight, rgb.conv1.weight.mean(dim=1, keepdim=True))
    with pytest.raises(MskaiError, match="do not fit"):
        load_backbone(MRNetStyle(in_channels=1, widths=(8, 16, 32, 64)), tmp_path / "imagenet.safetensors")
    (tmp_path / "evil.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(MskaiError, match="Cannot read"):
        load_backbone(net, tmp_path / "evil.safetensors")


def test_grad_cam_explains_the_class_and_is_zero_where_nothing_speaks_for_it():
    from mskai.acl.cam import grad_cam

    torch.manual_seed(1)
    net = MRNetStyle(in_channels=1, n_classes=2).eval()
    x = torch.zeros(1, 1, 6, 64, 64)
    x[0, 0, 3, 20:40, 20:40] = 1.0  # one bright square on one slice: the only thing that differs from zero
    probabilities, cam, target = grad_cam(net, x)
    with torch.inference_mode():
        assert np.allclose(probabilities, torch.softmax(net(x), 1)[0].numpy(), atol=1e-6)
    assert target == int(np.argmax(probabilities)) and cam.shape == (6, 64, 64)
    assert 0.0 <= cam.min() and cam.max() <= 1.0
    _, other, explained = grad_cam(net, x, target=1 - target)
    assert explained == 1 - target and not np.allclose(cam, other)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A synthetic knee study (sagittal + coronal series) of a held-out shape subject, with a complete rupture."""
    from mskai.synth.acl_knee import write_acl_study

    folder = tmp_path_factory.mktemp("acl") / "study"
    write_acl_study(folder, grade=3, seed=5, planes=("sagittal", "coronal"))
    return folder


@pytest.fixture(scope="module")
def tiny_acl_package(tmp_path_factory):
    """`mskai train-acl` end to end on a tiny synthetic set: a real (if untrained) ACL package."""
    out = tmp_path_factory.mktemp("acl") / "package"
    run_mskai("train-acl", "--synthetic", "8", "--epochs", "1", "--batch-size", "4", "--size", "48", "--depth", "8",
              "--field-mm", "140", "--widths", "8,8,16,16", "--intensity", "histogram", "--no-cache",
              "--id", "tiny-acl", "-o", out)
    return out


def test_train_acl_writes_a_demo_package_with_its_log_and_curves(tiny_acl_package):
    meta = json.loads((tiny_acl_package / "metadata.json").read_text())
    assert meta["task"] == "acl-classification" and meta["demo"] is True
    assert meta["classes"] == ["healthy", "minor strain", "partial rupture", "complete rupture"]
    assert meta["preprocessing"]["size"] == 48 and meta["network"]["class"] == "MRNetStyle"
    assert meta["preprocessing"]["intensity"] == "histogram" and len(meta["preprocessing"]["landmarks"]) == 11
    assert "synthetic" in meta["training_data"]
    log = json.loads((tiny_acl_package / "training_log.json").read_text())["log"]
    assert len(log) == 1 and {"train_loss", "val_loss", "accuracy", "macro_f1", "auc"} <= set(log[0])
    assert (tiny_acl_package / "training_curves.png").stat().st_size > 1000


def test_classify_a_study_picks_the_sagittal_series_and_writes_report_cam_and_png(study, tiny_acl_package, tmp_path):
    from mskai.dicom import plan_volumes, read_volume, scan_folder
    from mskai.volume_files import read_volume_file

    out = tmp_path / "out"
    result = run_mskai("classify", study, "-o", out, "--model", tiny_acl_package)
    assert "not for clinical use" in result.stderr and "sagittal" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert set(report["probabilities"]) == {"healthy", "minor strain", "partial rupture", "complete rupture"}
    assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert report["predicted"] in report["probabilities"] and report["model"]["demo"] is True
    sagittal = [s for s in scan_folder(study).series if plan_volumes(s)[0].plane.name == "sagittal"][0]
    volume = read_volume(plan_volumes(sagittal)[0])
    cam = read_volume_file(out / "cam.nrrd")
    assert cam.shape == volume.shape and np.allclose(cam.affine_lps, volume.affine_lps, atol=1e-4)
    assert 0 <= report["key_slice"] < volume.shape[report["key_slice_axis"]]
    assert (out / "key_slice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.json").read_text()
    assert "SYNTH" not in text and "SYNTH-0001" not in text  # the patient's name and ID never go in
    again = run_mskai("classify", study, "-o", tmp_path / "again", "--model", tiny_acl_package)
    assert json.loads((tmp_path / "again" / "report.json").read_text())["probabilities"] == report["probabilities"]
    assert again.returncode == 0


def test_classify_refuses_other_planes_other_models_and_the_reverse(study, tiny_acl_package, tmp_path):
    from mskai.dicom import plan_volumes, scan_folder

    coronal = [s for s in scan_folder(study).series if plan_volumes(s)[0].plane.name == "coronal"][0]
    only_coronal = tmp_path / "coronal"
    only_coronal.mkdir()
    for f in coronal.files:
        (only_coronal / f.split("/")[-1]).symlink_to(f)
    result = run_mskai("classify", only_coronal, "-o", tmp_path / "a", "--model", tiny_acl_package, ok=False)
    assert result.returncode == 1 and "coronal" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "a").exists()
    bones = make_package(tmp_path / "bones")
    result = run_mskai("classify", study, "-o", tmp_path / "b", "--model", bones, ok=False)
    assert "segmentation model" in result.stderr or "not a acl-classification model" in result.stderr
    result = run_mskai("segment", study, "--series", "1", "-o", tmp_path / "c", "--model", tiny_acl_package, ok=False)
    assert "not a segmentation model" in result.stderr


def test_evaluate_acl_writes_the_table_roc_and_confusion(tiny_acl_package, tmp_path):
    result = run_mskai("evaluate-acl", "--synthetic", "8", "--model", tiny_acl_package, "--bootstrap", "50",
                       "--no-cache", "-o", tmp_path / "eval")
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["n"] == 8 and len(report["confusion_matrix"]) == 4
    assert sum(map(sum, report["confusion_matrix"])) == 8
    assert "complete rupture" in result.stdout
    for name in ("roc.png", "confusion.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 1000


def test_a_csv_with_a_missing_file_and_an_unknown_label_is_refused_before_any_work(tmp_path):
    (tmp_path / "cases.csv").write_text("path,label\nmissing.nrrd,1\nalso_missing.nrrd,7\n")
    result = run_mskai("train-acl", "--csv", tmp_path / "cases.csv", "-o", tmp_path / "pkg", ok=False)
    assert result.returncode == 1 and "line 2" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "pkg").exists()


def test_classify_takes_a_single_series_and_a_slicer_database_too(study, tiny_acl_package, tmp_path):
    from mskai.dicom import index_folder

    single = run_mskai("classify", study / "sagittal", "-o", tmp_path / "one", "--model", tiny_acl_package)
    index_folder(study, tmp_path / "db")
    database = run_mskai("classify", tmp_path / "db", "-o", tmp_path / "db_out", "--model", tiny_acl_package)
    reports = [json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "db_out")]
    assert reports[0]["probabilities"] == reports[1]["probabilities"]  # the same series, found both ways
    assert "sagittal" in single.stdout and "sagittal" in database.stdout


def test_too_few_slices_and_a_4d_file_are_refused_saying_what_is_needed(tiny_acl_package, tmp_path):
    import nibabel as nib

    from mskai.volume_files import write_volume
    from mskai.synth.phantom import phantom

    write_volume(phantom(shape=(64, 64, 5), plane="sagittal"), tmp_path / "five.nrrd")
    result = run_mskai("classify", tmp_path / "five.nrrd", "-o", tmp_path / "a", "--model", tiny_acl_package, ok=False)
    assert result.returncode == 1 and "8" in result.stderr and "slices" in result.stderr
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 16, 3), np.float32), np.eye(4)), str(tmp_path / "four_d.nii.gz"))
    result = run_mskai("classify", tmp_path / "four_d.nii.gz", "-o", tmp_path / "b", "--model", tiny_acl_package,
                       ok=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_batch_classify_a_database_one_row_per_study_then_resume(study, tiny_acl_package, tmp_path):
    import csv

    from mskai.synth.acl_knee import write_acl_study
    from mskai.dicom import index_folder

    write_acl_study(tmp_path / "coronal_only", grade=0, seed=9, planes=("coronal",))
    index_folder(study, tmp_path / "db")
    index_folder(tmp_path / "coronal_only", tmp_path / "db")
    out = tmp_path / "out"
    first = run_mskai("batch", "classify", tmp_path / "db", "-o", out, "--model", tiny_acl_package, ok=False)
    assert first.returncode == 1 and "1 done, 0 skipped (already done), 1 failed" in first.stdout
    report = json.loads((out / "batch.json").read_text())
    assert "no sagittal series: found coronal" in report["failed"][0]["error"]
    rows = list(csv.DictReader((out / "batch.csv").open()))
    done = next(r for r in rows if r["status"] == "done")
    assert done["study"].startswith("study-") and done["series"].startswith("series-")
    assert abs(sum(float(done[f"p_{c}"]) for c in ("healthy", "minor strain", "partial rupture",
                                                    "complete rupture")) - 1) < 1e-3
    assert (out / done["study"] / "cam.nrrd").is_file()
    written = "".join(p.read_text(errors="ignore") for p in out.rglob("*.json")) + (out / "batch.csv").read_text()
    assert "SYNTH" not in written
    again = run_mskai("batch", "classify", tmp_path / "db", "-o", out, "--model", tiny_acl_package, "--resume",
                      ok=False)
    assert "0 done, 1 skipped (already done), 1 failed" in again.stdout


def test_the_bundled_acl_demo_model_says_demo_and_classifies_the_real_knee_series(knee_dicom, tmp_path):
    from mskai.models.registry import find_model

    package = find_model("mskai-acl-demo")
    assert package.metadata["demo"] is True and "synthetic" in package.metadata["training_data"]
    assert package.source.parent.name == "Models" and (package.source / "NOTICE.md").is_file()
    result = run_mskai("classify", knee_dicom, "-o", tmp_path / "out")  # the default model: the bundled demo
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "not for clinical use" in result.stderr and report["model"]["id"] == "mskai-acl-demo"
    assert "echo" in report["series"]["reason"] and report["timings_s"]["classify_and_cam"] < 10
    # it reads anatomy with the bundled ligament package: graded from the tear signs, the ligaments written
    ligaments = find_model(package.metadata["anatomy"]["ligament_model"])
    assert ligaments.source.parent.name == "Models" and ligaments.metadata["demo"] is True
    assert (ligaments.source / "NOTICE.md").is_file()
    assert report["probabilities_source"] == "tear signs" and report["predicted"] in GRADES
    assert report["anatomy"]["signs"]["acl_volume_ml"] > 0.2 and (tmp_path / "out" / "ligaments.seg.nrrd").is_file()
