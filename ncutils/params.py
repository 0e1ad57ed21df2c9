"""Deprecated: moved to :mod:`ncutils.pipeline.params` in 0.2; this path goes in the next release."""

import warnings

warnings.warn("ncutils.params moved to ncutils.pipeline.params; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)

from .pipeline.params import *  # noqa: E402, F403
from .pipeline.params import __all__  # noqa: E402, F401
