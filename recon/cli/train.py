"""``ns-train <method> [options] [<dataset-format> [options]]``: train a registered method.

The command line is generated from the method registry: each method is a sub-command whose flags
are the fields of its preset config (docstrings become the help), and the dataset format is an
optional sub-command after it (detected from the folder by default).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from importlib.metadata import entry_points
from typing import Annotated, Any, Callable, Union

import tyro

from recon.cli import parse_cli, run_main
from recon.cli.handoff import dispatch, help_note
from recon.config import discover_dataparsers, discover_methods, method_targets
from recon.engine import distributed
from recon.engine.trainer import Trainer, TrainerConfig
from recon.errors import ConfigError


def _cli_class(parsers: dict[str, type]) -> type:
    """TrainerConfig whose ``dataparser`` field is the union of the registered formats (sub-commands)."""
    if not parsers:
        return TrainerConfig
    union = Union[tuple(Annotated[cls, tyro.conf.subcommand(name, default=cls())] for name, cls in parsers.items())]  # type: ignore[misc]
    first = next(iter(parsers.values()))
    return dataclasses.make_dataclass(
        "TrainerConfig", [("dataparser", union, dataclasses.field(default_factory=first))], bases=(TrainerConfig,)
    )


def to_trainer_config(cfg: Any) -> TrainerConfig:
    return TrainerConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainerConfig)})


def _usage(methods: dict) -> str:
    width = max((len(n) for n in methods), default=0)
    rows = "\n".join(f"  {name:<{width}}  {spec.description}" for name, spec in methods.items())
    return f"usage: ns-train <method> [--data PATH] [options] [<dataset-format> [options]]\n\nmethods:\n{rows}\n\n`ns-train <method> --help` lists a method's options."


def parse_args(args: list[str]) -> TrainerConfig:
    """The method is the first argument; its preset's fields (and the dataset formats) follow."""
    methods = discover_methods()
    if not methods:
        raise ConfigError("no methods are registered (is recon installed? try `pip install -e .`)")
    if not args or args[0] in ("-h", "--help"):
        print(_usage(methods) + help_note())
        raise SystemExit(0 if args else 2)
    name = args[0]
    if name not in methods:
        close = difflib.get_close_matches(name, list(methods), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown method {name!r}{hint}; available: {', '.join(methods)}")
    parsers = discover_dataparsers()
    cls = _cli_class(parsers)
    values = {f.name: getattr(methods[name].config, f.name) for f in dataclasses.fields(TrainerConfig)}
    if parsers and not isinstance(values["dataparser"], tuple(parsers.values())):
        values["dataparser"] = next(iter(parsers.values()))()
    cfg = parse_cli(
        lambda: tyro.cli(
            cls,
            default=cls(**values),
            args=args[1:],
            prog=f"ns-train {name}",
            description=methods[name].description,
            config=(tyro.conf.OmitSubcommandPrefixes,),
        ),
        f"ns-train {name}",
    )
    return to_trainer_config(cfg)


VIEWER_GROUP = "recon.viewers"
"""Entry-point group of live viewers: ``name = "module:function"``, where ``function(trainer)`` runs
``trainer.train()`` with the viewer attached and returns when the viewer is done with the run."""
VIEWER = "viser"
"""The viewer ``--viewer`` starts (the ``viewer`` package registers it)."""


def load_viewer(name: str = VIEWER) -> Callable[[Trainer], None]:
    """The registered viewer ``name``, imported only now: recon never imports a viewer package
    itself (the import graph points down), and training without ``--viewer`` never imports viser."""
    found = {ep.name: ep for ep in entry_points(group=VIEWER_GROUP)}
    if name not in found:
        raise ConfigError(f"--viewer: no viewer {name!r} is registered in the entry-point group {VIEWER_GROUP} (is recon installed? try `pip install -e .`)")
    try:
        return found[name].load()
    except Exception as exc:  # e.g. viser missing: one line, not a traceback
        raise ConfigError(f"--viewer: the viewer {name!r} ({found[name].value}) failed to load: {type(exc).__name__}: {exc}") from None


def main(args: list[str]) -> None:
    config = parse_args(args)
    if config.machine.world_size > 1 and "LOCAL_RANK" not in os.environ:  # not yet under torchrun: start it
        distributed.launch(config.machine, args, module="recon.cli.train")
        return
    # data-parallel: the viewer runs on rank 0 only (it reads the model under the trainer's lock)
    train_with_viewer = load_viewer() if config.viewer and distributed.env_rank() == 0 else None
    trainer = Trainer(config)
    try:
        if train_with_viewer is None:
            trainer.train()
        else:
            train_with_viewer(trainer)
    finally:
        distributed.shutdown()


def entrypoint() -> None:
    """``recon-train``: recon's methods only."""
    run_main(lambda: main(sys.argv[1:]))


def is_nerfstudio_method(args: list[str]) -> bool:
    """Rule of ``ns-train``: the first argument is a method name that recon does not register."""
    return bool(args) and not args[0].startswith("-") and args[0] not in method_targets()


def ns_entrypoint() -> None:
    """``ns-train``: recon's methods here, any other method to nerfstudio's ns-train when it is installed."""
    dispatch("ns-train", entrypoint, is_nerfstudio_method)


if __name__ == "__main__":
    entrypoint()
