"""Deprecated: moved to :mod:`ncutils.pipeline.runner` in 0.2; this path goes in the next release."""

import warnings

warnings.warn("ncutils.run moved to ncutils.pipeline.runner; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)

from .pipeline.runner import *  # noqa: E402, F403
from .pipeline.runner import __all__  # noqa: E402, F401
