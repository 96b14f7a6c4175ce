"""Model packages and the registry: schema, checksums, no unpickling, installs from path and URL."""

import hashlib
import http.server
import io
import json
import shutil
import threading
import zipfile

import pytest
import torch

from conftest import make_package
from mskai import MskaiError
from mskai.models.package import load_package
from mskai.models.registry import find_model, install_model, list_models
from mskai.segment.labels import BONES


def test_package_round_trip_folder_and_zip(tmp_path):
    folder = make_package(tmp_path / "pkg")
    package = load_package(folder)
    net = package.build_network()
    assert package.id == "test-bones" and package.metadata["demo"] is True
    with zipfile.ZipFile(tmp_path / "pkg.zip", "w") as zf:
        for name in ("metadata.json", "model.safetensors"):
            zf.write(folder / name, name)
    zipped = load_package(tmp_path / "pkg.zip").build_network()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), zipped(x))


def test_tampered_weights_are_refused(tmp_path):
    folder = make_package(tmp_path / "pkg")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(MskaiError, match="checksum does not match"):
        load_package(folder).build_network()


@pytest.mark.parametrize("change,message", [
    (lambda m: m.pop("demo"), "'demo' is a required property"),
    (lambda m: m.update(task="dancing"), "task"),
    (lambda m: m["input"].update(spacing_mm=[1, 1]), "input/spacing_mm"),
    (lambda m: m["weights"].update(file="../../etc/passwd.safetensors"), "weights/file"),
    (lambda m: m["network"].update({"class": "os.system"}), "Unknown network class"),
    (lambda m: m.update(id="../evil"), "at id"),
    (lambda m: m.update(version="x/../../victim"), "at version"),
    (lambda m: m.update(version="1..0"), "at version"),
    (lambda m: m.update(version="1.0\n"), "at version"),
    (lambda m: m["labels"][0].update(value="1"), "labels/0/value"),
    (lambda m: m["labels"][0].update(value=1.5), "labels/0/value"),
    (lambda m: m["labels"][1].update(value=1), "each label needs its own value"),
    (lambda m: m["labels"][0].update(name="../tibia"), "labels/0/name"),
    (lambda m: m["labels"][0].pop("color"), "'color' is a required property"),
    (lambda m: m["network"].update(args=[1, 2]), "network/args"),
    (lambda m: m["input"].update(intensity="percentile"), "input/intensity"),
    (lambda m: m["input"].update(intensity={"method": "zscore"}), "input/intensity/method"),
    (lambda m: m["input"].update(patch_size=[100000, 32, 32]), "input/patch_size/0"),
    (lambda m: m["input"].update(patch_size=[4, 32, 32]), "input/patch_size/0"),
    (lambda m: m["input"].update(spacing_mm=[0.001, 1, 1]), "input/spacing_mm/0"),
    (lambda m: m["input"].update(fast_spacing_mm=[1, 1, 500]), "input/fast_spacing_mm/2"),
    (lambda m: m.update(labels={"value": 1}), "at labels"),
    (lambda m: m["network"]["args"].update(channels=[4]), "cannot build UNet.*ValueError"),
    (lambda m: m["network"]["args"].update(spatial_dims=7), "cannot build UNet"),
    (lambda m: m["network"]["args"].update(norm="bogus"), "cannot build UNet"),
    (lambda m: m["network"]["args"].update(bogus_argument=1), "cannot build UNet.*TypeError"),
    (lambda m: m["network"]["args"].update(channels=[8, 16]), "weights do not fit the UNet network"),
    (lambda m: m["network"]["args"].update(channels=[100000, 200000]), "weights do not fit the UNet network"),
])
def test_bad_metadata_is_refused_with_the_reason(tmp_path, change, message):
    folder = make_package(tmp_path / "pkg")
    meta = json.loads((folder / "metadata.json").read_text())
    change(meta)
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(MskaiError, match=message) as caught:
        load_package(folder).build_network()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text,message", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"id": NaN}', "not valid JSON.*NaN"),
    (b"\xff\xfe{}", "not valid JSON"),
    ("[]", "at \\(top level\\)"),
    ('{"pad": "' + "x" * (1 << 20) + '"}', "larger than 1048576 bytes"),
], ids=["deep", "nan", "not-utf8", "not-object", "too-large"])
def test_malformed_metadata_json_is_refused(tmp_path, text, message):
    folder = make_package(tmp_path / "pkg")
    path = folder / "metadata.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(MskaiError, match=message):
        load_package(folder)


