"""The launcher says what is wrong before anything runs or is written (exit status 2, one line), and the
processes of one job stop together with one message instead of some waiting for the others."""
import json
import os
import shutil
import time
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from REC.distributed import DeviceSpec, compose_visible_devices
from REC.app.evaluate import main as evaluate_main
from REC.app.launch import launch_config, main, parse_args
from REC.trainer.checkpoint import CheckpointError, load

from .conftest import call_main, run_main, sasrec_args


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err[-3000:]
    return lines[-1]


def test_device_ids_count_within_the_gpus_the_job_was_given():
    assert compose_visible_devices((0, 1), None) == "0,1"
    assert compose_visible_devices((2,), None) == "2"
    assert compose_visible_devices((0, 1), "3,5,7") == "3,5"
    assert compose_visible_devices((2, 0), "3, 5, 7") == "7,3"
    assert compose_visible_devices((1,), "GPU-aa,GPU-bb") == "GPU-bb"  # UUIDs, as Kubernetes sets them
    with pytest.raises(ValueError, match=r"--device 0,3: GPU 3 does not exist for this job, which may use 3 GPU\(s\) "
                                         r"\(CUDA_VISIBLE_DEVICES='3,5,7'\)"):
        compose_visible_devices((0, 3), "3,5,7")
    with pytest.raises(ValueError, match="may use 0 GPU"):
        compose_visible_devices((0,), "")


