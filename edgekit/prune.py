"""Pruning pass: structured (torch-pruning's dependency graph) or unstructured (global magnitude), then
label-free recovery (BatchNorm re-estimation and self-distillation on the calibration data)."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

import numpy as np

from edgekit.complexity import torch_macs_params
from edgekit.data import Dataset
from edgekit.errors import EdgekitError

KINDS = ("structured", "unstructured")
IMPORTANCES = ("l1", "l2", "bn", "taylor")


@dataclass(frozen=True)
class PruneConfig:
    """``--prune KIND:RATIO`` and its knobs."""

    kind: str
    ratio: float
    importance: str = "l2"
    ignore: tuple[str, ...] = ()  # module names (regular expressions) never pruned, beside the output layer
    round_to: int = 1  # keep channel counts multiples of this (4 or 8 suit SIMD int8 kernels)
    recover_steps: int = 0
    recover_lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EdgekitError(f"unknown pruning kind '{self.kind}'", f"use {' or '.join(KINDS)}, e.g. structured:0.3")
        if not 0.0 < self.ratio < 1.0:
            raise EdgekitError(f"pruning ratio {self.ratio} is not in (0, 1)", "give a fraction, e.g. structured:0.3")
        if self.importance not in IMPORTANCES:
            raise EdgekitError(f"unknown importance '{self.importance}'", f"use one of {', '.join(IMPORTANCES)}")
        if self.round_to < 1:
            raise EdgekitError("--prune-round-to must be ≥ 1", "pass 1 for exact ratios, 4 or 8 for SIMD widths")
        if self.recover_steps < 0:
            raise EdgekitError("--recover-steps must be ≥ 0", "pass 0 to skip self-distillation")
        for pattern in self.ignore:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise EdgekitError(
                    f"--prune-ignore '{pattern}' is not a regular expression ({exc})", "fix it"
                ) from None
        if not 0.0 < self.recover_lr < 1e3:
            raise EdgekitError(f"--recover-lr {self.recover_lr} is not a positive learning rate", "pass e.g. 1e-3")

    @classmethod
    def parse(cls, spec: str, **knobs) -> PruneConfig:
        """``structured:0.3`` → PruneConfig(kind="structured", ratio=0.3, **knobs)."""
        kind, _, ratio = spec.partition(":")
        try:
            value = float(ratio)
        except ValueError:
            raise EdgekitError(f"--prune '{spec}' is not KIND:RATIO", "write e.g. structured:0.3") from None
        return cls(kind.strip(), value, **knobs)


@dataclass
class PruneResult:
    """The pruned module and what pruning and recovery did."""

    module: object
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    ignored: list[str]
    sparsity: float | None = None  # unstructured: fraction of zero weights in the pruned layers
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer → (before, after)
    recovery: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "ignored_layers": self.ignored,
            "sparsity": self.sparsity,
            "channels": {k: list(v) for k, v in self.channels.items()},
            "recovery": self.recovery,
        }


def count_macs_params(module, example: tuple) -> tuple[int, int]:
    """Multiply-accumulates of one forward pass and the parameter count (``complexity.torch_macs_params``:
    convolutions and matrix products as they run, so a pruned model's smaller layers count as they are)."""
    return torch_macs_params(module, example)


def _prunable(module) -> bool:
    from torch import nn

    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))


def _width(module) -> int:
    return module.out_channels if hasattr(module, "out_channels") else module.out_features


def _output_layers(model, example: tuple) -> list[str]:
    """The last conv/linear layer run before each model output whose width is that output's channel count."""
    import torch

    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
        for name, m in model.named_modules()
        if _prunable(m)
    ]
    try:
        with torch.no_grad():
            out = model(*example)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else [out]
    modules = dict(model.named_modules())
    found = []
    for o in outs:
        channels = o.shape[1] if o.dim() > 1 else o.shape[0]
        for name in reversed(order):
            if _width(modules[name]) == channels:
                found.append(name)
                break
    return sorted(set(found) or set(order[-1:]))


def _batches(data: Dataset, names: list[str], batch_size: int, rng: np.random.Generator | None = None):
    import torch

    n = len(data)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield (
            tuple(torch.from_numpy(data.inputs[k][idx]) for k in names),
            (torch.from_numpy(data.labels[idx]).long() if data.labels is not None else None),
        )


