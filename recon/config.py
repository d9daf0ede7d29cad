"""Config dataclasses, their plain-YAML form, and the method registry.

Every buildable component has a ``<Thing>Config`` dataclass that names the class it builds in
``_target`` and documents each field; tyro turns the tree into the command line, the docstrings
into ``--help``. A method is a :class:`MethodSpec`: a name, a one-line description and a preset
``TrainerConfig``. Methods register through the entry-point group ``recon.methods`` (the built-in
ones too), or through ``RECON_METHODS="name=module:attr,..."``. A variant is made with
:func:`override` on its base preset, never by copying it.

``config.yml`` is plain YAML (``yaml.safe_load`` reads it): a nested dataclass is written as a
mapping with a ``_type: module:QualName`` key, and only dataclasses are ever rebuilt from it. A
config.yml may come from someone else, so it is data, not code: ``_type`` may only name a module of
recon's own packages or of a registered plugin (:func:`trusted_packages`), checked before anything
is imported, since importing a module runs its code.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import importlib
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from recon.errors import ConfigError

ENTRY_POINT_GROUP = "recon.methods"
DATAPARSER_GROUP = "recon.dataparsers"
OWN_PACKAGES = ("recon", "data", "methods")
"""recon's own top-level packages: the engine, the dataset formats and the built-in methods."""


class InstantiateConfig:
    """Mixin for config dataclasses that build an object: ``config.setup(**kwargs)``."""

    _target: ClassVar[type]

    def setup(self, **kwargs: Any) -> Any:
        return self._target(self, **kwargs)


@dataclass
class MethodSpec:
    """A registered method: ``ns-train <name>`` trains ``config``."""

    name: str
    description: str
    config: Any  # TrainerConfig; typed loosely so that recon.config does not import the engine.
    inputs: str = "images"
    """What ``--data`` must hold: "images" (posed images) or "cross-sections" (a .csl file)."""
    test_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Config changes that make the method train in seconds on a tiny input (the conformance test)."""


def override(base: Any, **changes: Any) -> Any:
    """A deep copy of a config with fields replaced; dotted names reach into nested configs.

    ``override(cfg, max_num_iterations=100, **{"model.hidden_dim": 64})``
    """
    out = copy.deepcopy(base)
    for key, value in changes.items():
        *path, last = key.split(".")
        obj = out
        for part in path:
            obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
        if isinstance(obj, dict):
            obj[last] = value
        else:
            if not any(f.name == last for f in dataclasses.fields(obj)):
                raise ConfigError(f"{type(obj).__name__} has no field {last!r}")
            setattr(obj, last, value)
    return out


# -- registry ----------------------------------------------------------------------------------
def _load_spec(name: str, target: str) -> MethodSpec | None:
    module, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
        spec = obj() if callable(obj) and not isinstance(obj, MethodSpec) else obj
        if not isinstance(spec, MethodSpec):
            raise TypeError(f"{target} is a {type(spec).__name__}, not a MethodSpec")
    except Exception as exc:  # a broken plugin must not break ns-train --help
        warnings.warn(f"method plugin {name!r} ({target}) failed to load and is skipped: {exc}", stacklevel=2)
        return None
    return spec


def method_targets() -> dict[str, str]:
    """``{name: "module:attr"}`` of every registered method (entry points, then ``RECON_METHODS``); imports nothing."""
    found: dict[str, str] = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for item in filter(None, os.environ.get("RECON_METHODS", "").split(",")):
        name, _, target = item.partition("=")
        found[name.strip()] = target.strip()
    return found


def discover_methods() -> dict[str, MethodSpec]:
    """All registered methods by name, from entry points and ``RECON_METHODS``."""
    methods: dict[str, MethodSpec] = {}
    for name, target in sorted(method_targets().items()):
        spec = _load_spec(name, target)
        if spec is not None:
            methods[name] = spec
    return methods


def get_method(name: str) -> MethodSpec:
    methods = discover_methods()
    if name not in methods:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(methods) or 'none'}")
    return methods[name]


# -- plain YAML ------------------------------------------------------------------------------
def to_plain(obj: Any) -> Any:
    """A config tree as plain YAML-able data (dataclasses become mappings with ``_type``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"_type": f"{type(obj).__module__}:{type(obj).__qualname__}"}
        for f in dataclasses.fields(obj):
            out[f.name] = to_plain(getattr(obj, f.name))
        return out
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot write {type(obj).__name__} to config.yml")


def _coerce(value: Any, hint: Any, packages: frozenset[str]) -> Any:
    """Restore Python types that YAML flattens (Path, tuple, nested configs) from the field's type hint."""
    if isinstance(value, dict) and "_type" in value:
        return from_plain(value, packages)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        if isinstance(value, str) and Path in args:
            return Path(value)
        for arg in args:
            if typing.get_origin(arg) in (tuple, dict) or arg is tuple:
                return _coerce(value, arg, packages)
        return value
    if hint is Path and isinstance(value, str):
        return Path(value)
    if (origin is tuple or hint is tuple) and isinstance(value, list):
        item = args[0] if args else None
        return tuple(_coerce(v, item, packages) for v in value)
    if origin is dict and isinstance(value, dict):
        return {k: _coerce(v, args[1] if len(args) == 2 else None, packages) for k, v in value.items()}
    return value


