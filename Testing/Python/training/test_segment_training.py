"""Training and fine-tuning end to end on synthetic cases (a few iterations), and dataset layouts."""

import json

import numpy as np
import pytest

from conftest import make_package, run_mskai
from mskai import MskaiError
from mskai.volume_files import write_volume
from mskai.models.package import load_package
from mskai.training.segment import INTENSITY
from mskai.training.segment_data import nnunet_label_remap, find_pairs, load_case
from mskai.synth.synthseg import LowerLimbPhantom, synthetic_case


def _cases(folder, n, layout="images-labels"):
    rng = np.random.default_rng(3)
    for i in range(n):
        phantom = LowerLimbPhantom(rng)
        image, labels = synthetic_case(phantom, rng, (2.0, 2.0, 2.5), extent_mm=(80, 80, 80),
                                       centre=phantom.knee + [0, 0, 20])
        if layout == "images-labels":
            write_volume(image, folder / "images" / f"case{i}.nii.gz")
            write_volume(labels, folder / "labels" / f"case{i}.nrrd")
        elif layout == "nnunet":
            write_volume(image, folder / "imagesTr" / f"knee_{i:03d}_0000.nii.gz")
            swapped = labels.array.copy()  # this dataset numbers femur 1 and tibia 2
            swapped[labels.array == 1], swapped[labels.array == 2] = 2, 1
            labels.array = swapped
            write_volume(labels, folder / "labelsTr" / f"knee_{i:03d}.nii.gz")
        else:
            write_volume(image, folder / f"c{i}_image.nii.gz")
            write_volume(labels, folder / f"c{i}_label.nii.gz")
    if layout == "nnunet":
        (folder / "dataset.json").write_text(json.dumps(
            {"channel_names": {"0": "MR"}, "labels": {"background": 0, "femur": 1, "tibia": 2, "fibula": 3,
                                                       "pelvis": 4, "patella": 5}, "file_ending": ".nii.gz"}))


