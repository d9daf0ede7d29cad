"""Console scripts. Each catches user mistakes (:class:`recon.errors.ReconError`) and prints them as
one line with a non-zero exit; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

from recon.errors import ReconError


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_main(main: Callable[[], object]) -> None:
    """Run a CLI body: ReconError -> one line and exit 2; Ctrl-C -> exit 130."""
    try:
        main()
    except ReconError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
