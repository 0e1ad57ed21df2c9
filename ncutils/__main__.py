"""Command line: ``python -m ncutils {run,figures,golden} …``."""

from __future__ import annotations

import argparse
import sys

import yaml

from . import run as runner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ncutils", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute one notebook with papermill")
    r.add_argument("notebook", help="stem (01_ufm_mse), number (01) or path")
    r.add_argument("--profile", help="profile name in profiles/<notebook>.yaml (e.g. paper, small)")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="parameter override; VALUE is parsed as YAML (1e-3, true, [1, 2])")
    r.add_argument("-o", "--output", help="executed notebook path (default under outputs/)")
    f = sub.add_parser("figures", help="run every notebook at paper settings (only what changed)")
    f.add_argument("--force", action="store_true", help="re-run even if nothing changed")
    f.add_argument("--only", nargs="*", help="notebook stems or numbers")
    f.add_argument("--profile", help="run only this profile (default: paper and every paper_* profile)")
    g = sub.add_parser("golden", help="regenerate tests/golden from the small profile")
    g.add_argument("--only", nargs="*", help="notebook stems or numbers")
    args = ap.parse_args(argv)

    try:
        if args.cmd == "run":
            params = {k: yaml.safe_load(v) for k, v in args.param}
            rec = runner.run_notebook(args.notebook, profile=args.profile, params=params, output=args.output)
            print(f"{rec.notebook}: ok in {rec.wall_time_s:.1f} s -> {rec.output}")
            return 0
        if args.cmd == "figures":
            recs = runner.figures(only=args.only, force=args.force, profile=args.profile)
        else:
            recs = runner.golden(only=args.only)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [r for r in recs if not r.ok]
    print(f"[ncutils] {len(recs) - len(failed)} ok ({sum(r.skipped for r in recs)} up to date), {len(failed)} failed")
    for r in failed:
        print(f"  could not run {r.notebook}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