def prune_model(
    module, names: list[str], calib: Dataset, config: PruneConfig, train: Dataset | None = None, log=print
) -> PruneResult:
    """Prune a copy of ``module`` (an ``nn.Module``) as ``config`` says and recover it without labels.

    ``calib`` feeds the dependency graph, BatchNorm re-estimation and self-distillation; ``train``
    (with labels) adds a cross-entropy term and Taylor importance.
    """
    import torch
    from torch import nn

    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
        raise EdgekitError(
            "pruning needs the model as a PyTorch nn.Module",
            "pass the architecture as module:callable with --weights (TorchScript, torch.export and ONNX "
            "sources cannot be pruned)",
        )
    teacher = module.eval()
    model = copy.deepcopy(module).eval()
    example = tuple(torch.from_numpy(calib.inputs[k][:1]) for k in names)
    macs0, params0 = count_macs_params(model, example)
    ignored = _output_layers(model, example)
    modules = dict(model.named_modules())
    for pattern in config.ignore:
        hits = [n for n in modules if n and re.fullmatch(pattern, n)]
        if not hits:
            raise EdgekitError(
                f"--prune-ignore '{pattern}' matches no layer",
                f"use module names such as {', '.join(n for n, m in modules.items() if _prunable(m))}",
            )
        ignored += [n for n in hits if n not in ignored]
    torch.manual_seed(config.seed)
    before = {n: _width(m) for n, m in modules.items() if _prunable(m)}
    sparsity = None
    if config.kind == "structured":
        _structured(model, example, ignored, config, calib if train is None else train, names)
    else:
        sparsity = _unstructured(model, ignored, config.ratio)
    modules = dict(model.named_modules())
    channels = {n: (w, _width(modules[n])) for n, w in before.items() if n in modules and _width(modules[n]) != w}
    macs1, params1 = count_macs_params(model, example)
    log(f"pruned: MACs {macs0 / 1e6:.2f} M → {macs1 / 1e6:.2f} M, parameters {params0:,} → {params1:,}")
    recovery = recover(model, teacher, names, calib, config, train, log)
    return PruneResult(model.eval(), macs0, macs1, params0, params1, ignored, sparsity, channels, recovery)


def _structured(model, example: tuple, ignored: list[str], config: PruneConfig, data: Dataset, names: list[str]):
    import torch
    import torch_pruning as tp

    modules = dict(model.named_modules())
    importance = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "bn": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
    }[config.importance]()
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=importance,
        pruning_ratio=config.ratio,
        ignored_layers=[modules[n] for n in ignored],
        round_to=config.round_to if config.round_to > 1 else None,
    )
    if config.importance == "taylor":
        if data.labels is None:
            raise EdgekitError(
                "Taylor importance needs labels", "pass --train with a labelled .npz, or use --prune-importance l2"
            )
        model.zero_grad()
        for inputs, labels in _batches(data, names, config.batch_size):
            torch.nn.functional.cross_entropy(model(*inputs), labels).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)


def _unstructured(model, ignored: list[str], ratio: float) -> float:
    """Global L1 magnitude pruning of conv/linear weights, made permanent (zeros stay in the weights)."""
    from torch.nn.utils import prune

    params = [(m, "weight") for n, m in model.named_modules() if _prunable(m) and n not in ignored]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=ratio)
    for m, name in params:
        prune.remove(m, name)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    return zeros / sum(m.weight.numel() for m, _ in params)


def recover(model, teacher, names: list[str], calib: Dataset, config: PruneConfig, train: Dataset | None, log) -> dict:
    """BatchNorm re-estimation on ``calib``, then ``config.recover_steps`` steps of self-distillation
    (match the unpruned teacher's outputs; plus cross-entropy on ``train``'s labels when given)."""
    import torch
    from torch import nn

    report: dict = {"bn_reestimated": False, "steps": 0}
    masks = (
        {m: (m.weight != 0).float() for m in model.modules() if _prunable(m)} if config.kind == "unstructured" else {}
    )
    if config.recover_steps:
        data = train or calib
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.recover_lr)
        rng = np.random.default_rng(config.seed)
        model.train()
        _freeze_dropout(model)
        step, losses = 0, []
        while step < config.recover_steps:
            for inputs, labels in _batches(data, names, config.batch_size, rng):
                with torch.no_grad():
                    target = teacher(*inputs)
                out = model(*inputs)
                loss = _distill_loss(out, target)
                if train is not None and labels is not None:
                    loss = loss + nn.functional.cross_entropy(out, labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for m, mask in masks.items():  # unstructured: pruned weights stay zero
                        m.weight.mul_(mask)
                losses.append(loss.item())
                step += 1
                if step == config.recover_steps:
                    break
        k = max(1, len(losses) // 10)
        report.update(
            steps=step,
            lr=config.recover_lr,
            data="labelled training data + teacher outputs" if train is not None else "teacher outputs on calib. data",
            loss_first=float(np.mean(losses[:k])),
            loss_last=float(np.mean(losses[-k:])),
        )
        log(f"self-distillation: {step} steps, loss {report['loss_first']:.4g} → {report['loss_last']:.4g}")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        reestimate_bn(model, bns, names, calib, config.batch_size)
        report["bn_reestimated"] = True
        report["bn_layers"] = len(bns)
    return report


def _freeze_dropout(model) -> None:
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()


def _distill_loss(out, target):
    """Mean squared error scaled by the teacher's output variance, summed over outputs."""
    import torch

    outs = out if isinstance(out, (tuple, list)) else [out]
    targets = target if isinstance(target, (tuple, list)) else [target]
    return sum(
        torch.mean((o - t) ** 2) / (t.var() + 1e-8) for o, t in zip(outs, targets, strict=True) if o.is_floating_point()
    )


def reestimate_bn(model, bns: list, names: list[str], data: Dataset, batch_size: int) -> None:
    """Recompute BatchNorm running statistics as a cumulative average over ``data`` (other layers in eval mode)."""
    import torch

    model.eval()
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            for inputs, _ in _batches(data, names, batch_size):
                model(*inputs)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
