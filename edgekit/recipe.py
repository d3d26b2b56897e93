"""Recipes: every ``edgekit convert`` option in a TOML file (``--config FILE`` or ``./edgekit.toml``).

Keys are the option names (``calib``, ``min-top1-agreement`` or ``min_top1_agreement``, ``eval`` …);
lists stand for comma-separated or repeatable options. An option given on the command line wins over the
recipe. Paths are relative to the folder edgekit runs in. The resolved recipe goes into the report.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.safety import regular_file

DEFAULT_RECIPE = "edgekit.toml"
ALIASES = {"eval": "eval_data", "json": "as_json"}


def apply_recipe(ctx, config: Path | None) -> dict:
    """The command's parameter values with the recipe's filled in where the command line gave none.

    ``recipe`` in the result holds the file and the keys it supplied (None without a recipe).
    """
    values = dict(ctx.params)
    values.pop("config", None)
    path = config if config is not None else (Path(DEFAULT_RECIPE) if Path(DEFAULT_RECIPE).is_file() else None)
    values["recipe"] = None
    if path is None:
        return values
    regular_file(path, "--config")
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"recipe {path} is not valid TOML ({exc})", "fix the syntax") from exc
    params = {p.name: p for p in ctx.command.params if p.name not in ("config",)}
    used = {}
    for key, raw in data.items():
        name = ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if name not in params:
            known = ", ".join(sorted(k.replace("_", "-") for k in params))
            raise EdgekitError(f"recipe {path}: unknown option '{key}'", f"use option names: {known}")
        source = ctx.get_parameter_source(name)  # Typer bundles its own click: compare by name
        if source is not None and source.name != "DEFAULT":
            continue  # given on the command line: it wins
        param = params[name]
        multiple = getattr(param, "multiple", False)
        if multiple:
            value = raw if isinstance(raw, list) else [raw]
        else:
            value = ",".join(str(v) for v in raw) if isinstance(raw, list) else raw
        try:
            values[name] = param.process_value(ctx, value)
        except Exception as exc:  # the option type's own conversion error (BadParameter of Typer's click)
            message = getattr(exc, "message", str(exc))
            raise EdgekitError(f"recipe {path}: '{key}' = {raw!r} ({message})", f"fix '{key}'") from exc
        used[key] = raw
    values["recipe"] = {"file": str(path), "options": used}
    return values
