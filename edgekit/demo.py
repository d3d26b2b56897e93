"""The demo recipe: the bundled EfficientNet-Lite0 (ImageNet weights) on the bundled real photos."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path

from edgekit.data import IMAGE_SUFFIXES, ImagePreprocess
from edgekit.pipeline import ConvertOptions

MODEL = "edgekit.models.efficientnet_lite:efficientnet_lite0"


def photos() -> Path:
    """The bundled photos (licences in calib_data/README.md)."""
    return Path(str(resources.files("edgekit.calib_data") / "photos"))


def demo_options(
    target: str = "arm64", out: Path = Path("build/demo"), eval_photos: bool = False, **overrides
) -> ConvertOptions:
    """Options of ``edgekit demo``: 64 calibration and 66 held-out ten-crops of the photos, 224×224,
    EfficientNet-Lite's (x − 127) / 128 normalisation; ``overrides`` replace any other option.

    ``eval_photos``: held out are instead the centre crops of the prepared photo set (``edgekit.photos``, 240
    photos); calibration stays on the bundled photos' ten-crops.
    """
    if eval_photos:
        from edgekit.photos import prepared

        held_out = prepared()
        overrides = {
            "eval": held_out,
            "eval_image": ImagePreprocess((127.0,) * 3, (128.0,) * 3),
            "eval_size": sum(1 for p in held_out.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
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
