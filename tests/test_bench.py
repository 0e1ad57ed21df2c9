"""bench/gd_step.py: the per-notebook GD FLOP counts (no timing) and a --quick smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import script_module

from ncutils.models import gd_rows

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gd_step.py"


@pytest.fixture(scope="module")
def bench():
    with script_module(SCRIPT, "bench_gd_step") as module:
        yield module


def test_gemm_count_matches_the_models_step_flops(bench):
    for label, _, model, S in bench.CASES:
        assert bench.step_flops(model, S) == model.step_flops(S), label
    # dH/dt of notebook 05 (N = 40, d = 10, K = 4): HᵀH, HᵀY, H W*ᵀ, (·) W*
    assert bench.step_flops(bench.FLOW[2]) == 2 * (10 * 40 * 10 + 10 * 40 * 4 + 40 * 10 * 4 + 40 * 4 * 10)


def test_notebook_01_paper_by_hand(bench):
    # K=4, n=50 (N=200), d=20: 6 N K d = 96 000 FLOP per run-step; MSE, MSE + bias, CE (1 run × 40 000 steps
    # each) and the threshold sweep (15 runs × 40 000 steps) = 18 × 40 000 run-steps.
    runs = bench.gd_runs("01_ufm_mse", "paper")
    assert [(r.S, r.steps, r.programs) for r in runs] == [(1, 40000, 1)] * 3 + [(15, 40000, 1)]
    assert sum(r.full_flops for r in runs) == pytest.approx(96_000 * 18 * 40_000)  # 6.912e10
    # run: the MSE runs without bias (1 + 15) on K + d = 24 class-reduced rows, 6·24·4·20 = 11 520 per run-step
    assert [gd_rows(r.model) for r in runs] == [24, 200, 200, 24]
    assert sum(r.flops for r in runs) == pytest.approx((11_520 * 16 + 96_000 * 2) * 40_000)


def test_profiles_change_the_count(bench):
    # 02, fig8: K=5, n=100 (N=500), d=20, EUFM dims (20, 20, 5): 6 N (400 + 100) = 1.5e6 FLOP per run-step;
    # 5 seeds + 4 init scales × 5 seeds, 60 000 steps each.
    fig8 = bench.gd_runs("02_linear_eufm", "fig8")
    assert sum(r.full_flops for r in fig8) == pytest.approx(1.5e6 * 25 * 60_000)
    assert sum(r.flops for r in fig8) == pytest.approx(1.5e6 * 25 / 500 * 25 * 60_000)  # on K + d = 25 rows
    # 06, paper: K=4, n=10, d=10: 6·40·4·10 = 9600 per run-step; 5 seeds × (2e6 + 2e5) steps.
    assert sum(r.flops for r in bench.gd_runs("06_layer_peeled", "paper")) == pytest.approx(9600 * 5 * 2.2e6)
    # 03 without its studies: only the two EUFMs
    p = bench.notebook_parameters("03_relu_eufm", "paper")
    full, short = bench.runs_03(p), bench.runs_03({**p, "studies": False})
    assert len(full) == 4 and [r.what for r in short] == ["ReLU EUFM", "linear EUFM"]
    # 08: the chunks cover every run of each model's grid
    p8 = bench.notebook_parameters("08_phase_diagrams", "paper")
    runs8 = bench.runs_08(p8)
    for kind in ("ufm", "eufm", "dufm"):
        assert sum(r.S * r.programs for r in runs8 if r.what.startswith(kind)) == 7 * 7 * 2
    assert bench.gd_runs("05_perturbation", "paper") == []


def test_work_table_and_markdown_without_timing(bench):
    work = bench.work_table(measure=False)
    keys = {(w["notebook"], w["profile"]) for w in work}
    assert {("02_linear_eufm", "fig8"), ("03_relu_eufm", "check"), ("08_phase_diagrams", "paper")} <= keys
    assert not any(p == "small" for _, p in keys)
    assert not any(nb.startswith(("07", "09")) for nb, _ in keys)
    rows = [{"model": "UFM MSE", "notebook": "01", "S": 1, "threads": 1, "flops": 96000.0, "eager_us": 2.0,
             "fused_us": 1.0, "floor_us": 0.5, "fused_gflops": 1.0, "reduced_us": 0.25, "reduced_rows": 24,
             "reduced_floor_us": 0.1, "reduced_threads": 1},
            {"model": "flow", "notebook": "05", "S": 1, "threads": 1, "flops": 17600.0, "eager_us": 9.0,
             "fused_us": None, "floor_us": 1.0, "solve_us": 3.0, "eager_gflops": 0.2}]
    load = {"model": "EUFM ReLU", "S": 10, "idle_1": 1e-4, "idle_2": 1e-4, "busy_1": 2e-4, "busy_2": 3e-4}
    meta = {"date": "today", "machine": "m", "torch": "t", "threads": 1, "load": "0.0"}
    md = bench.markdown(rows, load, meta, work)
    assert md.startswith(bench.SECTION) and "one implementation" in md and "### Total GD work" in md
    assert "| 01_ufm_mse | paper |" in md and "0.06912 | 0.01505 |" in md
    assert "| UFM MSE (01) | 1 | 1 / 1 | 0.10 | 2.0 | 1.0 | 0.5 | 2.00× | 2.00× | 1.0 | 0.2 (24) | 0.1 | 4.0× |" in md


def test_quick_run_writes_only_where_told(tmp_path):
    docs = {p: p.read_bytes() for p in (ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "bench_gd_step.json")}
    md = tmp_path / "bench.md"
    md.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out-json", str(tmp_path / "gd.json"),
                          "--out-md", str(md)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=os.environ | {"PYTHONPATH": path})
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "gd.json").read_text())
    assert data["meta"]["quick"] and {"rows", "loaded", "work"} <= data.keys()
    assert any(r["notebook"] == "05" and r["fused_us"] is None for r in data["rows"])
    reduced = {r["model"]: r["reduced_rows"] for r in data["rows"] if r.get("reduced_us")}
    assert reduced == {"UFM MSE": 24, "EUFM linear": 24, "UFM MSE grid": 24, "EUFM linear grid": 24,
                       "DUFM L=3 linear grid": 24}
    assert all(w["floor_s_1"] > 0 for w in data["work"] if w["flops"])
    text = md.read_text()
    assert "## Other\n\nkept" in text and bench_section(text).count("\n| ") > 20
    for p, before in docs.items():
        assert p.read_bytes() == before, f"--quick changed {p}"


def bench_section(text: str) -> str:
    return text[text.index("## GD step"):]


def test_notebook_04_counts_the_appendix_setting(bench):
    # K = 3, 4, 5 at L = 4, n = 5 (N = 5K), width 30: 6 N (3·30·30 + 30 K) FLOP per run-step, 10 seeds × 150 000 steps
    runs = [r for r in bench.gd_runs("04_deep_ufm", "paper") if r.what.startswith("appendix")]
    assert [(r.what, r.S, r.steps) for r in runs] == [(f"appendix K={K}", 10, 150_000) for K in (3, 4, 5)]
    per_step = sum(6 * 5 * K * (3 * 900 + 30 * K) for K in (3, 4, 5))  # 251 100 + 338 400 + 427 500
    assert sum(r.flops for r in runs) == pytest.approx(per_step * 10 * 150_000)
