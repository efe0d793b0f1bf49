"""One typed configuration layer for every job: defaults ← recipe ← ``--config`` file ← flags ← ``--set``.

Each job's config is a dataclass (``BuildConfig``, ``TrainConfig``, ``EvalConfig``, ``SweepConfig``, …).
A run is resolved from layers of nested dicts, each named by where it came from, merged in order and
validated once by pydantic against the dataclass's field types: ``--set num_points=abc`` or
``--set resources.check_fits=maybe`` is refused with a one-line ``ConfigError`` that names the layer,
the field and the value, and an unknown field is refused with the fields it could have meant.
``--print-config`` prints the resolved config as YAML, ready to save and pass back with ``--config``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml
from pydantic import TypeAdapter, ValidationError

from uni3d.errors import CheckpointError

T = TypeVar("T")
CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A configuration the job cannot run with; the message is one line naming the field and value."""


class MissingInput(ConfigError, FileNotFoundError):
    """A file or folder the job was pointed at does not exist (a ``ConfigError`` and a ``FileNotFoundError``)."""


@dataclass(frozen=True)
class Layer:
    source: str  # "--set num_points=abc", "recipe cpu", "file.yaml", "defaults"
    values: dict[str, Any]  # nested: {"resources": {"shape_workers": 4}}


def set_layers(items: list[str]) -> list[Layer]:
    """``--set a.b=value`` strings -> one layer each (so an error names the item); values stay raw strings."""
    layers = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} must look like key=value")
        layers.append(Layer(f"--set {item}", nest(key.strip(), _Raw(raw.strip()))))
    return layers


def file_layer(path: str | os.PathLike) -> Layer:
    """A YAML (or JSON) file of a config's fields, nested as the dataclass is."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{p}: expected a mapping of field: value, got {type(values).__name__}")
    return Layer(str(p), values)


def nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


class _Raw(str):
    """A command-line value: parsed according to the type of the field it lands in."""


def resolve(cls: type[T], layers: list[Layer], required: dict[str, str] | None = None) -> T:
    """Merge the layers in order over ``cls``'s defaults and validate the result against its types.

    ``required`` maps fields that some layer must set (whatever their default) to how to set them."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer in layers:
        _merge(cls, merged, layer.values, layer.source, origin, prefix="")
    for name, how in (required or {}).items():
        if name not in origin:
            raise ConfigError(f"{name} is required: {how}")
    try:
        return TypeAdapter(cls).validate_python(merged)
    except ValidationError as exc:
        raise ConfigError(_explain(cls, exc, origin)) from None


def _merge(cls: type, into: dict[str, Any], values: dict[str, Any], source: str, origin: dict[str, str], prefix: str):
    hints = get_type_hints(cls)
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in hints or key.startswith("_"):
            raise ConfigError(f"{source}: {cls.__name__} has no field {dotted!r}{_did_you_mean(key, hints)}")
        section = _dataclass_of(hints[key])
        if section is not None and isinstance(value, dict):
            if key not in into:  # a section's own default (EmbedConfig's source is local) under the values set
                into[key] = _section_default(cls, key)
            _merge(section, into[key], value, source, origin, prefix=f"{dotted}.")
            continue
        if section is not None and not isinstance(value, dict):
            raise ConfigError(f"{source}: {dotted!r} is a section; set its fields, e.g. {dotted}.<field>=…")
        into[key] = _coerce(hints[key], value)
        origin[dotted] = source


