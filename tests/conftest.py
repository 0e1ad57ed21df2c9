import os

os.environ.setdefault("NCUTILS_QUIET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
