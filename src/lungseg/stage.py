"""What every stage script shares: log lines on stderr, and a clean one-line error for bad input."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from lungseg.errors import UserError


def run(main: Callable[[], None], name: str) -> int:
    """Run a stage's main(); user errors print 'stage NAME: error: ...' and exit 1."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except UserError as err:
        print(f"stage {name}: error: {err}", file=sys.stderr)
        return 1
    return 0
