"""Deprecated: moved to :mod:`ncutils.pipeline.sweep` in 0.2; this path goes in the next release."""

import warnings

warnings.warn("ncutils.sweep moved to ncutils.pipeline.sweep; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)

from .pipeline.sweep import *  # noqa: E402, F403
from .pipeline.sweep import __all__  # noqa: E402, F401
