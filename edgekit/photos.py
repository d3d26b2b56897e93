"""A larger held-out set of real photos: 200+ camera photos from Debian's ``gcompris-qt-data`` package.

GCompris (the educational suite) ships photos of animals, fish, monuments, tools, household objects and
renewable-energy sites inside Qt resource bundles (``.rcc``). ``edgekit photos prepare`` (run by CI's setup)
downloads the pinned package with ``apt-get download``, takes the photo folders out of the bundles as they
are (WebP, not re-encoded), drops duplicates and small images, and keeps them with the package's copyright
file under the cache folder. Nothing is downloaded at conversion time: the demo and the benchmark only read
the prepared folder. The licences are per file (CC-BY / CC-BY-SA 2.0–4.0, public domain, GPL-3+, GFDL),
listed in ``LICENSES.txt`` beside the photos.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

from edgekit.errors import EdgekitError

PACKAGE, VERSION = "gcompris-qt-data", "3.1-2"
# Activity folders holding camera photos (not the drawings, paintings, puzzle pieces or photos of people).
PHOTO_FOLDERS = (
    "categorization/resource/images/fishes/",
    "categorization/resource/images/monuments/",
    "categorization/resource/images/others/",
    "categorization/resource/images/renewable/",
    "categorization/resource/images/tools/",
    "erase/resource/",
    "explore_farm_animals/resource/animals/",
    "explore_world_animals/resource/animals/",
    "explore_monuments/resource/",
)
MIN_SIDE = 150
ACTIVITIES = "/gcompris/src/activities/"


def photos_dir() -> Path:
    """Where the prepared photos live (under the cache folder, keyed by the package version)."""
    from edgekit.emulator import cache_root

    return cache_root() / f"photos-{PACKAGE}-{VERSION}"


def prepared() -> Path:
    """The prepared photo folder, or one line saying how to make it."""
    folder = photos_dir()
    if not (folder / ".complete").is_file():
        raise EdgekitError(
            f"the held-out photo set is not prepared ({folder} is missing)",
            "run `edgekit photos prepare` once (it downloads Debian's gcompris-qt-data, 44 MB; CI's setup does it)",
        )
    return folder


def rcc_entries(data: bytes) -> dict[str, bytes | None]:
    """Every file in a Qt resource bundle (rcc format 1–3): path → content (None when zstd-compressed)."""
    if data[:4] != b"qres":
        raise ValueError("not a Qt resource bundle")
    version, tree, payload, names = struct.unpack(">IIII", data[4:20])
    node_size = 22 if version >= 2 else 14

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", data[names + offset : names + offset + 2])
        return data[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    found: dict[str, bytes | None] = {}
    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        at = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", data[at : at + 6])
        path = prefix + (name(name_offset) if index else "")
        if flags & 2:  # a directory: its children are consecutive nodes
            count, first = struct.unpack(">II", data[at + 6 : at + 14])
            stack += [(child, path + "/") for child in range(first, first + count)]
            continue
        (offset,) = struct.unpack(">I", data[at + 10 : at + 14])
        (length,) = struct.unpack(">I", data[payload + offset : payload + offset + 4])
        content = data[payload + offset + 4 : payload + offset + 4 + length]
        if flags & 4:
            found[path] = None
        else:
            found[path] = zlib.decompress(content[4:]) if flags & 1 else content
    return found


def extract(package_root: Path, out: Path) -> int:
    """Write the photos of an unpacked package into ``out`` (named activity__folder__name); how many."""
    from PIL import Image

    seen, count = set(), 0
    for bundle in sorted((package_root / "usr/share/gcompris-qt/rcc").glob("*.rcc")):
        for path, content in sorted(rcc_entries(bundle.read_bytes()).items()):
            relative = path.split(ACTIVITIES, 1)[-1]
            if content is None or not relative.startswith(PHOTO_FOLDERS):
                continue
            suffix = Path(relative).suffix.lower()
            if suffix not in (".webp", ".jpg", ".jpeg", ".png"):
                continue
            with Image.open(io.BytesIO(content)) as image:
                if min(image.size) < MIN_SIDE:
                    continue
                digest = hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()
            if digest in seen:  # the same photo in two activities
                continue
            seen.add(digest)
            stem = relative.replace("/resource", "").replace("/images", "").rsplit(".", 1)[0].replace("/", "__")
            (out / f"{stem}{suffix}").write_bytes(content)
            count += 1
    return count


def prepare(log=print) -> Path:
    """Download the pinned package once, extract its photos into the cache; the folder."""
    folder = photos_dir()
    if (folder / ".complete").is_file():
        return folder
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise EdgekitError("apt-get and dpkg-deb are needed to fetch the photo set", "run this on Debian or Ubuntu")
    with tempfile.TemporaryDirectory(prefix="edgekit-photos-") as tmp:
        work = Path(tmp)
        log(f"downloading {PACKAGE}={VERSION} from the Debian archive")
        proc = subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=work, capture_output=True, text=True)
        debs = list(work.glob(f"{PACKAGE}_*.deb"))
        if proc.returncode != 0 or not debs:
            tail = (proc.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise EdgekitError(
                f"cannot download {PACKAGE}={VERSION} ({tail})", "run `apt-get update` first (needs the Debian archive)"
            )
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(work / "root")], check=True, capture_output=True)
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        count = extract(work / "root", staging)
        shutil.copyfile(work / "root/usr/share/doc" / PACKAGE / "copyright", staging / "LICENSES.txt")
        (staging / ".complete").write_text(f"{PACKAGE}={VERSION}: {count} photos\n")
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    log(f"{count} photos in {folder}")
    return folder
