"""A run killed mid-training and resumed ends with the metrics of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from .conftest import ROOT, run_main, sasrec_args


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(seq_data, tmp_path):
    args = sasrec_args(seq_data, tmp_path / "runs", "--epochs=6", "--stopping_step=10")
    reference = run_main(args).result

    killed = tmp_path / "killed"  # the same run in an output_dir of its own: its one directory is the run's
    child = subprocess.Popen([sys.executable, str(ROOT / "main.py"),
                              *sasrec_args(seq_data, killed, "--epochs=6", "--stopping_step=10")], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 240
    for line in child.stdout:  # kill right after epoch 1's validation: the checkpoint write races the kill
        if "epoch 1 evaluating" in line or time.time() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL
    [run_dir] = [str(p) for p in killed.iterdir()]
    last = torch.load(os.path.join(run_dir, "last.pth"), weights_only=True)  # never a torn file
    assert last["trainer"]["epoch"] in (0, 1)
    assert not os.path.exists(os.path.join(run_dir, "result.json"))

    resumed = run_main(["--resume", run_dir]).result
    assert resumed["test"] == reference["test"]
    assert resumed["best_valid"] == reference["best_valid"] and resumed["best_epoch"] == reference["best_epoch"]
    assert [h["valid"] for h in resumed["history"]] == [h["valid"] for h in reference["history"]]
