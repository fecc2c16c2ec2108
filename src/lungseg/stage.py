"""What every stage script shares: a clean one-line error for bad input instead of a traceback."""
from __future__ import annotations

import sys
from typing import Callable

from lungseg.config import ConfigError
from lungseg.data import DataError
from lungseg.io import ImageReadError
from lungseg.model import WeightsNotFoundError
from lungseg.tracking import TrackingUnavailableError

USER_ERRORS = (ConfigError, DataError, ImageReadError, WeightsNotFoundError, TrackingUnavailableError)


def run(main: Callable[[], None], name: str) -> int:
    """Run a stage's main(); user errors print 'stage NAME: error: ...' and exit 1."""
    try:
        main()
    except USER_ERRORS as err:
        print(f"stage {name}: error: {err}", file=sys.stderr)
        return 1
    return 0
