"""Real multi-process runs (2 CPU processes, gloo, launched by torch.distributed's elastic launcher)."""
import json
import subprocess
import sys

import pytest
import torch

from REC.distributed import DeviceSpec

from .conftest import ROOT, run_main, sasrec_args


def evaluate(run_dir, device):
    proc = subprocess.run([sys.executable, "-m", "REC", "evaluate", str(run_dir), "--device", device],
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
    # the training examples were built once, by rank 0, and mapped by both ranks from the prepared-data folder
    assert list((seq_data / ".pixelrec_cache").glob("chunks-*.npy"))


def test_device_spec_parsing():
    assert DeviceSpec.parse("cpu") == DeviceSpec("cpu", 1)
    assert DeviceSpec.parse("cpu:2") == DeviceSpec("cpu", 2)
    spec = DeviceSpec.parse("0,1,2,3")
    assert spec.kind == "cuda" and spec.nproc == 4 and spec.backend == "nccl"
    for bad in ("cpu:0", "gpu", "0,0", "1,x", "cpu:\u00b2", "0,00", "\u0661"):  # '²' and Arabic-Indic 1 pass isdigit
        with pytest.raises(ValueError, match="--device"):
            DeviceSpec.parse(bad)


def test_one_process_commands_take_the_launchers_device_grammar(monkeypatch):
    """predict and features run in one process: the launcher's grammar with one device (cuda and cuda:N read as GPU
    0 and N); more than one process, or a GPU that is not there, is one clear DeviceError."""
    from REC.distributed import DeviceError, one_device
    assert one_device("cpu") == one_device(" CPU ") == torch.device("cpu")
    for text, why in (("cpu:2", "this command runs in one process"), ("0,1", "this command runs in one process"),
                      ("tpu", "expected cpu, cpu:<n>, or distinct GPU ids")):
        with pytest.raises(DeviceError, match=why):
            one_device(text)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert one_device("1") == one_device("cuda:1") == torch.device("cuda", 1)
    assert one_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match=r"CUDA shows only 2 GPU\(s\) and this needs 3"):
        one_device("2")
    # the launcher's check is the same one, after it has restricted the job to the chosen GPUs
    from REC.distributed import DeviceSpec, select_gpus
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")  # what select_gpus sets is undone with it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"--device 0,2: CUDA shows only 1 GPU\(s\), "
                                          r"CUDA_VISIBLE_DEVICES='4,7' and this needs 2"):
        select_gpus(DeviceSpec.parse("0,2"))


def what_a_rank_sees(name):
    """A launched process's view: the variable, its folder, its rank, whether it was forked from a server that
    had imported torch (its parent is not the launcher) and whether torch was imported before this ran."""
    import os
    return os.environ.get(name), os.getcwd(), os.environ["RANK"], os.getppid()


def test_cpu_ranks_start_from_a_fork_server_with_the_launchers_environment_now(tmp_path, monkeypatch):
    """CPU ranks fork from a server that imported torch once (their memory is shared; bench_scale measures it), yet
    each launch's ranks see that launch's environment and folder, as spawned ranks would: a second launch from the
    same process must not inherit the first one's (a stale CUDA_VISIBLE_DEVICES or data_path would be silent)."""
    import os
    from types import SimpleNamespace
    from REC.app.launch import launch, start_method
    args = SimpleNamespace(spec=DeviceSpec.parse("cpu:2"), nnodes=1, master_port=None, master_addr=None,
                           node_rank=0)
    assert start_method(args.spec) == "forkserver" and start_method(DeviceSpec.parse("0,1")) == "spawn"
    seen = []
    for mark in ("first", "second"):
        folder = tmp_path / mark
        folder.mkdir()
        monkeypatch.chdir(folder)
        monkeypatch.setenv("PIXELREC_TEST_MARK", mark)
        seen.append(launch(what_a_rank_sees, ("PIXELREC_TEST_MARK",), args))
    for mark, (value, cwd, rank, parent) in zip(("first", "second"), seen):
        assert (value, cwd, rank) == (mark, str(tmp_path / mark), "0")
        assert parent != os.getpid()  # forked by the server, not started by this process
    assert seen[0][3] != seen[1][3]  # each launch had its own server
