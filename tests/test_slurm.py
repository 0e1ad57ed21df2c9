"""Sweeps on a real one-node SLURM 22.05 cluster started by the tests (tests/slurm_cluster.py): a sweep through a
real job array, the compute nodes' GPUs, an sbatch refusal, ``scancel`` of a running task, a task killed with
SIGKILL, a queued task cancelled (all without accounting: ``sacct`` fails, ``squeue``/``scontrol`` tell), the sweep
process killed while its tasks run and restarted, and the same cancellation with accounting (slurmdbd + mariadb).

Needs Debian's ``slurmctld slurmd slurm-client munge`` (and ``slurmdbd mariadb-server`` for the accounting test),
which ``.ci/run`` installs, and root (the daemons run as root without systemd); otherwise the tests skip and say
why."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, missing_programs
from test_sweep import make_probe, spec, write

from ncutils.pipeline import sweep

pytest.importorskip("submitit")


def _why_not(accounting: bool = False) -> str | None:
    missing = missing_programs(accounting)
    if missing:
        return f"SLURM is not installed here: missing {', '.join(missing)} (.ci/run installs them)"
    if os.geteuid() != 0:
        return "the test cluster runs munged, slurmctld and slurmd as root"
    return None


@pytest.fixture(scope="session")
def cluster():
    """A running one-node cluster without accounting (4 CPUs, one fake GPU gres), ``SLURM_CONF`` exported."""
    why = _why_not()
    if why:
        pytest.skip(why)
    c = SlurmCluster(name="nc", accounting=False, cpus=4, gpus=1)
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "NCUTILS_SWEEP_HEARTBEAT_S")}
    try:
        c.start()
        c.activate()
        os.environ["NCUTILS_SWEEP_HEARTBEAT_S"] = "1"  # the tasks inherit it
        yield c
    finally:
        c.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    """test_sweep's tiny probe notebook (seconds per task)."""
    return make_probe(tmp_path_factory.mktemp("nb") / "probe.ipynb")


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(sweep, "POLL_S", 0.5)
    monkeypatch.setattr(sweep, "HEARTBEAT_S", 1.0)


def statuses(sw: sweep.Sweep) -> list[dict]:
    return [json.loads(r.status_file.read_text()) if r.status_file.exists() else {} for r in sw.runs]


def wait_for(what: str, ok, timeout: float = 90, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not ok():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep process ended ({proc.returncode}) before {what}: {proc.stderr.read()}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def start_sweep(path: Path) -> subprocess.Popen:
    env = {**os.environ, "NCUTILS_SWEEP_POLL_S": "0.5", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ncutils", "sweep", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_sweep_through_a_real_job_array(cluster, probe, tmp_path):
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01, 0.1]}\nexecutor: slurm\n"
                                       "slurm: {time_min: 1, cpus_per_task: 1, array_parallelism: 2}\n"))
    messages: list[str] = []
    table = sweep.run_sweep(path, say=messages.append)
    assert (table.status == "done").all() and len(table) == 3, table[["status", "error"]]
    assert table["objective"].notna().all()
    sw = sweep.load_sweep(path)
    st = statuses(sw)
    arrays = {s["array_job_id"] for s in st}
    assert len(arrays) == 1 and all(s["job_id"].startswith(f"{next(iter(arrays))}_") for s in st)
    assert all(s["heartbeat"] >= s["started"] for s in st)
    script = next((tmp_path / "out" / "submitit").rglob("*submission.sh")).read_text()
    assert "--signal=USR2@6" in script  # time_min: 1 leaves each run 54 s, not none (submitit's margin is 90 s)
    assert "%2" in script  # array_parallelism
    assert any("submitted 3 SLURM array task(s)" in m for m in messages)
    assert sweep.run_sweep(path, say=messages.append).status.eq("done").all()  # nothing left: nothing submitted


def test_device_cuda_is_checked_against_the_compute_nodes(cluster, tmp_path):
    body = "notebook: 01_ufm_mse\nprofile: small\nparams: {device: cuda}\noutput: OUT\nexecutor: slurm\n"
    sw = sweep.load_sweep(write(tmp_path, body + "slurm: {gpus_per_node: 1}\n"))
    sweep.preflight(sw)  # the node has one GPU (gres gpu:1), whatever this machine has
    sw = sweep.load_sweep(write(tmp_path, body + "slurm: {gpus_per_node: 2}\n"))
    with pytest.raises(ValueError, match=r"parameter slurm\.gpus_per_node must be at most the GPUs of a node of "
                                         r"the default partition \(sinfo gres: gpu:1\), got 2"):
        sweep.preflight(sw)


def test_an_sbatch_refusal_is_one_line_and_leaves_nothing_behind(cluster, probe, tmp_path):
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01]}\nexecutor: slurm\n"
                                       "slurm: {partition: nosuch, time_min: 2}\n"))
    with pytest.raises(ValueError) as err:
        sweep.run_sweep(path, say=lambda m: None)
    msg = str(err.value)
    assert "\n" not in msg and "sbatch refused the job array" in msg and "check slurm.partition = 'nosuch'" in msg
    assert "profile None" in msg  # the sweep's profile is named
    out = tmp_path / "out"
    assert not list(out.rglob("status.json"))  # the runs are as they were: pending
    assert not [p for p in (out / "submitit").rglob("*") if p.is_file()]  # no orphan pickles