def _section_default(cls: type, key: str) -> dict[str, Any]:
    """The values of a nested dataclass field's default instance (its ``default_factory``'s), or none."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == key)
    if spec.default_factory is not dataclasses.MISSING:
        return dataclasses.asdict(spec.default_factory())
    return {}


def _did_you_mean(key: str, hints: dict[str, Any]) -> str:
    names = sorted(k for k in hints if not k.startswith("_"))
    prefixed = [n for n in names if key.startswith(n) or n.startswith(key)]
    close = list(dict.fromkeys(prefixed + difflib.get_close_matches(key, names, n=3)))[:3]
    return f"; did you mean {', '.join(close)}?" if close else f"; fields: {', '.join(names)}"


def _dataclass_of(hint: Any) -> type | None:
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _is_str_field(hint: Any) -> bool:
    if hint is str:
        return True
    args = typing.get_args(hint)
    return isinstance(hint, types.UnionType | typing._UnionGenericAlias) and str in args  # type: ignore[attr-defined]


def _coerce(hint: Any, value: Any) -> Any:
    """Raw command-line strings become YAML values except for string fields (``--set name=007`` stays "007");
    numbers written in a YAML file for a string field become strings; ``$VARS`` in strings are expanded."""
    if isinstance(value, _Raw):
        if _is_str_field(hint) and not (value in ("null", "~") and type(None) in typing.get_args(hint)):
            return os.path.expandvars(str(value))
        try:
            value = yaml.safe_load(str(value)) if str(value) else ""
        except yaml.YAMLError:
            value = str(value)
    if _is_str_field(hint) and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return os.path.expandvars(value)
    return value


def _explain(cls: type, exc: ValidationError, origin: dict[str, str]) -> str:
    error = exc.errors()[0]
    loc = ".".join(str(p) for p in error["loc"])
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{cls.__name__}: {loc} is required"
    if not loc:  # a check in __post_init__: the message names the field itself
        return msg if msg.startswith(cls.__name__) else f"{cls.__name__}: {msg}"
    source = origin.get(loc, "defaults")
    return f"{source}: {loc}={error.get('input')!r}: {msg}"


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg, sort_keys=False)


def field_help(cls: type, prefix: str = "") -> list[str]:
    """One line per field, nested sections flattened: ``name (type, default …): the comment in the source``."""
    comments = _field_comments(cls)
    hints = get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        section = _dataclass_of(hints[f.name])
        if section is not None:
            lines += field_help(section, prefix=f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f"default {f.default!r}"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"default {f.default_factory()!r}"
        else:
            default = "required"
        kind = _type_name(hints[f.name])
        comment = comments.get(f.name, "")
        lines.append(f"  {prefix}{f.name} ({kind}, {default})" + (f": {comment}" if comment else ""))
    return lines


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _field_comments(cls: type) -> dict[str, str]:
    """The comment on a field's line, or the comment block just above it, from the class's source."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, above = {}, []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"\s+(\w+): [^=]+(?:=.*?)?(?:#\s*(.*))?$", line)
        if match and not stripped.startswith(("def ", "return", "@")):
            text = match.group(2) or " ".join(above)
            if text:
                out[match.group(1)] = text
        above = []
    return out


def add_set_argument(ap: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE``, repeatable, collected in ``args.overrides`` (``set_layers`` reads them)."""
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_config_arguments(ap: argparse.ArgumentParser, cls: type, set_help: str = "") -> None:
    """``--config``, ``--set`` and ``--print-config``, with ``cls``'s fields listed in ``--help``."""
    ap.add_argument("--config", metavar="FILE.yaml", help="a YAML file of config fields (see --print-config)")
    add_set_argument(ap, set_help or "override any config field (listed below); repeatable, applied last")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    fields = "\n".join(field_help(cls))
    ap.epilog = ((ap.epilog or "") + f"\n\nconfig fields ({cls.__name__}, for --set and --config):\n{fields}").strip()


def cli_layers(args: argparse.Namespace, flags: dict[str, Any]) -> list[Layer]:
    """The ``--config`` file, then the job's own flags (those given), then ``--set`` items."""
    layers = [file_layer(args.config)] if getattr(args, "config", None) else []
    given = _prune(flags)
    if given:
        layers.append(Layer("command-line flags", given))
    return layers + set_layers(getattr(args, "overrides", []))


def _prune(values: dict[str, Any]) -> dict[str, Any]:
    """Drop the flags not given (None), in nested sections too."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _prune(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def usage_error(exc: Exception) -> int:
    """argparse's convention: one ``error:`` line on stderr, exit status 2."""
    print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
    return 2


def job_main(main: Callable[..., Any]) -> Callable[..., Any]:
    """A job's ``main``: a ``ConfigError`` raised anywhere in it (bad flags, a missing file, a build that does
    not fit the run) or a ``uni3d.CheckpointError`` (a checkpoint given that cannot be loaded) becomes one ``error:``
    line on stderr and exit status 2, with no traceback."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> Any:
        try:
            return main(argv)
        except (ConfigError, CheckpointError) as exc:
            return usage_error(exc)

    return wrapped


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``section.key=value`` strings to a (nested) config dataclass, each value validated against
    its field's type (``pipelines.settings``): a bad one raises ``ConfigError`` naming the item."""
    if not overrides:
        return cfg
    return resolve(type(cfg), [Layer("config", dataclasses.asdict(cfg)), *set_layers(overrides)])
