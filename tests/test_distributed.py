"""Real multi-process runs (2 CPU processes, gloo, launched by torch.distributed's elastic launcher)."""
import json
import subprocess
import sys

import pytest

from REC.distributed import DeviceSpec

from .conftest import ROOT, run_main, sasrec_args


def evaluate(run_dir, device):
    proc = subprocess.run([sys.executable, "-m", "REC.evaluate", str(run_dir), "--device", device],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{\n"):])


@pytest.mark.slow
def test_two_processes_give_the_one_process_metrics(seq_data, tmp_path):
    run = run_main(sasrec_args(seq_data, tmp_path, "--epochs=2"))
    run_dir = run.run_dir
    one = evaluate(run_dir, "cpu")
    two = evaluate(run_dir, "cpu:2")  # 301 users: ranks get 150 and 151
    assert one["test"] == run.result["test"]
    for split in ("valid", "test"):
        assert one[split].keys() == two[split].keys()
        for key in one[split]:
            assert abs(one[split][key] - two[split][key]) < 5e-8, (split, key, one[split][key], two[split][key])


@pytest.mark.slow
def test_two_process_training_run(seq_data, tmp_path):
    result = run_main(["--device", "cpu:2", *sasrec_args(seq_data, tmp_path, "--epochs=4",
                                                         "--optim_args.learning_rate=3e-3",
                                                         "--optim_args.weight_decay=0")]).result
    assert result["world_size"] == 2 and result["epochs_run"] == 4
    assert result["test"]["ndcg@10"] > 0.2  # it learns: popularity gets 0.148 on this log


def test_device_spec_parsing():
    assert DeviceSpec.parse("cpu") == DeviceSpec("cpu", 1)
    assert DeviceSpec.parse("cpu:2") == DeviceSpec("cpu", 2)
    spec = DeviceSpec.parse("0,1,2,3")
    assert spec.kind == "cuda" and spec.nproc == 4 and spec.backend == "nccl"
    for bad in ("cpu:0", "gpu", "0,0", "1,x"):
        with pytest.raises(ValueError, match="--device"):
            DeviceSpec.parse(bad)