def test_train_then_fine_tune_writes_packages_logs_and_curves(tmp_path):
    _cases(tmp_path / "data", 3)
    first = run_mskai("train-seg", tmp_path / "data", "-o", tmp_path / "model", "--iterations", 6, "--eval-every", 3,
                "--patch", 32, "--spacing", 2.0, "--id", "my-bones", "--training-data", "3 synthetic test cases")
    assert "2 training and 1 validation cases" in first.stdout
    package = load_package(tmp_path / "model")
    assert package.id == "my-bones" and package.input["spacing_mm"] == [2.0, 2.0, 2.0]
    log = json.loads((tmp_path / "model" / "training_log.json").read_text())
    assert [e["iteration"] for e in log["log"]] == [3, 6]
    assert set(log["log"][0]["val_dice"]) == {"tibia", "femur", "fibula", "pelvis", "patella", "sacrum"}
    png = (tmp_path / "model" / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    run_mskai("train-seg", tmp_path / "data", "-o", tmp_path / "tuned", "--init", tmp_path / "model",
                 "--iterations", 2, "--eval-every", 2, "--patch", 32, "--version", "0.2.0", "--lr", "1e-4")
    tuned = load_package(tmp_path / "tuned")
    assert tuned.metadata["training"]["fine_tuned_from"] == "my-bones@0.1.0"
    assert tuned.version == "0.2.0" and tuned.metadata["network"] == package.metadata["network"]
    before, after = package.state_dict(), tuned.state_dict()
    assert any(not np.array_equal(before[k].numpy(), after[k].numpy()) for k in before)


def test_fine_tuning_a_package_without_the_sacrum_keeps_its_weights_and_adds_the_class(tmp_path):
    import torch

    from mskai.models.networks import build_network
    from mskai.training.segment import widened

    old = load_package(make_package(tmp_path / "old", n_bones=5))  # the five bones of 0.3.0, no sacrum
    spec = old.metadata["network"]
    assert spec["args"]["out_channels"] == 6
    wide = build_network({**spec, "args": {**spec["args"], "out_channels": 7}}).state_dict()
    state = widened(old.state_dict(), wide)
    grown = [k for k in wide if old.state_dict()[k].shape != wide[k].shape]
    assert grown and all(state[k].shape == wide[k].shape for k in wide)
    for k in grown:  # every trained weight kept
        kept = tuple(slice(0, n) for n in old.state_dict()[k].shape)
        assert torch.equal(state[k][kept], old.state_dict()[k])
    net = build_network({**spec, "args": {**spec["args"], "out_channels": 7}})
    net.load_state_dict(state)
    image = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        before, after = old.build_network().eval()(image), net.eval()(image)
    assert torch.allclose(after[:, :6], before, atol=1e-5)  # the old classes' outputs are unchanged
    assert torch.softmax(after, 1)[:, 6].max() < 0.05  # and the new class starts almost never predicted
    _cases(tmp_path / "data", 2)
    run_mskai("train-seg", tmp_path / "data", "-o", tmp_path / "tuned", "--init", tmp_path / "old",
              "--iterations", 1, "--eval-every", 1, "--patch", 32)
    tuned = load_package(tmp_path / "tuned")
    assert tuned.metadata["network"]["args"]["out_channels"] == 7
    assert [label["name"] for label in tuned.metadata["labels"]][-1] == "sacrum"


def test_nnunet_layout_labels_are_remapped_by_name(tmp_path):
    _cases(tmp_path, 1, layout="nnunet")
    (image_path, label_path), = find_pairs(tmp_path)
    assert image_path.name == "knee_000_0000.nii.gz" and label_path.name == "knee_000.nii.gz"
    remap = nnunet_label_remap(tmp_path)
    assert remap[1] == 2 and remap[2] == 1 and remap[5] == 5
    _, raw = load_case(image_path, label_path, [2.0] * 3, INTENSITY)
    _, fixed = load_case(image_path, label_path, [2.0] * 3, INTENSITY, remap)
    assert np.array_equal(fixed.numpy() == 2, raw.numpy() == 1)


def test_side_by_side_layout_and_missing_pairs(tmp_path):
    _cases(tmp_path, 2, layout="side-by-side")
    assert [p.name for p, _ in find_pairs(tmp_path)] == ["c0_image.nii.gz", "c1_image.nii.gz"]
    (tmp_path / "c1_label.nii.gz").unlink()
    assert [p.name for p, _ in find_pairs(tmp_path)] == ["c0_image.nii.gz"]
    (tmp_path / "c0_label.nii.gz").unlink()
    with pytest.raises(MskaiError, match="No image \\+ label pairs"):
        find_pairs(tmp_path)


@pytest.mark.parametrize("seed", [0, 3])
def test_phantom_bones_are_each_one_piece(seed):
    """Each procedural bone is one connected piece, as in anatomy (so "keep the largest pieces" is right)."""
    import torch
    from scipy import ndimage

    from mskai.synth.synthseg import bone_labels_of

    phantom = LowerLimbPhantom(np.random.default_rng(seed))
    axes = [torch.arange(-120, 120, 2.0), torch.arange(-100, 100, 2.0), torch.arange(-phantom.length - 40, 200, 2.0)]
    tissue, owner = phantom.sample(torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1))
    labels = bone_labels_of(tissue, owner).numpy()
    pieces = {value: ndimage.label(labels == value, structure=np.ones((3, 3, 3)))[1] for value in range(1, 6)}
    assert pieces == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}


def test_phantom_side_names_the_leg():
    """LPS: the patient's left is +x, so a left leg's fibula and greater trochanter lie at +x of its tibia and
    femoral head, and its pubis runs to -x (the midline); a right leg is the mirror image."""
    rng, sides = np.random.default_rng(5), set()
    for _ in range(8):
        phantom = LowerLimbPhantom(rng)
        lateral = 1.0 if phantom.side == "left" else -1.0
        sides.add(phantom.side)
        assert np.sign(phantom.fibula["head"][0][0]) == lateral  # the tibia's axis is x = 0
        assert np.sign(phantom.femur["troch"][0][0]) == lateral  # the femoral head's centre is x = 0
        assert np.sign(phantom.pelvis["pubis"][1][0]) == -lateral
    assert sides == {"left", "right"}


