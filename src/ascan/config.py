"""Typed run configs: dataclasses loaded from YAML, overridden with ``--set key=value``, range-checked.

Any task describes its settings as (nested) dataclasses; numeric fields declare their valid range with
:func:`setting`, string fields their choices. Loading goes defaults <- ``base`` (e.g. the config stored
in a checkpoint) <- YAML file <- overrides. Every problem — an unknown key, a wrongly typed value, a
value out of range, a YAML file that does not exist — is a one-line :class:`~ascan.errors.UserError`
naming the dotted key, so a typo never silently trains the wrong thing::

    @dataclass
    class Optim:
        lr: float = setting(1e-3, Range(0.0, 10.0))
        sched: str = setting("cosine", choices=("cosine", "const"))

    @dataclass
    class MyConfig:
        optim: Optim = field(default_factory=Optim)
        seed: int = 0

    cfg = load_config(MyConfig, "my.yaml", ["optim.lr=3e-4"])
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ascan.errors import UserError

C = TypeVar("C")
_RANGE_KEY, _CHOICES_KEY = "ascan_range", "ascan_choices"


@dataclass(frozen=True)
class Range:
    """A closed (or, with ``low_open``/``high_open``, half-open) interval of valid values."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{_bound(self.low)}, {_bound(self.high)}{')' if self.high_open else ']'}"

    def describe(self) -> str:
        return f"in {self}"


def _bound(value: float) -> str:
    """``2147483647`` rather than ``2.14748e+09``; ``inf``, ``0.5``, ``1e-08`` as ``:g`` writes them."""
    return str(int(value)) if math.isfinite(value) and value == int(value) else f"{value:g}"


@dataclass(frozen=True)
class Pattern:
    """Strings that match ``regex`` in full, e.g. device names; ``description`` is what the error says."""

    regex: str
    description: str

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and re.fullmatch(self.regex, value) is not None

    def __str__(self) -> str:
        return self.description

    def describe(self) -> str:
        return self.description


POSITIVE = Range(0.0, math.inf, low_open=True)
NON_NEGATIVE = Range(0.0)
AT_LEAST_ONE = Range(1.0)
FRACTION = Range(0.0, 1.0)  # probabilities, strengths in [0, 1]
DROP_RATE = Range(0.0, 1.0, high_open=True)  # [0, 1): drop rates (1 would drop everything)


