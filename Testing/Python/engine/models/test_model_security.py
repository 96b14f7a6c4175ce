"""Hostile model packages and downloads: paths leaving the models folder, archives whose checked bytes differ
from the installed ones, ignored checksums, shadowing by the current directory, unbounded downloads."""

import hashlib
import http.server
import json
import os
import stat
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from conftest import make_package
from mskai import MskaiError
from mskai.models import package as package_module
from mskai.models import registry
from mskai.models.registry import find_model, install_model
from test_models import _zip_package

from conftest import REPO


def _contents(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _leftovers(model_dirs) -> list:
    """Hidden staging/aside folders in the user models folder and anything in the temporary folder."""
    user = model_dirs / "user"
    hidden = [p.name for p in user.iterdir() if p.name.startswith(".")] if user.is_dir() else []
    return hidden + [p.name for p in (model_dirs / "tmp").iterdir()]


@pytest.fixture
def dirs(model_dirs, monkeypatch):
    """model_dirs, with the temporary folder pointed at model_dirs/tmp so leftovers can be seen."""
    (model_dirs / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(model_dirs / "tmp"))
    return model_dirs


def _edit_metadata(folder: Path, change) -> Path:
    meta = json.loads((folder / "metadata.json").read_text())
    change(meta)
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def _zip(path: Path, entries) -> Path:
    """A zip of (name or ZipInfo, bytes) entries, written as given (duplicates and odd names included)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def _package_entries(folder: Path) -> list:
    return [(name, (folder / name).read_bytes()) for name in ("metadata.json", "model.safetensors")]


# 5. Paths built from data stay inside the models folder

def test_a_version_with_dot_dot_cannot_reach_outside_the_models_folder(dirs):
    victim = dirs / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    evil = _edit_metadata(make_package(dirs / "src"), lambda m: m.update(version="x/../../victim"))
    with pytest.raises(MskaiError, match="at version"):
        install_model(str(evil))
    assert (victim / "keep.txt").read_text() == "precious" and not _leftovers(dirs)


def test_a_target_folder_resolving_outside_the_models_folder_is_refused(dirs):
    outside = dirs / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    (dirs / "user").mkdir()
    (dirs / "user" / "test-bones-1.0.0").symlink_to(outside, target_is_directory=True)
    with pytest.raises(MskaiError, match="leads outside"):
        install_model(str(make_package(dirs / "src")))
    assert _contents(outside) == {"keep.txt": b"precious"} and not _leftovers(dirs)


# 6. What is validated is what is installed

@pytest.mark.parametrize("name", ["../metadata.json", "/etc/metadata.json", "C:/metadata.json", "sub\\..\\x",
                                  "sub/../../x", "./metadata.json", "a//b", "metadata.json:stream", "x\x01y"])
def test_archives_with_unsafe_entry_names_are_refused(dirs, name):
    source = make_package(dirs / "src")
    archive = _zip(dirs / "pkg.zip", _package_entries(source) + [(name, b"{}")])
    with pytest.raises(MskaiError, match="unsafe entry name"):
        install_model(str(archive))
    assert not (dirs / "user").exists() or not any((dirs / "user").iterdir())


def test_archives_with_duplicate_entries_are_refused(dirs):
    source = make_package(dirs / "src")
    evil = json.dumps(dict(json.loads((source / "metadata.json").read_text()), title="replaced")).encode()
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = _zip(dirs / "pkg.zip", _package_entries(source) + [("metadata.json", evil)])
    with pytest.raises(MskaiError, match="holds 'metadata.json' twice"):
        install_model(str(archive))
    assert not _leftovers(dirs)


def test_archives_with_symlink_entries_are_refused(dirs):
    source = make_package(dirs / "src")
    link = zipfile.ZipInfo("NOTICE.md")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip(dirs / "pkg.zip", _package_entries(source) + [(link, b"/etc/passwd")])
    with pytest.raises(MskaiError, match="symbolic link"):
        install_model(str(archive))


def test_archives_unpacking_to_more_than_the_cap_are_refused(dirs, monkeypatch):
    archive = _zip_package(make_package(dirs / "src"), dirs / "pkg.zip")
    monkeypatch.setattr(package_module, "MAX_PACKAGE_BYTES", 10_000)
    with pytest.raises(MskaiError, match="unpacks to more than 10000 bytes"):
        install_model(str(archive))


def test_damaged_archives_are_refused(dirs):
    archive = _zip_package(make_package(dirs / "src"), dirs / "pkg.zip")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the weights' data: the entry's CRC no longer matches
    archive.write_bytes(bytes(data))
    with pytest.raises(MskaiError, match="damaged zip file|checksum does not match"):
        install_model(str(archive))
    assert not _leftovers(dirs)


def test_only_the_checked_files_and_documentation_are_installed(dirs):
    source = make_package(dirs / "src")
    archive = _zip(dirs / "pkg.zip", _package_entries(source) + [
        ("NOTICE.md", b"notice"), ("heldout/", b""), ("heldout/case.png", b"png"), ("run_me.py", b"print(1)")])
    installed = install_model(str(archive))
    assert _contents(installed.source) == {"NOTICE.md": b"notice", **dict(_package_entries(source))}


def test_the_bundled_demo_package_installs_with_its_documentation(dirs):
    bundled = REPO / "Resources" / "Models" / "mskai-bones-demo"
    installed = install_model(str(bundled))
    names = set(_contents(installed.source))
    assert {"metadata.json", "model.safetensors", "NOTICE.md", "training_log.json", "training_curves.png"} <= names
    assert all((bundled / n).read_bytes() == (installed.source / n).read_bytes() for n in names)
    version = json.loads((bundled / "metadata.json").read_text())["version"]
    assert "heldout" not in names and installed.source == dirs / "user" / f"mskai-bones-demo-{version}"


@pytest.mark.parametrize("name", ["metadata.json", "model.safetensors"])
def test_folder_packages_with_symlinked_files_are_refused(dirs, name):
    source = make_package(dirs / "src")
    elsewhere = dirs / "elsewhere"
    elsewhere.mkdir()
    (source / name).rename(elsewhere / name)
    (source / name).symlink_to(elsewhere / name)
    with pytest.raises(MskaiError, match=f"{name} is a symbolic link"):
        install_model(str(source))
    assert not _leftovers(dirs)


def test_a_failed_install_leaves_the_earlier_install_intact(dirs, monkeypatch):
    first = install_model(str(make_package(dirs / "a")))
    before = _contents(first.source)
    misfit = _edit_metadata(make_package(dirs / "b", seed=1), lambda m: m["network"]["args"].update(channels=[8, 16]))
    with pytest.raises(MskaiError, match="weights do not fit"):
        install_model(str(misfit))
    assert _contents(first.source) == before and not _leftovers(dirs)

    real_rename = os.rename

    def failing_rename(src, dst):  # the rename of the staging folder into place fails
        if Path(src).name.startswith(".mskai-install-"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(MskaiError, match="Cannot install into .*No space left"):
        install_model(str(make_package(dirs / "c", seed=2)))
    assert _contents(first.source) == before and not _leftovers(dirs)


# 7. --sha256 for every source

@pytest.mark.parametrize("digest", ["abc", "g" * 64, "0" * 63, "0" * 65, " " + "0" * 63, "0" * 64 + "\n"])
def test_a_malformed_sha256_is_refused_before_anything_else(dirs, digest):
    with pytest.raises(MskaiError, match="64 hexadecimal digits"):
        install_model(str(dirs / "missing.zip"), sha256=digest)


def test_sha256_is_checked_for_local_zips_and_folders(dirs):
    source = make_package(dirs / "src")
    archive = _zip_package(source, dirs / "pkg.zip")
    zip_digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    weights_digest = hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()
    with pytest.raises(MskaiError, match="does not match the expected sha256"):
        install_model(str(archive), sha256=weights_digest)
    with pytest.raises(MskaiError, match="weights file of .* does not match the expected sha256"):
        install_model(str(source), sha256=zip_digest)
    assert not (dirs / "user").exists() or not any((dirs / "user").iterdir())
    assert install_model(str(archive), sha256=zip_digest.upper()).version == "1.0.0"
    assert install_model(str(source), sha256=weights_digest).version == "1.0.0"


# 8. Plain names come from the registry only

def test_a_folder_in_the_working_directory_does_not_shadow_a_registered_model(dirs, monkeypatch):
    make_package(dirs / "bundled" / "test-bones-1.0.0")
    monkeypatch.chdir(dirs)
    make_package(dirs / "test-bones", version="9.9.9")
    make_package(dirs / "test-bones@1.0.0", version="9.9.8")
    assert find_model("test-bones").version == "1.0.0"
    assert find_model("test-bones@1.0.0").source == dirs / "bundled" / "test-bones-1.0.0"
    assert find_model("./test-bones").version == "9.9.9"
    assert find_model(str(dirs / "test-bones")).version == "9.9.9"
    with pytest.raises(MskaiError, match="not a acl-classification model"):
        find_model("./test-bones", task="acl-classification")


# 9. Bounded downloads

class _Server(http.server.BaseHTTPRequestHandler):
    """Serves the package zip at /pkg.zip and misbehaves at the other paths (HTTP/1.0: close ends the body)."""

    body = b""

    def do_GET(self):  # noqa: N802
        try:
            self._serve(self.path.strip("/"))
        except OSError:  # the client gave up
            pass

    def _serve(self, kind):
        if kind not in ("pkg.zip", "huge-length", "no-length", "truncated", "slow", "redirect"):
            self.send_error(404)
            return
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1:9/pkg.zip")
            self.end_headers()
            return
        self.send_response(200)
        if kind != "no-length":
            self.send_header("Content-Length", str(10**12 if kind == "huge-length" else len(self.body)))
        self.end_headers()
        if kind == "pkg.zip":
            self.wfile.write(self.body)
        elif kind == "truncated":
            self.wfile.write(self.body[: len(self.body) // 2])
        elif kind == "no-length":
            for _ in range(64):
                self.wfile.write(b"x" * 4096)
        elif kind == "slow":
            for byte in self.body[:400]:  # about 20 s if nobody stops it
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(dirs):
    """http://127.0.0.1:<port> serving a real package zip (and its sha256) from a thread."""
    archive = _zip_package(make_package(dirs / "src", version="2.0.0"), dirs / "pkg.zip")
    handler = type("Handler", (_Server,), {"body": archive.read_bytes()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hashlib.sha256(handler.body).hexdigest()
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("path,limits,message", [
    ("huge-length", {}, "is 1000000000000 bytes, more than the limit"),
    ("no-length", {"max_bytes": 65536}, "more than the limit of 65536 bytes"),
    ("slow", {"deadline_s": 0.5}, "took more than 0.5 s"),
    ("truncated", {}, "ended after .* bytes"),
    ("redirect", {}, "Refusing the redirect"),
    ("missing.zip", {}, "Cannot download .*404"),
])
def test_misbehaving_downloads_fail_cleanly_and_leave_nothing(server, dirs, path, limits, message):
    url, digest = server
    start = time.monotonic()
    with pytest.raises(MskaiError, match=message):
        install_model(f"{url}/{path}", sha256=digest, timeout_s=5, **limits)
    assert time.monotonic() - start < 5
    assert not _leftovers(dirs) and not (dirs / "user").exists()


def test_downloads_check_the_hash_and_clean_up_even_when_interrupted(server, dirs, monkeypatch):
    url, digest = server
    with pytest.raises(MskaiError, match="does not match the expected sha256"):
        install_model(f"{url}/pkg.zip", sha256="f" * 64)
    with pytest.raises(MskaiError, match="only http, https and file URLs"):
        install_model("ftp://127.0.0.1/pkg.zip", sha256=digest)
    assert install_model(f"{url}/pkg.zip", sha256=digest).version == "2.0.0"
    assert not _leftovers(dirs)

    def interrupted(path):
        assert Path(path).is_file()  # the download is there until the interrupt
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "load_package", interrupted)
    with pytest.raises(KeyboardInterrupt):
        install_model(f"{url}/pkg.zip", sha256=digest)
    assert not _leftovers(dirs)
