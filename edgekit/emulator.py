"""The emulated ARM device: a real Debian aarch64 userland with the runtimes, run by qemu user mode.

The image is assembled only from registry packages (Debian ``.deb``s fetched with a private APT
configuration and unpacked with ``dpkg-deb -x``; aarch64 wheels from PyPI), without running target
code, and cached under ``$EDGEKIT_CACHE`` (default ``~/.cache/edgekit``) in a folder keyed by a hash
of its pinned contents. ``dpkg-deb -x`` runs no maintainer scripts, so a merged-/usr suite (trixie)
gets its ``/bin``, ``/lib`` and ``/sbin`` links here, as base-files would create them. qemu 7.2
does not emulate ``/proc/cpuinfo`` or the MIDR sysfs entry, which onnxruntime and OpenVINO read, so
the image carries ARM versions of both for the emulated CPU.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit import procs
from edgekit.errors import EdgekitError

V8_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
V7_FEATURES = "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm"
# CPU part number, variant, revision, architecture and /proc/cpuinfo features of the CPUs a target may name.
ARM_CPUS = {
    "cortex-a7": ("0xc07", 0, 5, 7, V7_FEATURES),
    "cortex-a15": ("0xc0f", 2, 3, 7, V7_FEATURES),
    "cortex-a53": ("0xd03", 0, 4, 8, "fp asimd evtstrm crc32 cpuid"),
    "cortex-a55": ("0xd05", 2, 0, 8, V8_FEATURES),
    "cortex-a72": ("0xd08", 0, 3, 8, "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": ("0xd0b", 4, 1, 8, V8_FEATURES),
    "neoverse-n1": ("0xd0c", 3, 1, 8, V8_FEATURES),
}
COMPLETE = ".edgekit-image.json"
MERGED_USR_DIRS = ("bin", "lib", "sbin")  # top-level folders that are links into usr/ on a merged-/usr system


@dataclass(frozen=True)
class DeviceImage:
    """Pinned contents of an emulated device userland (which runtimes it has is read off the userland)."""

    name: str
    arch: str
    debian_arch: str
    suite: str
    qemu: str
    python: str
    debs: tuple[str, ...]
    wheels: tuple[str, ...] = ()
    wheel_platforms: tuple[str, ...] = ()
    python_version: str = ""
    drop: tuple[str, ...] = ()  # files a device does not need (compiler libraries), removed after install
    links: tuple[tuple[str, str], ...] = ()  # symlinks that Debian's alternatives system would create
    merged_usr: bool = False  # /bin, /lib, /sbin are links into /usr (Debian trixie and later)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


AARCH64 = DeviceImage(
    name="arm64",
    arch="aarch64",
    debian_arch="arm64",
    suite="bookworm",
    qemu="qemu-aarch64-static",
    python="usr/bin/python3.11",
    debs=("python3.11", "libstdc++6", "libgomp1"),
    wheels=(
        "numpy==2.4.6",
        "onnxruntime==1.31.1",
        "ai-edge-litert==2.3.0",
        "openvino==2026.4.1",
        "apache-tvm==0.27.0.post1",
        "apache-tvm-ffi==0.1.14.post0",
        "typing_extensions==4.16.0",
    ),
    wheel_platforms=(
        *(f"manylinux_2_{n}_aarch64" for n in (36, 35, 34, 31, 28, 27, 26, 24, 17)),
        "manylinux2014_aarch64",
    ),
    python_version="3.11",
    drop=("opt/edgekit/site/tvm/lib/libtvm_compiler.so", "opt/edgekit/site/tvm/lib/libtvm_runtime_cuda.so"),
)
# armv7: PyPI has no armv7l wheels of current runtimes. The last tflite-runtime with one (2.11, cp39)
# runs on Debian bullseye's Python 3.9; ONNX Runtime comes from Debian trixie's armhf package.
ARMHF_TFLITE = DeviceImage(
    name="armhf-tflite",
    arch="armv7l",
    debian_arch="armhf",
    suite="bullseye",
    qemu="qemu-arm-static",
    python="usr/bin/python3.9",
    debs=("python3.9", "python3-numpy", "libstdc++6"),
    wheels=("tflite-runtime==2.11.0",),
    wheel_platforms=("manylinux2014_armv7l",),
    python_version="3.9",
    links=(
        ("usr/lib/arm-linux-gnueabihf/libblas.so.3", "blas/libblas.so.3"),
        ("usr/lib/arm-linux-gnueabihf/liblapack.so.3", "lapack/liblapack.so.3"),
    ),
)
ARMHF_ORT = DeviceImage(
    name="armhf-onnxruntime",
    arch="armv7l",
    debian_arch="armhf",
    suite="trixie",
    qemu="qemu-arm-static",
    python="usr/bin/python3",
    debs=("python3", "python3-numpy", "python3-onnxruntime"),
    merged_usr=True,
    links=(
        ("usr/lib/arm-linux-gnueabihf/libblas.so.3", "blas/libblas.so.3"),
        ("usr/lib/arm-linux-gnueabihf/liblapack.so.3", "lapack/liblapack.so.3"),
    ),
)
IMAGES = {"aarch64": (AARCH64,), "armv7l": (ARMHF_TFLITE, ARMHF_ORT)}
SITE = "/opt/edgekit/site"
Log = Callable[[str], None]


def cache_root() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit")


def images_for(arch: str) -> tuple[DeviceImage, ...]:
    if arch not in IMAGES:
        raise EdgekitError(
            f"no emulated device for {arch}", f"use --device host or ssh://…; emulated: {sorted(IMAGES)}"
        )
    return IMAGES[arch]


def qemu_binary(image: DeviceImage) -> str:
    path = shutil.which(image.qemu)
    if path is None:
        raise EdgekitError(
            f"{image.qemu} is not installed (needed for the emulated {image.arch} device)",
            "apt-get install qemu-user-static, or run with --device host",
        )
    return path


def qemu_version(image: DeviceImage) -> str:
    out = procs.run([qemu_binary(image), "--version"], timeout=60).stdout
    return out.split("version")[1].split()[0] if "version" in out else "?"


def _run(cmd: list[str], what: str, fix: str) -> None:
    proc = procs.run(cmd)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        cause = next(
            (ln for ln in lines if ln.startswith(("E: Failed", "ERROR:"))), lines[-1] if lines else "no output"
        )
        raise EdgekitError(f"building the emulated device failed while {what}: {cause[:240]}", fix)


def _download_debs(image: DeviceImage, apt_root: Path) -> list[Path]:
    """Resolve and download the ``.deb``s with a private APT configuration for the target architecture."""
    for sub in (
        "etc/apt/sources.list.d",
        "etc/apt/preferences.d",
        "var/lib/dpkg",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
    ):
        (apt_root / sub).mkdir(parents=True, exist_ok=True)
    (apt_root / "var/lib/dpkg/status").touch()
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    (apt_root / "etc/apt/sources.list").write_text(
        f"deb [arch={image.debian_arch} signed-by={keyring}] http://deb.debian.org/debian {image.suite} main\n"
    )
    opts = [
        f"-oDir={apt_root}",
        f"-oDir::State::status={apt_root}/var/lib/dpkg/status",
        f"-oAPT::Architecture={image.debian_arch}",
        f"-oAPT::Architectures={image.debian_arch}",
        "-oDir::Etc::trusted=/etc/apt/trusted.gpg",
        "-oDir::Etc::trustedparts=/etc/apt/trusted.gpg.d",
        "-oDebug::NoLocking=1",
        "-qq",
    ]
    fix = "check that Debian's package archive is reachable and apt-get works on this machine"
    _run(["apt-get", *opts, "update"], "updating the APT index", fix)
    _run(["apt-get", *opts, "install", "--download-only", "-y", *image.debs], "downloading .debs", fix)
    return sorted((apt_root / "var/cache/apt/archives").glob("*.deb"))


def _merge_into(src: Path, dest: Path) -> None:
    """Move the content of folder ``src`` into ``dest``, folder by folder; ``dest``'s own entries win."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge_into(entry, target)
        elif not target.exists() and not target.is_symlink():
            entry.rename(target)
    shutil.rmtree(src)


