"""Runs a TVM build: the library for this machine's architecture in the Relax VM (numpy and tvm only)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def load(build_dir: Path, manifest: dict, threads: int):
    """(run function, runtime version)."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    import tvm
    from tvm.runtime.vm import VirtualMachine

    arch = platform.machine()
    artifact = manifest["artifacts"].get(arch)
    if artifact is None:
        raise RuntimeError(f"this TVM build has no library for {arch} (has {sorted(manifest['artifacts'])})")
    lib = tvm.runtime.load_module(str(build_dir / artifact))
    vm = VirtualMachine(lib, tvm.cpu())
    names = [i["name"] for i in manifest["inputs"]]

    def run(feed: dict) -> list:
        out = vm["main"](*[tvm.runtime.tensor(feed[n]) for n in names])
        outs = out if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else [out]
        return [o.numpy() for o in outs]

    return run, "tvm " + tvm.__version__
