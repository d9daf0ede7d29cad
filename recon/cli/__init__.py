"""Console scripts. Each catches user mistakes (:class:`recon.errors.ReconError`) and prints them as
one line with a non-zero exit; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import Callable, NoReturn, TypeVar

from recon.errors import ReconError

T = TypeVar("T")


def fail(message: str, code: int = 2) -> NoReturn:
    if os.environ.get("RANK", "0") == "0":  # data-parallel processes make the same mistake: say it once
        print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_main(main: Callable[[], object]) -> None:
    """Run a CLI body: ReconError -> one line and exit 2; Ctrl-C -> exit 130."""
    try:
        main()
    except ReconError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def parse_cli(parse: Callable[[], T], prog: str) -> T:
    """Run a tyro parse; its boxed error becomes one line ``error: ... (see `prog --help`)``.

    Help text (exit 0) is shown unchanged.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parse()
    except SystemExit as exc:
        if not exc.code:
            sys.stderr.write(captured.getvalue())
            raise
        message = []
        for line in captured.getvalue().splitlines():
            text = line.strip().strip("│╭╮╰╯").strip()
            if text.startswith("─") or text.startswith("╭") or text.startswith("╰"):
                if message:
                    break
                continue
            if text:
                message.append(text)
        fail(f"{' '.join(' '.join(message).split()) or 'invalid arguments'} (see `{prog} --help`)")