def _merge_usr(fs: Path) -> None:
    """Make ``/bin``, ``/lib`` and ``/sbin`` links into ``/usr``, moving anything unpacked there into ``/usr``."""
    for name in MERGED_USR_DIRS:
        top = fs / name
        if top.is_dir() and not top.is_symlink():
            _merge_into(top, fs / "usr" / name)
        (fs / "usr" / name).mkdir(parents=True, exist_ok=True)
        top.unlink(missing_ok=True)
        top.symlink_to(f"usr/{name}")


def _install_wheels(image: DeviceImage, root: Path, downloads: Path) -> None:
    if not image.wheels:
        return
    platforms = [arg for p in image.wheel_platforms for arg in ("--platform", p)]
    abi = image.python_version.replace(".", "")
    common = [
        *platforms,
        "--python-version",
        image.python_version,
        "--implementation",
        "cp",
        "--abi",
        f"cp{abi}",
        "--abi",
        "abi3",
        "--abi",
        "none",
        "--only-binary=:all:",
        "--no-deps",
        "-q",
    ]
    fix = "check that PyPI is reachable and these pinned wheels exist for the device"
    _run(
        [sys.executable, "-m", "pip", "download", "-d", str(downloads), *common, *image.wheels],
        f"downloading {image.arch} wheels",
        fix,
    )
    wheels = sorted(str(p) for p in downloads.glob("*.whl"))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--target",
            str(root / SITE.lstrip("/")),
            *common,
            *wheels,
        ],
        "installing wheels",
        fix,
    )


