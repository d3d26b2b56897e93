"""Calibration and evaluation data: arrays (``.npz``/``.npy``) or folders of images."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.safety import file_or_folder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
LABEL_KEYS = ("labels", "label", "y", "targets")
INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
MAX_DIM = 1 << 24


def check_input_shape(name: str, shape: tuple[int, ...], dtype: str) -> None:
    """A model input shape must have positive dimensions and a numeric dtype edgekit can feed."""
    label = f"--input-shape {name + ':' if name else ''}{'x'.join(map(str, shape))}:{dtype}"
    if not shape or any(d < 1 or d > MAX_DIM for d in shape):
        raise EdgekitError(f"{label}: every dimension must be ≥ 1", "write e.g. --input-shape input:1x3x224x224")
    if dtype not in INPUT_DTYPES:
        raise EdgekitError(f"{label}: unknown dtype '{dtype}'", f"use one of {', '.join(INPUT_DTYPES)}")


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape (batch first) and numpy dtype of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ImagePreprocess:
    """How image files become model inputs: resize + crop to the input size, then (pixel - mean) / std."""

    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (255.0, 255.0, 255.0)
    ten_crop: bool = False


@dataclass
class Dataset:
    """Samples keyed by input name (each array has the sample axis first), optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, start: int, stop: int) -> Dataset:
        labels = None if self.labels is None else self.labels[start:stop]
        return Dataset({k: v[start:stop] for k, v in self.inputs.items()}, labels, self.source)

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` as a batch of one."""
        return {k: v[i : i + 1] for k, v in self.inputs.items()}


def _bad(path: Path, problem: str, fix: str) -> EdgekitError:
    return EdgekitError(f"data '{path}': {problem}", fix)


def load_dataset(path: Path, specs: list[TensorSpec] | None, preprocess: ImagePreprocess | None = None) -> Dataset:
    """Load ``path`` and match it to the model inputs ``specs`` (or infer the inputs when ``specs`` is None)."""
    path = Path(path)
    if not path.exists():
        raise _bad(path, "does not exist", "pass an existing .npz/.npy file or a folder of images")
    file_or_folder(path, "data")
    if path.is_dir():
        return _load_image_folder(path, specs, preprocess or ImagePreprocess())
    try:
        if path.suffix == ".npy":
            arrays = {"": np.load(path, allow_pickle=False)}
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        else:
            raise _bad(path, f"unsupported file type '{path.suffix}'", "use .npz, .npy or a folder of images")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, MemoryError) as exc:
        raise _bad(path, f"cannot be read as numpy data ({str(exc)[:160]})", "re-save it with numpy.savez") from exc
    labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None)
    if not arrays:
        raise _bad(path, "holds no input arrays", "save one array per model input, named after the input")
    for name, arr in arrays.items():
        _check_array(path, name, arr)
    inputs = _match_inputs(path, arrays, specs)
    if labels is not None:
        labels = _check_labels(path, labels)
    n = {len(v) for v in inputs.values()}
    if len(n) != 1 or 0 in n:
        raise _bad(path, f"inputs have different or zero sample counts {sorted(n)}", "give every input N samples")
    if labels is not None and len(labels) != n.pop():
        raise _bad(path, "labels and inputs have different lengths", "store one label per sample")
    return Dataset(inputs, labels, str(path))


def _check_array(path: Path, name: str, arr: np.ndarray) -> None:
    """A numeric array with a sample axis and finite values."""
    label = f"array '{name}'" if name else "the array"
    if arr.dtype.kind not in "biuf" or arr.ndim == 0:
        raise _bad(
            path, f"{label} has dtype {arr.dtype} and shape {arr.shape}", "store numeric arrays, samples on axis 0"
        )
    if arr.dtype.kind == "f":
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise _bad(
                path,
                f"{label} holds {bad} NaN/inf value(s)",
                "remove or repair those samples; edgekit needs finite data",
            )


def _check_labels(path: Path, labels: np.ndarray) -> np.ndarray:
    """Labels as a 1-D int64 array of class indices (one-hot, fractional or negative labels are refused)."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise _bad(
            path,
            f"labels have shape {labels.shape}; edgekit needs one class index per sample",
            "store labels as class indices, e.g. labels=onehot.argmax(1)",
        )
    if labels.dtype.kind not in "biuf" or (
        labels.dtype.kind == "f" and not (np.isfinite(labels).all() and np.all(labels == np.round(labels)))
    ):
        raise _bad(path, f"labels are not integer class indices (dtype {labels.dtype})", "store integer class indices")
    if len(labels) and labels.min() < 0:
        raise _bad(path, f"labels include {labels.min()}; class indices start at 0", "store class indices 0..C-1")
    return labels.astype(np.int64)


def _match_inputs(path: Path, arrays: dict[str, np.ndarray], specs: list[TensorSpec] | None) -> dict[str, np.ndarray]:
    if specs is None:
        if len(arrays) == 1:
            return {"input": next(iter(arrays.values()))}
        return arrays
    if len(specs) == 1 and len(arrays) == 1:
        arrays = {specs[0].name: next(iter(arrays.values()))}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise _bad(
            path,
            f"has arrays {sorted(arrays)} but the model needs inputs {missing}",
            "name the arrays after the model inputs (numpy.savez(f, **{name: array}))",
        )
    out = {}
    for spec in specs:
        arr = arrays[spec.name]
        want = tuple(spec.shape[1:])
        if tuple(arr.shape[1:]) != want:
            raise _bad(
                path,
                f"input '{spec.name}' has sample shape {tuple(arr.shape[1:])}, the model expects {want}",
                "store samples with the model's input shape (samples on axis 0), or pass --input-shape",
            )
        out[spec.name] = arr.astype(spec.dtype, copy=False)
    return out


def _ten_crops(img, size: tuple[int, int]) -> list:
    from PIL import Image

    w, h = img.size
    ch, cw = size
    boxes = [((w - cw) // 2, (h - ch) // 2), (0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]
    crops = [img.crop((x, y, x + cw, y + ch)) for x, y in boxes]
    return crops + [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in crops]


def _load_image_folder(path: Path, specs: list[TensorSpec] | None, prep: ImagePreprocess) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise _bad(path, "contains no images (.jpg/.png/.bmp/.webp)", "point --calib at a folder of real images")
    if specs is None or len(specs) != 1 or len(specs[0].shape) != 4:
        raise _bad(
            path,
            "an image folder needs a model with one 4-D image input",
            "pass --input-shape NAME:1x3xHxW, or give the data as .npz",
        )
    spec = specs[0]
    channels_first = spec.shape[1] in (1, 3)
    c, h, w = spec.shape[1:] if channels_first else (spec.shape[3], *spec.shape[1:3])
    samples = []
    if c not in (1, 3):
        raise _bad(path, f"images have 1 or 3 channels, the model input {spec.shape} has {c}", "give the data as .npz")
    for f in files:
        try:
            with Image.open(f) as raw:
                img = raw.convert("L" if c == 1 else "RGB")
            scale = max(h / img.height, w / img.width) * (256 / 224 if prep.ten_crop else 1.0)
            img = img.resize(
                (max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.Resampling.BILINEAR
            )
        except Image.DecompressionBombError as exc:
            raise _bad(f, f"is too large to decode safely ({exc})", "resize the image or remove it") from exc
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise _bad(f, f"is not a readable image ({str(exc)[:120]})", "remove or replace the file") from exc
        crops = _ten_crops(img, (h, w))[: 10 if prep.ten_crop else 1]
        for crop in crops:
            a = np.asarray(crop, dtype=np.float32).reshape(h, w, c)
            a = (a - np.asarray(prep.mean[:c], np.float32)) / np.asarray(prep.std[:c], np.float32)
            samples.append(a.transpose(2, 0, 1) if channels_first else a)
    return Dataset({spec.name: np.stack(samples).astype(spec.dtype)}, None, str(path))


def specs_from_dataset(ds: Dataset) -> list[TensorSpec]:
    """Input specs (batch of one) inferred from a dataset."""
    return [TensorSpec(k, (1, *v.shape[1:]), str(v.dtype)) for k, v in ds.inputs.items()]
