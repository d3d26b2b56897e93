"""The demo recipe: the bundled EfficientNet-Lite0 (ImageNet weights) on the bundled real photos."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

from edgekit.data import IMAGE_SUFFIXES, ImagePreprocess
from edgekit.errors import EdgekitError
from edgekit.pipeline import ConvertOptions

MODEL = "edgekit.models.efficientnet_lite:efficientnet_lite0"


def photos() -> Path:
    """The bundled photos (licences in calib_data/README.md)."""
    return Path(str(resources.files("edgekit.calib_data") / "photos"))


HELD_OUT = ("auto", "photos", "crops")


def held_out_photos(held_out: str) -> bool:
    """Whether the demo holds out the prepared photo set: ``photos`` (refused when not prepared), ``crops`` (the
    bundled ten-crops), ``auto`` (the photos when prepared, else the crops)."""
    from edgekit.photos import photos_dir, prepared

    if held_out not in HELD_OUT:
        raise EdgekitError(f"--held-out {held_out!r} is not one of {', '.join(HELD_OUT)}", "pass --held-out auto")
    if held_out == "photos":
        prepared()  # one line saying how to make them
    return held_out == "photos" or (held_out == "auto" and (photos_dir() / ".complete").is_file())


def demo_options(
    target: str = "arm64", out: Path = Path("build/demo"), held_out: str = "auto", **overrides
) -> ConvertOptions:
    """Options of ``edgekit demo``: calibration on 64 ten-crops of the bundled photos, 224×224,
    EfficientNet-Lite's (x − 127) / 128 normalisation; ``overrides`` replace any other option.

    Held out (``held_out``, see :func:`held_out_photos`): the centre crops of the prepared photo set
    (``edgekit.photos``, 240 photos of everyday scenes and objects), or 66 further ten-crops of the bundled photos
    (7 photos: mostly near-ties, a weak judge of top-1 agreement).
    """
    if held_out_photos(held_out):
        from edgekit.photos import prepared

        folder = prepared()
        overrides = {
            "eval": folder,
            "eval_image": ImagePreprocess((127.0,) * 3, (128.0,) * 3),
            "eval_size": sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
            **overrides,
        }
    opts = ConvertOptions(
        model=MODEL,
        target=target,
        out=out,
        calib=photos(),
        input_shapes={"": ((1, 3, 224, 224), "float32")},
        image=ImagePreprocess((127.0,) * 3, (128.0,) * 3, ten_crop=True),
        calib_size=64,
        eval_size=66,
    )
    return replace(opts, **overrides)
