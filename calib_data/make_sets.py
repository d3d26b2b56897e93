"""Rebuild the bundled calibration sets from the real data shipped inside installed packages.

Run once by maintainers (``python calib_data/make_sets.py``); the outputs are committed so that
edgekit itself never needs these packages or the network at run time.
"""

from pathlib import Path

import numpy as np
import skimage
import sklearn
from PIL import Image
from sklearn.datasets import load_digits

HERE = Path(__file__).parent
SKIMAGE = Path(skimage.__file__).parent / "data"
SKLEARN = Path(sklearn.__file__).parent / "datasets" / "images"
PHOTOS = {
    "astronaut": SKIMAGE / "astronaut.png",
    "chelsea": SKIMAGE / "chelsea.png",
    "coffee": SKIMAGE / "coffee.png",
    "rocket": SKIMAGE / "rocket.jpg",
    "hubble_deep_field": SKIMAGE / "hubble_deep_field.jpg",
    "camera": SKIMAGE / "camera.png",
    "coins": SKIMAGE / "coins.png",
    "grass": SKIMAGE / "grass.png",
    "gravel": SKIMAGE / "gravel.png",
    "brick": SKIMAGE / "brick.png",
    "retina": SKIMAGE / "retina.jpg",
    "china": SKLEARN / "china.jpg",
    "flower": SKLEARN / "flower.jpg",
}


def main() -> None:
    out = HERE / "photos"
    out.mkdir(exist_ok=True)
    for name, src in PHOTOS.items():
        img = Image.open(src).convert("RGB")
        scale = 256 / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
        img.save(out / f"{name}.jpg", quality=92)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    (HERE / "digits").mkdir(exist_ok=True)
    np.savez_compressed(HERE / "digits" / "digits.npz", input=x, labels=digits.target.astype(np.int64))


if __name__ == "__main__":
    main()