def test_multi_node_arguments(capsys):
    base = ["--config_file", "IDNet/sasrec.yaml"]
    for argv, message in ((["--nnodes", "2", "--master_port", "29500"], "needs --master_addr and --master_port"),
                          (["--nnodes", "2", "--master_addr", "h"], "needs --master_addr and --master_port"),
                          (["--nnodes", "2", "--node_rank", "2", "--master_addr", "h", "--master_port", "1"],
                           "--node_rank 2: expected 0 to 1"),
                          (["--node_rank", "-1"], "--node_rank -1: expected 0 to 0"),
                          (["--nnodes", "0"], "--nnodes 0: expected the number of machines")):
        with pytest.raises(SystemExit) as exc:
            parse_args(base + argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    # every node derives the same rendezvous run id (the static rendezvous prefixes every store key with it)
    configs = [launch_config(Namespace(nnodes=2, node_rank=r, master_addr="10.0.0.1", master_port=29500,
                                         spec=DeviceSpec.parse("cpu")), 1)
               for r in (0, 1)]
    assert configs[0].run_id == configs[1].run_id
    assert [c.rdzv_configs["rank"] for c in configs] == [0, 1]
    assert configs[0].rdzv_endpoint == "10.0.0.1:29500" and configs[0].rdzv_backend == "static"


def test_checkpoint_load_names_an_unreadable_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(100)}, "world_size": 2}, good)
    for name, data in (("cut.pth", good.read_bytes()[:300]), ("empty.pth", b""), ("text.pth", b"not a checkpoint")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{tmp_path / name} is not a readable checkpoint"):
            load(tmp_path / name)
    assert load(good)["world_size"] == 2
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.pth")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_device_errors_before_anything_is_written(seq_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # the launcher sets it; restored after the test
    status, _, err = call_main(main, ["--device", "0", *sasrec_args(seq_data, out)], capsys)
    assert status == 2 and not out.exists()
    assert error_line(err).startswith("error: --device 0: no CUDA GPU is usable here")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")  # what a scheduler sets: --device counts within it
    status, _, err = call_main(main, ["--device", "0,3", *sasrec_args(seq_data, out)], capsys)
    assert status == 2 and not out.exists()
    assert error_line(err) == ("error: --device 0,3: GPU 3 does not exist for this job, which may use 3 GPU(s) "
                               "(CUDA_VISIBLE_DEVICES='3,5,7'); --device counts them from 0")


def test_unusable_output_dir_is_a_clear_error(seq_data, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    status, _, err = call_main(main, sasrec_args(seq_data, tmp_path / "a_file" / "runs"), capsys)
    assert status == 2
    assert error_line(err) == (f"error: command line: key 'output_dir' = '{tmp_path / 'a_file' / 'runs'}': cannot "
                               f"create a run directory there (Not a directory); choose a writable folder")
    if os.geteuid() != 0:  # root writes into read-only folders
        (tmp_path / "ro").mkdir(mode=0o555)
        status, _, err = call_main(main, sasrec_args(seq_data, tmp_path / "ro"), capsys)
        assert status == 2 and "cannot create a run directory there (Permission denied)" in err
        assert not any((tmp_path / "ro").iterdir())


def test_checkpoint_errors_and_world_size_on_resume(seq_data, tmp_path, capsys):
    run = run_main(sasrec_args(seq_data, tmp_path / "runs", "--epochs=1")).run_dir
    last = torch.load(run / "last.pth", weights_only=True)
    assert last["world_size"] == 1 and not {"rng_cpu", "rng_cuda"} & set(last)  # no RNG state: fit() reseeds

    before = sorted(p.name for p in run.iterdir())
    status, _, err = call_main(main, ["--resume", run, "--device", "cpu:2"], capsys)  # another world size
    assert status == 2 and error_line(err) == (
        f"error: --resume {run}: its last.pth was written by 1 process(es) and this launch starts 2; data sharding "
        f"and per-rank seeds depend on that number, so resume it on 1 process(es) in all (e.g. --device cpu); "
        f"python -m REC evaluate re-evaluates its checkpoints on any layout")
    assert sorted(p.name for p in run.iterdir()) == before

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    for name in ("last.pth", "best.pth"):
        (broken / name).write_bytes((run / name).read_bytes()[:1000])  # a copy cut short
    status, _, err = call_main(main, ["--resume", broken], capsys)
    assert status == 2
    assert error_line(err).startswith(f"error: {broken / 'last.pth'} is not a readable checkpoint (truncated or "
                                      f"corrupt: RuntimeError: PytorchStreamReader failed reading zip archive")
    status, _, err = call_main(evaluate_main, [broken], capsys)
    assert status == 2
    assert error_line(err).startswith(f"error: {broken / 'best.pth'} is not a readable checkpoint")
    assert not (broken / "result.json").exists() or (broken / "result.json").read_text() == \
        (run / "result.json").read_text()


# ---------------------------------------------------------------------------------- collectives, 2 gloo processes
def _two_ranks(rank: int, store: str, run_dir: str, out: str) -> None:
    from REC import distributed as dist
    from REC.app.train import _agree_on_run_dir
    from REC.trainer.trainer import NonFiniteLossError, Trainer

    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    seen = {}
    try:
        trainer = SimpleNamespace(device=torch.device("cpu"), last_path=Path("run/last.pth"), state={"epoch": 2})
        for case, total in (("finite", 1.0), ("nan_on_rank_1", float("nan") if rank == 1 else 2.0)):
            try:
                Trainer.check_finite(trainer, torch.tensor(total), 3, 50)
                seen[case] = "ok"
            except NonFiniteLossError as exc:
                seen[case] = str(exc)
        seen["shared"] = str(_agree_on_run_dir(run_dir if rank == 0 else None))
        try:
            _agree_on_run_dir(run_dir if rank == 0 else run_dir + "-not-mounted")  # a node without the files
            seen["not_shared"] = "ok"
        except dist.DisagreementError as exc:
            seen["not_shared"] = str(exc)
    finally:
        torch.distributed.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps(seen))


@pytest.mark.slow
def test_every_rank_stops_together_with_one_message(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: SASRec\n")
    ctx = mp.start_processes(_two_ranks, args=(str(tmp_path / "store"), str(run), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.time() + 60  # a rank left waiting in a collective would hang: fail instead
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank is still waiting in a collective")
    seen = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] == {**seen[1], "shared": seen[0]["shared"]}  # the same outcome and message on both ranks
    assert seen[0]["finite"] == "ok"
    assert seen[0]["nan_on_rank_1"] == (
        "training loss became NaN or infinite on rank(s) 1 in epoch 3 by step 50; run/last.pth still holds epoch "
        "2. Try a lower learning rate, clip_grad_norm, or precision: fp32")
    assert seen[1]["shared"] == str(run)  # a rank given no run directory takes rank 0's
    assert seen[0]["not_shared"].startswith("the run's config.yaml differs between rank 0 on ")
    assert f"({run}-not-mounted/config.yaml: no such file)" in seen[0]["not_shared"]
    assert "needs output_dir on a filesystem shared by all nodes" in seen[0]["not_shared"]


def test_a_loss_that_diverges_before_any_checkpoint_names_none():
    from REC.trainer.trainer import NonFiniteLossError, Trainer
    trainer = SimpleNamespace(device=torch.device("cpu"), last_path=Path("run/last.pth"), state={"epoch": -1})
    with pytest.raises(NonFiniteLossError) as exc:
        Trainer.check_finite(trainer, torch.tensor(float("nan")), 0, 50)
    assert str(exc.value) == ("training loss became NaN or infinite in epoch 0 by step 50; no checkpoint was written "
                              "(it happened before the first epoch ended). Try a lower learning rate, clip_grad_norm, "
                              "or precision: fp32")
