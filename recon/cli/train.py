"""``ns-train <method> [options] [<dataset-format> [options]]``: train a registered method.

The command line is generated from the method registry: each method is a sub-command whose flags
are the fields of its preset config (docstrings become the help), and the dataset format is an
optional sub-command after it (detected from the folder by default).
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from typing import Annotated, Any, Union

import tyro

from recon.cli import parse_cli, run_main
from recon.config import discover_dataparsers, discover_methods
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
        print(_usage(methods))
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


def main(args: list[str]) -> None:
    config = parse_args(args)
    trainer = Trainer(config)
    if not config.viewer:
        trainer.train()
        return
    # The viewer package (and viser) is imported only when asked for.
    from viewer.training import attach_viewer, finish

    viewer = attach_viewer(trainer)
    try:
        trainer.train()
        finish(viewer, config.viewer_quit_on_completion)
    finally:
        viewer.stop()


def entrypoint() -> None:
    run_main(lambda: main(sys.argv[1:]))


if __name__ == "__main__":
    entrypoint()