def test_marginal_loss_leaves_unlabelled_classes_out():
    """Predicting patella where a sample does not annotate patella costs what predicting background costs."""
    import torch

    from mskai.training.segment import marginal_dice_focal

    target = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6, 2:6] = 2  # a femur
    def logits_for(label_map):
        return torch.nn.functional.one_hot(label_map, 6).movedim(-1, 1).float() * 8.0

    patella_outside = target.clone()
    patella_outside[0, 0, :, :] = 5
    annotated = torch.ones(1, 6, dtype=torch.bool)
    no_patella = annotated.clone()
    no_patella[0, 5] = False
    exact = marginal_dice_focal(logits_for(target), target, no_patella)
    assert torch.isclose(marginal_dice_focal(logits_for(patella_outside), target, no_patella), exact, atol=1e-4)
    # where patella is annotated, the same prediction is an error, and so is a wrong femur either way
    assert marginal_dice_focal(logits_for(patella_outside), target, annotated) > exact + 0.05
    wrong_femur = target.clone()
    wrong_femur[target == 2] = 1
    assert marginal_dice_focal(logits_for(wrong_femur), target, no_patella) > exact + 0.5
    # gradients reach the network's output
    logits = logits_for(patella_outside).requires_grad_()
    marginal_dice_focal(logits, target, no_patella).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_class_weights_raise_the_cost_of_missing_that_class_only():
    """Weights of 1 are the plain loss; a weighted class costs more when missed, not when found."""
    import torch

    from mskai.training.segment import marginal_dice_focal

    target = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6, 2:4] = 2
    target[0, 2:6, 2:6, 4:6] = 5
    labelled = torch.ones(1, 6, dtype=torch.bool)
    exact = torch.nn.functional.one_hot(target, 6).movedim(-1, 1).float() * 8.0
    missed = torch.nn.functional.one_hot(torch.where(target == 5, 0, target), 6).movedim(-1, 1).float() * 8.0
    plain = marginal_dice_focal(missed, target, labelled)
    assert torch.isclose(marginal_dice_focal(missed, target, labelled, weights=[1.0] * 6), plain)
    heavy = [1, 1, 1, 1, 1, 5.0]
    assert marginal_dice_focal(missed, target, labelled, weights=heavy) > plain + 0.2
    assert marginal_dice_focal(exact, target, labelled, weights=heavy) <= marginal_dice_focal(exact, target, labelled)


def test_head_learning_rate_factor_makes_a_group_of_the_output_layers():
    from mskai.models.networks import build_network
    from mskai.training.segment import HEAD_PREFIX, TrainConfig, _parameter_groups, network_spec

    config = TrainConfig(patch=32, lr=1e-3, head_lr_factor=10)
    net = build_network(network_spec(config))
    plain, head = _parameter_groups(net, config)
    names = {id(p): n for n, p in net.named_parameters()}
    assert head["lr"] == 1e-2 and head["params"] and all(names[id(p)].startswith(HEAD_PREFIX) for p in head["params"])
    assert len(plain["params"]) + len(head["params"]) == len(list(net.parameters()))
    assert len(_parameter_groups(net, TrainConfig(patch=32))) == 1