def prepare(image: DeviceImage, log: Log = lambda msg: None) -> Path:
    """The cached userland of ``image``, assembled now if it is not there yet (about a minute)."""
    qemu_binary(image)
    root = cache_root()
    dest = root / f"rootfs-{image.name}-{image.key()}"
    if (dest / COMPLETE).exists():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / COMPLETE).exists():
            return dest
        log(f"assembling the emulated {image.name} device in {dest} (once; cached)")
        tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            fs = tmp / "fs"
            fs.mkdir(parents=True)
            for deb in _download_debs(image, tmp / "apt"):
                _run(["dpkg-deb", "-x", str(deb), str(fs)], f"unpacking {deb.name}", "re-run; the .deb may be damaged")
            if image.merged_usr:
                _merge_usr(fs)
            _install_wheels(image, fs, tmp / "wheels")
            for rel in image.drop:
                (fs / rel).unlink(missing_ok=True)
            for link, to in image.links:
                (fs / link).unlink(missing_ok=True)
                (fs / link).symlink_to(to)
            (fs / COMPLETE).write_text(json.dumps({**asdict(image), "key": image.key()}, indent=2))
            shutil.rmtree(dest, ignore_errors=True)
            fs.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def installed_modules(rootfs: Path) -> set[str]:
    """Top-level Python modules installed in a userland (edgekit's wheel folder and Debian's dist-packages)."""
    found = set()
    for site in (rootfs / SITE.lstrip("/"), rootfs / "usr/lib/python3/dist-packages"):
        if site.is_dir():
            found |= {p.name.split(".")[0] for p in site.iterdir() if p.is_dir() or p.suffix in (".py", ".so")}
    return found


def write_cpu_files(rootfs: Path, cpu: str, cores: int) -> None:
    """ARM ``/proc/cpuinfo`` and MIDR_EL1 sysfs entries for the emulated CPU, read by ORT and OpenVINO."""
    if cpu not in ARM_CPUS:
        raise EdgekitError(f"emulated CPU '{cpu}' is not known", f"use one of {', '.join(ARM_CPUS)} in the target file")
    part, variant, revision, arch, features = ARM_CPUS[cpu]
    model = f"model name\t: ARMv7 Processor rev {revision} (v7l)\n" if arch == 7 else ""
    block = (
        f"{model}BogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: {arch}\n"
        f"CPU variant\t: {variant:#x}\nCPU part\t: {part}\nCPU revision\t: {revision}\n"
    )
    (rootfs / "proc").mkdir(exist_ok=True)
    (rootfs / "proc/cpuinfo").write_text("\n".join(f"processor\t: {i}\n{block}" for i in range(cores)))
    midr = f"0x0000000041{variant:x}f{part[2:]}{revision:x}\n"
    for i in range(cores):
        folder = rootfs / f"sys/devices/system/cpu/cpu{i}/regs/identification"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "midr_el1").write_text(midr)
