"""edgekit: one command from a trained model to checked edge builds.

The CLI is a thin layer over this API::

    from edgekit import ConvertOptions, convert
    report = convert(ConvertOptions(model="model.onnx", target="arm64", calib=Path("calib.npz")))
"""

from edgekit.errors import EdgekitError
from edgekit.pipeline import Budgets, ConvertOptions, convert

__all__ = ["Budgets", "ConvertOptions", "EdgekitError", "convert"]
