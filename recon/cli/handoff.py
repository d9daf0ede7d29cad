"""Living beside nerfstudio: recon's ``ns-*`` commands hand nerfstudio's work to nerfstudio.

recon and nerfstudio both install console scripts named ``ns-train``, ``ns-eval``, ``ns-export``,
``ns-render``, ``ns-viewer`` and ``ns-process-data``; pip lets whichever is installed last own the
file. recon's ``ns-*`` scripts are therefore dispatchers: they keep what is recon's (a registered
recon method, a run folder written by recon) and pass anything else, with the command line
unchanged, to nerfstudio's own console function when nerfstudio is installed:

- ``ns-train <method>``: a method recon does not register goes to nerfstudio (recon keeps the
  names both define: ``vanilla-nerf``, ``instant-ngp``, ``neus``).
- ``ns-eval``/``ns-export``/``ns-render``/``ns-viewer --load-config X``: a config.yml written by
  nerfstudio (a pickled-object YAML, ``!!python/object:nerfstudio...``) goes to nerfstudio; recon's
  own config.yml is a plain mapping.
- ``ns-process-data <kind>``: a kind recon does not offer (polycam, record3d, ...) goes to nerfstudio.

The ``recon-*`` commands (``recon-train``, ``recon-eval``, ...) never hand over. nerfstudio is found
through its distribution metadata (its ``console_scripts`` entry points), never imported until a
command is handed to it.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution
from pathlib import Path
from typing import Callable, Sequence

from recon.cli import fail

NERFSTUDIO = "nerfstudio"
"""The distribution whose console scripts take over what recon does not handle."""
_NERFSTUDIO_TAG = re.compile(rb"!!python/object(?:/new)?:nerfstudio\.")


def nerfstudio_version() -> str | None:
    """The installed nerfstudio's version, or None; imports nothing."""
    try:
        return distribution(NERFSTUDIO).version
    except PackageNotFoundError:
        return None


def nerfstudio_entry_point(command: str) -> EntryPoint | None:
    """nerfstudio's console-script entry point named ``command`` (e.g. ``nerfstudio.scripts.train:entrypoint``)."""
    try:
        dist = distribution(NERFSTUDIO)
    except PackageNotFoundError:
        return None
    for ep in dist.entry_points:
        if ep.group == "console_scripts" and ep.name == command:
            return ep
    return None


def is_nerfstudio_config(path: str | Path) -> bool:
    """Whether ``path`` is a config.yml written by nerfstudio (its YAML is a tagged Python object)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return _NERFSTUDIO_TAG.search(head) is not None


def option_value(argv: Sequence[str], option: str) -> str | None:
    """The value of ``--option X`` or ``--option=X`` in ``argv`` (the last one wins), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(option + "="):
            value = arg[len(option) + 1:]
    return value


def config_is_nerfstudios(argv: Sequence[str]) -> bool:
    """Rule of ns-eval/-export/-render/-viewer: ``--load-config`` names a nerfstudio run."""
    path = option_value(argv, "--load-config")
    return path is not None and is_nerfstudio_config(path)


def hand_over(command: str, argv: Sequence[str]) -> None:
    """Run nerfstudio's ``command`` with ``argv``, in this process, and exit with its status."""
    ep = nerfstudio_entry_point(command)
    if ep is None:
        fail(f"{command}: nerfstudio {nerfstudio_version()} has no {command} command")
    try:
        function = ep.load()
    except Exception as exc:  # a broken nerfstudio install: one line, not recon's traceback
        fail(f"{command}: nerfstudio's {ep.value} failed to load ({type(exc).__name__}: {exc})")
    sys.argv = [command, *argv]
    result = function()
    raise SystemExit(result if isinstance(result, int) else 0)


def dispatch(command: str, recon_entrypoint: Callable[[], None], belongs_to_nerfstudio: Callable[[list[str]], bool],
             argv: Sequence[str] | None = None) -> None:
    """The ``ns-*`` console function: nerfstudio's work to nerfstudio when it is installed, the rest to recon.

    A nerfstudio run's config.yml without nerfstudio installed is a one-line error (recon cannot
    read it); an unknown method without nerfstudio is left to recon, which says so in one line.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if belongs_to_nerfstudio(args):
        if nerfstudio_version() is not None:
            hand_over(command, args)
            return
        if config_is_nerfstudios(args):
            fail(f"{option_value(args, '--load-config')}: a nerfstudio run's config; nerfstudio is not installed "
                 f"here (pip install nerfstudio), and recon reads only its own runs")
    recon_entrypoint()


def help_note() -> str:
    """The line ``ns-train --help`` adds about nerfstudio (empty when it is absent)."""
    version = nerfstudio_version()
    if version is None:
        return ""
    return (f"\n\nnerfstudio {version} is installed too: any other method (nerfacto, splatfacto, ...) is handed to "
            f"nerfstudio's ns-train with the same arguments.\nrecon keeps the names both define; "
            f"`python -m nerfstudio.scripts.train <method>` runs nerfstudio's own.")
