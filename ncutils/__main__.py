"""Command line: ``ncutils {run,figures,golden,sweep,site,twins} …`` (or ``python -m ncutils …``)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .pipeline import runner, yamlio


def _parse_value(name: str, text: str) -> object:
    """A ``-p NAME VALUE`` value: YAML with YAML 1.2 numbers (``1e-3``); a malformed one is an ``error:`` line."""
    import yaml

    try:
        return yamlio.load(text)
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"parameter {name}: cannot read {text!r} as a value ({first}); quote strings, "
                         "write lists as [1, 2]") from None


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("terminated (SIGTERM)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ncutils", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute one notebook with papermill")
    r.add_argument("notebook", help="stem (01_ufm_mse), number (01) or path")
    r.add_argument("--profile", help="profile name in profiles/<notebook>.yaml (e.g. paper, small)")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="parameter override; VALUE is parsed as YAML with YAML 1.2 numbers (1e-3, .5, true, [1, 2])")
    r.add_argument("-o", "--output", help="executed notebook path (default under outputs/)")
    r.add_argument("--allow-failed-checks", action="store_true",
                   help="exit 0 even when the run's theory checks fail (exploratory runs)")
    f = sub.add_parser("figures", help="run every notebook at paper settings (only what changed)")
    f.add_argument("--force", action="store_true", help="re-run even if nothing changed")
    f.add_argument("--only", nargs="*", help="notebook stems or numbers")
    f.add_argument("--profile", help="run only this profile (default: every profile but small)")
    f.add_argument("--jobs", type=int, default=1,
                   help="notebooks/profiles run at once, each in its own process with cores/jobs threads")
    g = sub.add_parser("golden", help="regenerate tests/golden from the small profile")
    g.add_argument("--only", nargs="*", help="notebook stems or numbers")
    s = sub.add_parser("sweep", help="run a sweep file (many parameter sets of one notebook) and aggregate it")
    s.add_argument("file", help="sweep YAML (see ncutils.pipeline.sweep and the README)")
    s.add_argument("--retry-failed", action="store_true", help="re-run runs that failed before")
    s.add_argument("--only", metavar="KEY",
                   help="run this one run (key or unambiguous key prefix) alone, whatever its state")
    s.add_argument("--status", action="store_true",
                   help="only report done/running/failed/pending and show the table (writes nothing)")
    s.add_argument("--workers", type=int, help="override the file's workers (local executor)")
    s.add_argument("--executor", choices=("local", "submitit-local", "slurm"), help="override the file's executor")
    w = sub.add_parser("site", help="render every executed notebook to an offline HTML gallery (site/)")
    w.add_argument("-o", "--output", default="site", help="output folder (default: site/)")
    t = sub.add_parser("twins", help="rewrite notebooks/scripts/*.py (jupytext twins) from the notebooks")
    t.add_argument("--check", action="store_true", help="only list the twins that differ (exit 1 if any)")
    args = ap.parse_args(argv)
    if args.cmd in ("run", "figures", "golden") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)  # SIGTERM ends a run like Ctrl-C: *.failed.ipynb and one line

    try:
        if args.cmd == "run":
            params = {k: _parse_value(k, v) for k, v in args.param}
            rec = runner.run_notebook(args.notebook, profile=args.profile, params=params, output=args.output)
            verdict = {True: "all checks passed", False: "SOME CHECKS FAILED", None: "no summary.json written"}
            print(f"{rec.notebook}: ran in {rec.wall_time_s:.1f} s -> {rec.output}; {verdict[rec.passed]}")
            return 1 if rec.passed is False and not args.allow_failed_checks else 0
        if args.cmd == "sweep":
            return _sweep(args)
        if args.cmd == "twins":
            from .pipeline import twins

            stale = twins.stale_twins() if args.check else twins.write_twins()
            for nb in stale:
                print(f"{'stale' if args.check else 'wrote'}: {twins.twin_path(nb)}")
            return 1 if args.check and stale else 0
        if args.cmd == "site":
            from .pipeline.site import build_site

            index = build_site(args.output)
            print(f"[ncutils] gallery: {index}")
            return 0
        if args.cmd == "figures":
            if args.jobs < 1:
                raise ValueError(f"parameter --jobs must be an integer in [1, inf), got {args.jobs}")
            recs = runner.figures(only=args.only, force=args.force, profile=args.profile, jobs=args.jobs)
        else:
            recs = runner.golden(only=args.only)
    except ValueError as err:  # bad input, refused before any kernel started (ParameterTypeError included)
        for line in str(err).splitlines() or [""]:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the output file system filled up or became read-only while a sweep ran
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: one line, the partial notebook kept
        import logging

        # the kernel died with the signal: its client's pending task would log a traceback at exit
        logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
        print(f"interrupted: {err or 'stopped before a notebook ran'}", file=sys.stderr)
        return 130
    failed = [r for r in recs if not r.ok]
    print(f"[ncutils] {len(recs) - len(failed)} ok ({sum(r.skipped for r in recs)} up to date), {len(failed)} failed")
    for r in failed:
        print(f"  could not run {r.notebook}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def _sweep(args: argparse.Namespace) -> int:
    from .pipeline import sweep as sw

    spec = sw.load_sweep(args.file, executor=args.executor)
    if args.workers is not None:
        if args.workers < 1:
            raise ValueError(f"parameter --workers must be an integer in [1, inf), got {args.workers}")
        spec.workers = args.workers
    if args.only is not None:
        spec.run(args.only)  # an empty or ambiguous key is refused before anything else
    if args.status:  # read-only: works on a read-only copy of the results
        table = sw.sweep_table(spec)
        counts = {k: int((table.status == k).sum()) for k in sw.STATES}
        print(f"[sweep] {len(spec.runs)} runs: " + ", ".join(f"{counts[k]} {k}" for k in sw.STATES))
        print(table.drop(columns=[c for c in table.columns if c.startswith("param.")]).to_string(max_colwidth=40))
        return 0
    table = sw.run_sweep(spec, retry_failed=args.retry_failed, only=args.only)
    return 1 if (table.status == "failed").any() else 0


if __name__ == "__main__":
    sys.exit(main())
