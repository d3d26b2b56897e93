"""The held-out photo set: Qt resource bundles read, the prepared folder checked, a missing set refused."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.data import IMAGE_SUFFIXES
from edgekit.demo import demo_options
from edgekit.demo import photos as bundled_photos
from edgekit.photos import MIN_SIDE, photos_dir, rcc_entries


def _rcc(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A format-2 Qt resource bundle: root → "a" → the files (content, zlib-compressed?)."""
    names, payload, nodes = b"", b"", []

    def name(text: str) -> int:
        nonlocal names
        offset = len(names)
        names += struct.pack(">HI", len(text), 0) + text.encode("utf-16-be")
        return offset

    nodes.append(struct.pack(">IHII", 0, 2, 1, 1) + bytes(8))  # root: 1 child, node 1
    nodes.append(struct.pack(">IHII", name("a"), 2, len(files), 2) + bytes(8))
    for file, (content, compressed) in files.items():
        stored = struct.pack(">I", len(content)) + zlib.compress(content) if compressed else content
        nodes.append(struct.pack(">IHHHI", name(file), 1 if compressed else 0, 0, 0, len(payload)) + bytes(8))
        payload += struct.pack(">I", len(stored)) + stored
    tree = b"".join(nodes)
    header = 20
    return (
        b"qres"
        + struct.pack(">IIII", 2, header, header + len(tree), header + len(tree) + len(payload))
        + (tree + payload + names)
    )


def test_rcc_bundles_are_read_plain_and_zlib_compressed():
    bundle = _rcc({"x.webp": (b"plain bytes", False), "y.png": (b"squeezed " * 50, True)})
    assert rcc_entries(bundle) == {"/a/x.webp": b"plain bytes", "/a/y.png": b"squeezed " * 50}
    with pytest.raises(ValueError, match="not a Qt resource bundle"):
        rcc_entries(b"PK\x03\x04 a zip file")


def test_prepared_photo_set_has_200_distinct_real_photos():
    folder = photos_dir()
    if not (folder / ".complete").is_file():
        pytest.skip("the photo set is not prepared (`edgekit photos prepare`; CI's setup does it)")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    assert len(files) >= 200
    digests = set()
    for path in files:
        with Image.open(path) as image:
            assert min(image.size) >= MIN_SIDE, path
            digests.add(hashlib.sha256(image.convert("RGB").tobytes()).hexdigest())
    assert len(digests) == len(files)  # no photo twice
    licences = (folder / "LICENSES.txt").read_text()
    assert "CC-BY" in licences and "gcompris" in licences.lower()


def test_demo_holds_out_the_prepared_photos_and_calibrates_on_the_bundled_ones():
    folder = photos_dir()
    if not (folder / ".complete").is_file():
        pytest.skip("the photo set is not prepared (`edgekit photos prepare`; CI's setup does it)")
    for held_out in ("photos", "auto"):
        opts = demo_options("host", held_out=held_out)
        assert opts.eval == folder and opts.calib == bundled_photos() and opts.eval_size >= 200
        assert opts.image.ten_crop and opts.eval_image is not None and not opts.eval_image.ten_crop
    crops = demo_options("host", held_out="crops")
    assert crops.eval is None and crops.eval_size == 66 and crops.calib == bundled_photos()


def test_demo_without_the_prepared_set_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    assert demo_options("host").eval is None  # auto: the bundled crops when the photos are not there
    out = tmp_path / "demo"
    for args, message in (
        (["--held-out", "photos"], "held-out photo set is not prepared"),
        (["--held-out", "everything"], "--held-out 'everything' is not one of auto, photos, crops"),
    ):
        result = CliRunner().invoke(app, ["demo", "--target", "host", *args, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output and not out.exists()
    assert "edgekit photos prepare" in CliRunner().invoke(app, ["demo", "--held-out", "photos"]).output
