"""The README's examples run as printed (and in the time they say), where running them here is feasible."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
import time

import pytest

from ncutils.paths import repo_root

README = (repo_root() / "README.md").read_text()


def _blocks(lang: str, after: str) -> list[str]:
    """The ``lang`` code blocks of the README section whose heading is ``after``."""
    start = README.index(after)
    end = README.find("\n## ", start + len(after))
    section = README[start:end if end > 0 else None]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def _python(code: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=str(repo_root()))


def test_using_the_library_runs_as_printed_in_about_the_time_it_says():
    (code,) = _blocks("python", "## Using the library")
    t0 = time.perf_counter()
    out = _python(code, timeout=600)
    assert out.returncode == 0, out.stderr
    said = sum(int(s) for s in re.findall(r"~(\d+) s", code))
    assert time.perf_counter() - t0 < 3 * said + 20, f"the README says ~{said} s"


def test_measure_in_your_own_training_runs_with_your_model_and_loaders():
    """The snippet is about the reader's own model and loaders: given a small CNN and MNIST-shaped loaders, it
    runs as printed."""
    (code,) = _blocks("python", "## Measure neural collapse in your own training")
    prelude = textwrap.dedent("""
        import torch
        from torch import nn
        torch.manual_seed(0)
        X, Y = torch.randn(120, 1, 8, 8), torch.arange(10).repeat_interleave(12)
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.layer2 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
                self.layer3 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
                self.layer4 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                            nn.Flatten())
                self.fc = nn.Linear(16, 10)
            def forward(self, x):
                return self.fc(self.layer4(self.layer3(self.layer2(x))))
        model = Net()
        train_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=32)
        test_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X[:40], Y[:40]), batch_size=32)
    """)
    out = _python(prelude + code, timeout=300)
    assert out.returncode == 0, out.stderr


def _shell_lines(after: str) -> list[str]:
    (block,) = _blocks("bash", after)
    return [line.split("  #")[0].strip() for line in block.strip().splitlines()]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_running_a_notebook_with_other_parameters_runs_as_printed(index, tmp_path):
    line = _shell_lines("## Running a notebook with other parameters")[index]
    argv = shlex.split(line)
    assert argv[0].startswith(".venv/bin/")
    exe = argv[0].removeprefix(".venv/bin/")
    cmd = [sys.executable, *argv[1:]] if exe == "python" else [os.path.join(os.path.dirname(sys.executable), exe),
                                                               *argv[1:]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(repo_root()))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    if exe == "python":
        last = out.stdout.strip().splitlines()[-1]
        assert re.search(r"ran in [\d.]+ s -> .*; (all checks passed|SOME CHECKS FAILED)$", last), last
        said = int(re.search(r"~(\d+) s", _blocks("bash", "## Running a notebook with other")[0].splitlines()[index])
                   .group(1))
        ran = float(re.search(r"ran in ([\d.]+) s", last).group(1))
        assert ran < 3 * said, f"the README says ~{said} s, the run took {ran:.0f} s"
    else:
        assert "lambda_W" in out.stdout