def test_synthetic_patches_mix_sources_and_mark_what_each_annotates():
    """Each kind of source is drawn by weight and renewed on schedule; OAI-like sources mark patella/fibula unlabelled."""
    import itertools

    from mskai.synth.synthseg import SyntheticPatches

    made = []

    def phantom(rng):
        made.append("phantom")
        return LowerLimbPhantom(rng)

    def femur_tibia_only(rng):
        made.append("knee")
        source = LowerLimbPhantom(rng)
        source.labelled = {1, 2}
        return source

    data = SyntheticPatches([(0.5, phantom, 2), (0.5, femur_tibia_only, 100)], patch=16, spacing=4.0, seed=1)
    samples = list(itertools.islice(iter(data), 12))
    flags = {tuple(s[2].tolist()) for s in samples}
    assert flags == {(True,) * 7, (True, True, True, False, False, False, False)}
    n_phantom = sum(bool(s[2][5]) for s in samples)
    assert made.count("knee") == 1 and made.count("phantom") == (n_phantom + 1) // 2  # renewed every 2 samples
    image, labels, _ = samples[0]
    assert image.shape == (1, 16, 16, 16) and labels.shape == (16, 16, 16)


def test_a_run_stops_at_its_time_budget_and_resumes_from_its_checkpoint(tmp_path):
    """bf16 autocast, a time budget, the checkpoint (loaded with weights_only) and a resumed run that goes on."""
    import itertools

    from mskai.training.segment import TrainConfig, load_checkpoint, train
    from mskai.synth.synthseg import SyntheticPatches

    def phantoms():
        return SyntheticPatches([(1.0, LowerLimbPhantom, 4)], patch=32, spacing=4.0, seed=5)

    val = list(itertools.islice(iter(SyntheticPatches([(1.0, LowerLimbPhantom, 4)], patch=32, spacing=4.0, seed=9)), 2))
    config = TrainConfig(spacing_mm=4.0, patch=32, batch_size=1, iterations=40, eval_every=3, channels=(4, 8),
                         bf16=True, max_minutes=0.0001)
    messages = []
    log = train(phantoms(), val, config, tmp_path / "run", progress=messages.append)
    assert len(log) == 1 and log[0]["iteration"] == 1 and "time budget" in messages[-1]
    saved = load_checkpoint(tmp_path / "run")  # torch.load(weights_only=True): tensors and plain values only
    assert saved["iteration"] == 1 and set(saved) >= {"model", "optimiser", "schedule", "log", "best", "best_state"}
    data = phantoms()
    longer = TrainConfig(**{**config.__dict__, "max_minutes": None, "iterations": 7})
    log = train(data, val, longer, tmp_path / "run", progress=messages.append, resume=True)
    assert "resuming at iteration 1" in " ".join(messages) and data.seed != 5
    assert [e["iteration"] for e in log] == [1, 3, 6, 7]
    assert load_checkpoint(tmp_path / "run")["iteration"] == 7 and load_package(tmp_path / "run").id == "mskai-bones"
    with pytest.raises(MskaiError, match="Nothing to resume"):
        train(phantoms(), val, config, tmp_path / "empty", resume=True)


def test_hip_ct_people_are_split_before_training_and_render_as_hips():
    from mskai.synth.hip_ct import HipCTSource, clean_hip_labels, hip_ct_split
    from mskai.synth.real_pelves import hip_cases
    from mskai.synth.synthseg import SACRUM_MARROW

    split = hip_ct_split()
    assert len(split["test"]) >= 6 and len(split["val"]) >= 2 and len(split["train"]) >= 18
    assert not set(split["test"]) & set(split["train"]) and not set(split["val"]) & set(split["train"])
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:10, 2:10, 2:10], labels[15, 15, 15], labels[5, 5, 5] = 3, 3, 0  # a hole and a speck
    cleaned, notes = clean_hip_labels(labels, (1.0, 1.0, 1.0))
    assert cleaned[5, 5, 5] == 3 and cleaned[15, 15, 15] == 0 and notes["3"]["pieces"] == 2
    (name, image, truth, tissue), = hip_cases(1, seed=3, subjects=split["train"][:1], with_tissue=True,
                                              make_source=HipCTSource)
    values = set(np.unique(truth.array).tolist())
    assert name.startswith("hip") and {2, 4} <= values and not values & {1, 3, 5}  # femur, hip bone, sacrum
    sacrum = tissue.array == SACRUM_MARROW
    assert sacrum.sum() > 1000 and (truth.array[sacrum] == 6).all()  # the sacrum is its own bone, never hip bone