_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def trusted_packages() -> frozenset[str]:
    """Top-level packages whose config classes a config.yml may name: recon's own, and those of the
    plugins registered in the ``recon.methods`` and ``recon.dataparsers`` entry-point groups or in
    ``RECON_METHODS`` (read from the registrations, without importing them)."""
    targets = [ep.value for group in (ENTRY_POINT_GROUP, DATAPARSER_GROUP) for ep in entry_points(group=group)]
    targets += [item.partition("=")[2] for item in os.environ.get("RECON_METHODS", "").split(",")]
    return frozenset(OWN_PACKAGES) | {t.strip().partition(":")[0].partition(".")[0] for t in targets if t.strip()}


def _in_packages(module: str, packages: frozenset[str]) -> bool:
    return module.partition(".")[0] in packages


def from_plain(data: dict[str, Any], packages: frozenset[str] | None = None) -> Any:
    """Rebuild a config tree written by :func:`to_plain`; ``_type`` must name a config dataclass
    of ``packages`` (default :func:`trusted_packages`), else ConfigError before any import."""
    packages = trusted_packages() if packages is None else packages
    name = data["_type"]
    module, _, qualname = str(name).partition(":")
    if not (isinstance(name, str) and _DOTTED.fullmatch(module) and _DOTTED.fullmatch(qualname)):
        raise ConfigError(f"config names {str(name)[:80]!r}, which is not a 'module:Class' name")
    if not _in_packages(module, packages):
        raise ConfigError(
            f"config names {name[:80]!r}, outside recon's packages and registered plugins ({', '.join(sorted(packages))}); not imported"
        )
    try:
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"config names {name!r}, which is not importable ({exc})") from None
    # getattr can reach a class another module imported (recon.x:trimesh.Foo): it must be defined here too.
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and _in_packages(cls.__module__, packages)):
        raise ConfigError(f"config names {name!r}, which is not a config dataclass of recon or a registered plugin")
    try:
        obj = cls()
    except TypeError as exc:
        raise ConfigError(f"config names {name!r}, which cannot be built from defaults ({exc})") from None
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data:
            setattr(obj, f.name, _coerce(data[f.name], hints.get(f.name), packages))
    return obj


def save_config(config: Any, path: Path) -> None:
    from recon.atomic import atomic_write

    with atomic_write(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(to_plain(config), sort_keys=False))


def load_config(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read file ({exc})", path) from None
    except RecursionError:
        raise ConfigError("not a recon config.yml (nested too deeply)", path) from None
    if not isinstance(data, dict) or "_type" not in data:
        raise ConfigError("not a recon config.yml (no _type at the top level)", path)
    try:
        return from_plain(data)
    except ConfigError as exc:
        raise ConfigError(str(exc), path) from None


@dataclass
class DataParserConfig(InstantiateConfig):
    """Base of dataset-format configs (defined in the ``data`` package, registered through the
    ``recon.dataparsers`` entry-point group so the CLI can offer them as sub-commands)."""

    num_train_views: int | None = None
    """Few-shot: keep only K training views (RegNeRF protocol for LLFF and DTU, evenly spaced otherwise)."""
    few_shot_points: Literal["retriangulate", "train-views", "all"] = "retriangulate"
    """With ``num_train_views``: which SfM points to use. retriangulate (default, as the sparse-view
    papers' baselines know only the chosen views): each point seen by two or more chosen views is
    triangulated again from their keypoints alone with the known poses, and coloured from them
    (COLMAP models, whose images.bin/txt hold the keypoints; other formats fall back to
    train-views); train-views: the full model's points that two or more chosen views observed
    (COLMAP, LLFF with sparse/0), still placed by the bundle adjustment over every image; all:
    every point. Formats without tracks (synthetic, nerfstudio, LLFF without sparse/0) keep all."""
    train_views: list[int] | None = None
    """Block training (``ns-train-blocks`` sets it): keep only these frames (indices into the dataset's
    frames, all in its train split) for training, after any few-shot selection; val/test untouched."""
    points_box: tuple[float, float, float, float, float, float] | None = None
    """Block training (``ns-train-blocks`` sets it): keep only the sparse points inside this box (min x y z,
    max x y z in the normalised frame; +-inf leaves a side open) and clip the scene box to it."""

    def load(self, data: Path | None) -> Any:
        """Parse ``data`` into a ``data.base.DataparserOutputs``."""
        raise NotImplementedError



def discover_dataparsers() -> dict[str, type]:
    """Registered dataset formats by sub-command name (``auto`` first)."""
    found: dict[str, type] = {}
    for ep in entry_points(group=DATAPARSER_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            warnings.warn(f"dataset parser {ep.name!r} ({ep.value}) failed to load and is skipped: {exc}", stacklevel=2)
            continue
        # An entry point names one parser config class, or a {name: class} mapping of several.
        found.update(obj if isinstance(obj, dict) else {ep.name: obj})
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != "auto", kv[0])))