def _replace_weights(folder, name, data):
    """Point the package's metadata at a new weights file holding ``data`` (with its true checksum)."""
    (folder / name).write_bytes(data)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["weights"] = {"file": name, "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "metadata.json").write_text(json.dumps(meta))
    return load_package(folder)


@pytest.mark.parametrize("name,data,message", [
    ("model.safetensors", b"\xff" * 64, "not a valid safetensors file"),
    ("model.safetensors", b"", "not a valid safetensors file"),
    ("model.pt", b"not a torch file at all", "not a valid weights_only torch file"),
    ("model.pth", b"PK\x03\x04 truncated zip", "not a valid weights_only torch file"),
], ids=["safetensors-garbage", "safetensors-empty", "pt-garbage", "pth-truncated-zip"])
def test_weights_that_do_not_decode_are_refused(tmp_path, name, data, message):
    package = _replace_weights(make_package(tmp_path / "pkg"), name, data)
    with pytest.raises(MskaiError, match=message):
        package.build_network()


def test_weights_that_are_not_a_flat_tensor_mapping_are_refused(tmp_path):
    buffer = io.BytesIO()
    torch.save({"state_dict": {"weight": torch.zeros(1)}}, buffer)
    package = _replace_weights(make_package(tmp_path / "pkg"), "model.pt", buffer.getvalue())
    with pytest.raises(MskaiError, match="not a flat mapping of names to tensors"):
        package.state_dict()


def test_pickled_objects_are_never_unpickled(tmp_path):
    """A .pt 'state dict' that smuggles a callable is rejected by torch.load(weights_only=True)."""
    folder = make_package(tmp_path / "pkg")
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(1), "evil": shutil.rmtree}, buffer)
    package = _replace_weights(folder, "model.pt", buffer.getvalue())
    with pytest.raises(MskaiError, match="not a valid weights_only torch file"):
        package.state_dict()


def test_not_a_package(tmp_path):
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(MskaiError, match="neither a model package folder nor a .zip"):
        load_package(tmp_path / "x.zip")
    with pytest.raises(MskaiError, match="does not exist"):
        load_package(tmp_path / "missing")


def test_registry_lists_bundled_and_user_models_and_installs_from_a_path(model_dirs):
    make_package(model_dirs / "bundled" / "test-bones-1.0.0")
    broken = model_dirs / "bundled" / "broken"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text("{")
    assert [f"{m.id}@{m.version}" for m in list_models()] == ["test-bones@1.0.0"]
    newer = make_package(model_dirs / "elsewhere", version="1.1.0")
    installed = install_model(str(newer))
    assert installed.source.parent == model_dirs / "user"
    assert find_model("test-bones").version == "1.1.0"
    assert find_model("test-bones@1.0.0").source.parent == model_dirs / "bundled"
    with pytest.raises(MskaiError, match="No model 'nope'"):
        find_model("nope")


def _zip_package(folder, target):
    with zipfile.ZipFile(target, "w") as zf:
        for name in ("metadata.json", "model.safetensors"):
            zf.write(folder / name, name)
    return target


def test_install_from_http_checks_the_checksum(model_dirs):
    package_zip = _zip_package(make_package(model_dirs / "src", version="2.0.0"), model_dirs / "pkg.zip")
    digest = hashlib.sha256(package_zip.read_bytes()).hexdigest()
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(model_dirs), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/pkg.zip"
        with pytest.raises(MskaiError, match="needs the file's sha256"):
            install_model(url)
        with pytest.raises(MskaiError, match="does not match the expected sha256"):
            install_model(url, sha256="0" * 64)
        assert not (model_dirs / "user").exists() or not any((model_dirs / "user").iterdir())
        installed = install_model(url, sha256=digest)
        assert installed.version == "2.0.0" and installed.build_network() is not None
    finally:
        server.shutdown()
    file_url = package_zip.as_uri()
    assert install_model(file_url, sha256=digest).id == "test-bones"


def test_label_table_codes():
    codes = {b.name: b.snomed_code for b in BONES}
    assert codes == {"tibia": "12611008", "femur": "71341001", "fibula": "87342007", "pelvis": "29836001",
                     "patella": "64234005", "sacrum": "54735007"}
    assert [b.value for b in BONES] == [1, 2, 3, 4, 5, 6]
