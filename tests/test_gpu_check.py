"""bench/gpu_check.py: a --quick CPU run writes one JSON and one Markdown report in which every part either ran
or says why not; the budget logic skips parts with a reason; no data means "skipped: no data"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import script_module

from ncutils.data import write_fake_mnist

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
PART_KEYS = {"title", "status", "reason", "budget_s", "wall_s", "results"}


@pytest.fixture(scope="module")
def gpu_check():
    with script_module(SCRIPT, "bench_gpu_check") as module:
        yield module


def _check_parts(report: dict, names: tuple[str, ...]) -> None:
    assert list(report["parts"]) == list(names)
    for name, part in report["parts"].items():
        assert set(part) == PART_KEYS, name
        assert part["status"] in ("ran", "skipped", "failed"), (name, part["status"])
        if part["status"] == "ran":
            assert part["reason"] is None and isinstance(part["results"], dict), name
        else:
            assert isinstance(part["reason"], str) and part["reason"].strip(), name


def test_quick_cpu_run_writes_one_report_where_every_part_ran_or_says_why(tmp_path):
    write_fake_mnist(tmp_path / "data", per_class=8, test_per_class=3)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out),
                           "--data-root", str(tmp_path / "data")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=170)
    wall = time.perf_counter() - t0
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]  # no temporary files left
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "ncutils.gpu_check/1" and report["options"]["quick"] is True
    assert report["environment"]["device"] == "cpu" and report["used_s"] <= report["options"]["budget_s"] + 15
    assert wall < 120, f"--quick took {wall:.0f} s"
    _check_parts(report, ("unit_tests", "batched_ufm", "resnet_epoch", "measure_overhead", "tb22_fig5_mnist"))
    parts = report["parts"]
    failed = {name: p["reason"] for name, p in parts.items() if p["status"] == "failed"}
    # exit status 1 only for a part stopped at its budget (a very busy machine), never for an error
    assert all(why.startswith("over budget") for why in failed.values()), failed
    assert proc.returncode == (1 if failed else 0), proc.stdout[-3000:]
    if parts["unit_tests"]["status"] == "ran":
        r = parts["unit_tests"]["results"]
        assert r["ok"] and r["failed"] == 0 and r["tests"] >= 1 and r["passed"] + r["skipped"] == r["tests"]
    if parts["batched_ufm"]["status"] == "ran":
        r = parts["batched_ufm"]["results"]
        assert r["target_applies"] is False and r["target_met"] is None  # the 1000× target is for a GPU
        assert all(row["max_rel_diff_vs_loop"] < 1e-9 and row["ratio"] > 0 for row in r["rows"])
    if parts["resnet_epoch"]["status"] == "ran":
        r = parts["resnet_epoch"]["results"]
        assert {"dataloader_fp32", "device_bf16"} <= set(r["variants"])
        assert r["variants"]["device_bf16"]["precision"] == "bf16" and r["variants"]["device_bf16"]["channels_last"]
        assert "device_bf16_compiled" in r["skipped_variants"]  # --quick: with its reason
        assert r["bf16_floor_epoch_s"] > 0 and r["bf16_matmul_flop_per_s"] > 0
    if parts["measure_overhead"]["status"] == "ran":
        assert parts["measure_overhead"]["results"]["measure_over_epoch"] > 0
    if parts["tb22_fig5_mnist"]["status"] == "ran":
        r = parts["tb22_fig5_mnist"]["results"]
        assert r["per_class"] == 6 and 1 <= r["epochs"] <= 3 and r["final"]["layer4"]["nc1"] >= 0
    md = (out / "report.md").read_text()
    assert md.startswith("# GPU check") and all(p["title"] in md for p in parts.values())


def test_short_budget_skips_every_part_with_a_reason(gpu_check, tmp_path):
    report = gpu_check.run_check("cpu", True, 0.5, tmp_path, str(tmp_path / "nothing"))
    _check_parts(report, gpu_check.PARTS)
    assert all(p["status"] == "skipped" and p["reason"].startswith("budget:") for p in report["parts"].values())
    assert json.loads((tmp_path / "report.json").read_text())["parts"] == json.loads(json.dumps(report["parts"]))
    assert "| skipped |" in (tmp_path / "report.md").read_text()


def test_no_mnist_files_is_skipped_no_data(gpu_check, tmp_path):
    import torch

    ctx = gpu_check.Context(device=torch.device("cpu"), sizes=gpu_check.QUICK, data_root=str(tmp_path), env={},
                            report={"parts": {}}, shared={})
    with pytest.raises(gpu_check.Skip, match=r"^no data: mnist not found: .* \(this check never downloads\)$"):
        gpu_check.part_tb22_fig5(ctx, 10.0)
    with pytest.raises(gpu_check.Skip, match=r"^needs the trained bf16 model of part resnet_epoch"):
        gpu_check.part_measure_overhead(_with_resnet_reason(ctx), 10.0)


def _with_resnet_reason(ctx):
    ctx.report["parts"]["resnet_epoch"] = {"reason": "budget: 0 s left"}
    return ctx


def test_junit_counts(gpu_check, tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="a" name="ok"/><testcase classname="a" name="bad">'
                   '<failure message="x"/></testcase><testcase classname="a" name="s"><skipped message="why"/>'
                   '</testcase><testcase classname="b" name="err"><error message="e"/></testcase></testsuite>'
                   '</testsuites>')
    c = gpu_check.junit_counts(xml)
    assert (c["tests"], c["passed"], c["failed"], c["skipped"]) == (4, 1, 2, 1)
    assert c["failed_tests"] == ["a::bad", "b::err"] and c["skip_reasons"] == ["a::s: why"]


def test_watchdogs_nest(gpu_check):
    with pytest.raises(gpu_check.OverBudget, match="outer"):
        with gpu_check.watchdog(0.6, "outer"):
            with pytest.raises(gpu_check.OverBudget, match="inner"), gpu_check.watchdog(0.1, "inner"):
                time.sleep(2)
            time.sleep(2)  # the outer deadline still holds after the inner one fired
    with gpu_check.watchdog(5, "outer"), gpu_check.watchdog(0.2, "inner"):
        pass
    time.sleep(0.3)  # nothing left armed


def test_fig5_stopped_at_its_budget_reports_the_last_checkpoint(gpu_check, tmp_path, monkeypatch):
    import torch

    import ncutils.train

    write_fake_mnist(tmp_path, per_class=8, test_per_class=3)
    real = ncutils.train.train_resnet

    def stopped(*args, **kwargs):  # the run finishes, then "the budget" stops it: the checkpoint holds its history
        real(*args, **kwargs)
        raise gpu_check.OverBudget("stopped after the part's budget of 1 s")

    monkeypatch.setattr(ncutils.train, "train_resnet", stopped)
    report = {"parts": {"resnet_epoch": {"results": None}}}
    ctx = gpu_check.Context(device=torch.device("cpu"), sizes=gpu_check.QUICK, data_root=str(tmp_path), env={},
                            report=report, shared={}, part_start=time.perf_counter())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_check does with --quick on a CPU
    try:  # a generous budget: the (real) watchdog must not fire; the fake one does, after the run
        with pytest.raises(gpu_check.PartFailed, match=r"^over budget: .*; results of the last checkpoint") as err:
            gpu_check.part_tb22_fig5(ctx, 600.0)
    finally:
        torch.set_num_threads(threads)
    r = err.value.results
    assert r["final_epoch"] >= 1 and r["per_class"] == 6 and "nc1" in r["final"]["layer4"]
    part = {"title": "t", "status": "failed", "reason": str(err.value), "budget_s": 1.0, "wall_s": 1.0, "results": r}
    md = gpu_check.markdown({"environment": {"device_name": "x", "device": "cpu", "host": "h", "torch": "t",
                                             "python": "p"}, "options": {"quick": True, "budget_s": 1.0},
                             "created": "now", "used_s": 1.0,
                             "parts": {n: part | {"status": "skipped", "results": None} for n in gpu_check.PARTS}
                             | {"tb22_fig5_mnist": part}})
    assert "results of the last checkpoint" in md and "| layer4 |" in md