def setting(default: Any = dataclasses.MISSING, valid: Range | Pattern | None = None, *,
            choices: tuple[str, ...] | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a declared valid range (numbers; ``None`` always passes), pattern or choices
    (strings)."""
    metadata = {_RANGE_KEY: valid, _CHOICES_KEY: choices}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def same_as(cls: type, name: str) -> Any:
    """A dataclass field with the default and declared range of ``cls``'s field ``name``: a setting two configs
    share is written once (e.g. the engine's loop settings mirror the task configs' top-level keys)."""
    source = {f.name: f for f in dataclasses.fields(cls)}[name]
    return dataclasses.field(default=source.default, default_factory=source.default_factory, metadata=source.metadata)


def with_defaults(**defaults: Any) -> Callable[[type[C]], type[C]]:
    """Class decorator, under ``@dataclass``: other defaults for fields the class inherits, ranges and choices kept.

    For settings shared by several configs with per-config defaults; the fields keep their order::

        @dataclass
        @with_defaults(lr=4e-3, ema_decay=0.9999)
        class OptimConfig(OptimSettings):
            sched: str = setting("cosine", choices=("cosine", "const"))
    """
    def apply(cls: type[C]) -> type[C]:
        inherited = {f.name: f for f in dataclasses.fields(cls)}  # cls is not a dataclass yet: its bases' fields
        hints: dict[str, Any] = {}
        for base in reversed(cls.__mro__[1:]):
            if dataclasses.is_dataclass(base):
                hints.update(typing.get_type_hints(base))
        own = cls.__dict__.get("__annotations__")
        if own is None:
            own = {}
            cls.__annotations__ = own
        for name, value in defaults.items():
            if name not in inherited or name in own:
                raise TypeError(f"{cls.__name__}: {name!r} is not a field it inherits")
            own[name] = hints[name]
            setattr(cls, name, dataclasses.field(default=value, metadata=inherited[name].metadata))
        return cls
    return apply


def check_ranges(cfg: Any, prefix: str = "", error: type[Exception] = UserError, *, as_flags: bool = False) -> None:
    """Raise ``error`` naming the first field whose value lies outside its declared range or choices
    (``as_flags``: named as the command-line option that sets it, ``num_classes`` as ``--num-classes``)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"--{f.name.replace('_', '-')}" if as_flags else f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{key}.", error, as_flags=as_flags)
            continue
        valid, choices = f.metadata.get(_RANGE_KEY), f.metadata.get(_CHOICES_KEY)
        if value is None:
            continue
        if valid is not None and value not in valid:
            raise error(f"{key} must be {valid.describe()}, got {value!r}")
        if choices is not None and value not in choices:
            raise error(f"{key} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# ---- Dict -> dataclass, with types checked ---------------------------------------------------------


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` converted to annotation ``tp`` (ints accepted for floats), or a UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(tp) if o is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        errors = []
        for option in options:
            try:
                return _convert(value, option, key)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0])
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, bool, str) and type(value) is tp:
        return value
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads `off`/`on` as booleans (e.g. amp=off)
        return "on" if value else "off"
    if origin is dict and isinstance(value, dict):
        return dict(value)
    expected = getattr(tp, "__name__", str(tp))
    raise UserError(f"config key {key!r} expects {expected}, got {value!r}")


def config_from_dict(cls: type[C], values: dict[str, Any] | None, prefix: str = "") -> C:
    """Instantiate dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in (values or {}).items():
        full = f"{prefix}{key}"
        if key not in names:
            raise UserError(f"unknown config key {full!r}; valid keys here: {', '.join(sorted(names))}")
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"config key {full!r} is a section; expected a mapping, got {value!r}")
            kwargs[key] = config_from_dict(tp, value, prefix=f"{full}.")
        else:
            kwargs[key] = _convert(value, tp, full)
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


# ---- Overrides and YAML files ----------------------------------------------------------------------


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=1e-3'`` -> (['optim', 'lr'], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"override {text!r} has an empty key part")
    try:
        value = safe_load_no_aliases(raw, f"override {text!r}") if raw.strip() else None
    except yaml.YAMLError as err:
        raise UserError(f"override {text!r}: value is not valid YAML ({err.__class__.__name__})") from None
    if isinstance(value, str) and _looks_numeric(value):  # YAML 1.1 reads '1e-3' as a string
        value = float(value)
    return parts, value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a nested dict (copied); sections are created as needed (validated later)."""
    out = yaml.safe_load(yaml.safe_dump(values)) or {}
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _fix_numeric_strings(node: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``3e-3`` as a string; config files should not need ``3.0e-3``."""
    if isinstance(node, dict):
        return {k: _fix_numeric_strings(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_numeric_strings(v) for v in node]
    if isinstance(node, str) and _looks_numeric(node) and any(c in node.lower() for c in "e."):
        return float(node)
    return node


MAX_CONFIG_BYTES = 1 << 20  # a config file is a page of settings; a larger one is not one


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader with aliases refused: ``*name`` re-uses a node, and nested aliases expand a
    kilobyte file into billions of nodes (the 'billion laughs'), which hangs the loader and then the caller."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} is not allowed in an ascan config "
                                              "(write the value out)", event.start_mark)
        return super().compose_node(parent, index)


def safe_load_no_aliases(text: str, origin: str) -> Any:
    """``yaml.safe_load`` with aliases refused and at most :data:`MAX_CONFIG_BYTES`; a UserError naming ``origin``
    otherwise. ``YAMLError``s other than an alias pass through to the caller's own message."""
    if len(text) > MAX_CONFIG_BYTES:
        raise UserError(f"{origin} is {len(text)} characters long; a config holds at most {MAX_CONFIG_BYTES}")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.composer.ComposerError as err:
        if err.problem and err.problem.startswith("alias"):
            mark = err.problem_mark
            raise UserError(f"{origin}: {err.problem} (line {mark.line + 1}, column {mark.column + 1})") from None
        raise


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {path} is a folder; give a YAML file")
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is {path.stat().st_size} bytes; a config holds at most "
                        f"{MAX_CONFIG_BYTES}")
    try:
        values = safe_load_no_aliases(path.read_text(errors="replace"), f"config file {path}")
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if values is not None and not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level")
    return _fix_numeric_strings(values or {})


def deep_merge(a: dict, b: dict, opaque: tuple[str, ...] = ("kwargs",)) -> dict:
    """``b`` over ``a``, section by section; keys in ``opaque`` (free-form kwargs) are replaced whole."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in opaque:
            out[key] = deep_merge(out[key], value, opaque)
        else:
            out[key] = value
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> C:
    """Defaults <- ``base`` <- YAML file at ``path`` <- ``overrides``, type- and range-checked."""
    values = dict(base or {})
    if path is not None:
        values = deep_merge(values, read_yaml(path))
    cfg = config_from_dict(cls, apply_overrides(values, overrides or []))
    check_ranges(cfg)
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    from ascan.atomic import atomic_write_text  # imports torch: not at startup (every --help reads this module)

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


__all__ = ["AT_LEAST_ONE", "DROP_RATE", "FRACTION", "NON_NEGATIVE", "POSITIVE", "Pattern", "Range",
           "apply_overrides", "check_ranges", "config_from_dict", "config_to_dict", "deep_merge", "load_config",
           "parse_override", "read_yaml", "same_as", "save_config", "setting", "with_defaults"]
