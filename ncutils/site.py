"""Deprecated: moved to :mod:`ncutils.pipeline.site` in 0.2; this path goes in the next release."""

import warnings

warnings.warn("ncutils.site moved to ncutils.pipeline.site; the old path goes in the next release",
              DeprecationWarning, stacklevel=2)

from .pipeline.site import *  # noqa: E402, F403
from .pipeline.site import __all__  # noqa: E402, F401