def test_cancelled_killed_and_cancelled_while_queued_tasks_fail_without_accounting(cluster, probe, tmp_path):
    assert cluster.cmd("sacct", check=False) == "" or not cluster.accounting  # sacct: accounting disabled
    path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01, 0.1]}\nparams: {sleep_s: 60.0}\n"
                                       "executor: slurm\n"
                                       "slurm: {time_min: 5, cpus_per_task: 1, array_parallelism: 2}\n"))
    sw = sweep.load_sweep(path)
    proc = start_sweep(path)
    try:
        wait_for("two running tasks and one queued",
                 lambda: [s.get("state") for s in statuses(sw)].count("running") == 2
                 and all(s.get("job_id") for s in statuses(sw)), proc=proc)
        st = statuses(sw)
        queued = next(s for s in st if s["state"] == "submitted")
        running = [s for s in st if s["state"] == "running"]
        time.sleep(1.5)
        assert all(json.loads(r.status_file.read_text())["heartbeat"] > s["started"]
                   for r, s in zip(sw.runs, statuses(sw), strict=True) if s["state"] == "running")
        cluster.cmd("scancel", queued["job_id"])  # cancelled while queued
        cluster.cmd("scancel", running[0]["job_id"])  # cancelled while running
        os.kill(running[1]["pid"], signal.SIGKILL)  # killed (as by the OOM killer)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    final = {s["job_id"]: s for s in statuses(sw)}
    assert all(s["state"] == "failed" for s in final.values())
    assert "ended while queued" in final[queued["job_id"]]["error"]
    assert "CANCELLED" in final[queued["job_id"]]["error"] and "scontrol" in final[queued["job_id"]]["error"]
    cancelled = final[running[0]["job_id"]]["error"]  # the kernel dies of SIGTERM first, or the task
    assert "SLURM sent SIGTERM" in cancelled or ("ended while running" in cancelled and "CANCELLED" in cancelled)
    assert "ended while running" in final[running[1]["job_id"]]["error"]
    assert "Bypassing sacct error" not in err


def test_a_killed_sweep_restarts_waits_for_its_tasks_and_runs_nothing_twice(cluster, probe, tmp_path):
    counter = tmp_path / "executions.txt"
    path = write(tmp_path, spec(probe, f"grid: {{lambda_W: [0.001, 0.01, 0.1]}}\n"
                                       f"params: {{sleep_s: 4.0, counter: '{counter}'}}\nexecutor: slurm\n"
                                       "slurm: {time_min: 5, cpus_per_task: 1, array_parallelism: 2}\n"))
    sw = sweep.load_sweep(path)
    proc = start_sweep(path)
    try:
        wait_for("the array to be recorded and a task to run",
                 lambda: all(s.get("job_id") for s in statuses(sw))
                 and any(s.get("state") == "running" for s in statuses(sw)), proc=proc)
    finally:
        proc.kill()  # the sweep process only: the array keeps running on the cluster
        proc.communicate()
    assert any(s["state"] == "submitted" for s in statuses(sw))  # one task is still queued
    assert sweep.sweep_status(sw)["running"] == 3  # queued and running tasks count as running
    messages: list[str] = []
    table = sweep.run_sweep(path, say=messages.append)
    assert (table.status == "done").all(), table[["status", "error"]]
    assert not any("submitted" in m for m in messages)  # nothing submitted again
    assert any("waiting for 3 SLURM task(s)" in m for m in messages)
    assert sorted(counter.read_text().split()) == ["0.001", "0.01", "0.1"]  # each run executed once
    assert len({s["array_job_id"] for s in statuses(sw)}) == 1


def test_a_cancelled_task_with_accounting_is_told_by_sacct(probe, tmp_path, monkeypatch):
    why = _why_not(accounting=True)
    if why:
        pytest.skip(why)
    c = SlurmCluster(name="ncacct", accounting=True, cpus=2)
    try:
        c.start()
        monkeypatch.setenv("SLURM_CONF", str(c.conf))
        monkeypatch.setenv("NCUTILS_SWEEP_HEARTBEAT_S", "1")
        path = write(tmp_path, spec(probe, "grid: {lambda_W: [0.001, 0.01]}\nparams: {sleep_s: 60.0}\n"
                                           "executor: slurm\n"
                                           "slurm: {time_min: 5, cpus_per_task: 1, array_parallelism: 1}\n"))
        sw = sweep.load_sweep(path)
        proc = start_sweep(path)
        try:
            wait_for("a running and a queued task", lambda: sorted(s.get("state", "") for s in statuses(sw))
                     == ["running", "submitted"] and all(s.get("job_id") for s in statuses(sw)), proc=proc)
            queued = next(s for s in statuses(sw) if s["state"] == "submitted")
            running = next(s for s in statuses(sw) if s["state"] == "running")
            c.cmd("scancel", queued["job_id"])
            time.sleep(1.0)
            c.cmd("scancel", running["job_id"])
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 1, err
        final = {s["job_id"]: s["error"] for s in statuses(sw)}
        # sacct tells when slurmdbd has the job's record already; under load it can lag behind the poll, and then
        # scontrol (the controller's own record) tells the same: either way the death is noticed, with the state
        assert "ended while queued" in final[queued["job_id"]]
        assert re.search(r"\((sacct|scontrol): state CANCELLED", final[queued["job_id"]]), final[queued["job_id"]]
        assert "SLURM sent SIGTERM" in final[running["job_id"]] or "sacct: state CANCELLED" in final[running["job_id"]]
    finally:
        c.stop()
