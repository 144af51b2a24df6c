"""Several nodes, for real: two launchers on this machine play node 0 and node 1 (one process each, world size 2),
meeting through --master_addr/--master_port, with one shared output_dir, as on a cluster with a shared filesystem."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from REC.utils.run_dir_line import run_dir_from

from .conftest import ROOT, sasrec_args

NODE_LINE = "finished; test: "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args_of_node, timeout: int = 120) -> list[subprocess.CompletedProcess]:
    """Run ``main.py`` as node 0 and node 1 of a 2-node job at once; ``args_of_node(rank)`` gives each one's
    arguments after the launch options."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--device", "cpu", "--nnodes", "2",
                               "--node_rank", str(r), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               *args_of_node(r)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, start_new_session=True) for r in (0, 1)]
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    return done


def node_test(proc) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if NODE_LINE in line)
    return json.loads(line.split(NODE_LINE, 1)[1])


@pytest.fixture(scope="module")
def two_node_run(seq_data, tmp_path_factory):
    """One 2-node training run of 2 epochs: its run directory and the test metrics each node reported."""
    out = tmp_path_factory.mktemp("multinode") / "runs"
    procs = two_nodes(lambda r: sasrec_args(seq_data, out, "--epochs=2"))
    tests = [node_test(p) for p in procs]
    runs = list(out.iterdir())
    assert len(runs) == 1, runs  # node 1 makes no directory of its own
    assert run_dir_from(procs[0].stdout) == runs[0] and run_dir_from(procs[1].stdout) is None  # node 0 names it
    return runs[0], tests


@pytest.mark.slow
def test_two_nodes_make_one_run_and_test_the_same_weights(two_node_run):
    run, (node0, node1) = two_node_run
    result = json.loads((run / "result.json").read_text())
    assert result["world_size"] == 2 and result["epochs_run"] == 2
    assert node0 == node1 == result["test"]
    # the saved best weights, re-evaluated on the same layout, give the figures both nodes reported
    proc = subprocess.run([sys.executable, "-m", "REC", "evaluate", str(run), "--device", "cpu:2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout[proc.stdout.index("{\n"):])["test"] == result["test"]


@pytest.mark.slow
def test_resume_on_two_nodes_continues_the_run(seq_data, tmp_path, two_node_run):
    """A 2-node run stopped after epoch 0 (here: run with epochs=1, then told it has 2) and resumed on both nodes
    ends as the uninterrupted 2-epoch run: node 1 continues from the shared last.pth, not from epoch 0."""
    reference = json.loads((two_node_run[0] / "result.json").read_text())
    first = two_nodes(lambda r: sasrec_args(seq_data, tmp_path, "--epochs=1"))
    node_test(first[0]), node_test(first[1])
    run = run_dir_from(first[0].stdout)
    assert run is not None and run_dir_from(first[1].stdout) is None
    config = (run / "config.yaml").read_text()
    assert config.count("epochs: 1  # command line\n") == 1
    (run / "config.yaml").write_text(config.replace("epochs: 1  # command line\n", "epochs: 2  # command line\n"))
    (run / "result.json").unlink()

    resumed = two_nodes(lambda r: ["--resume", str(run)])
    tests = [node_test(p) for p in resumed]
    result = json.loads((run / "result.json").read_text())
    assert tests[0] == tests[1] == result["test"] == reference["test"]
    assert [h["valid"] for h in result["history"]] == [h["valid"] for h in reference["history"]]
    assert "resumed from" in resumed[0].stdout and "after epoch 0" in resumed[0].stdout


@pytest.mark.slow
def test_a_node_that_cannot_see_the_best_weights_stops_the_job(tmp_path, two_node_run):
    """What a node without the shared output_dir would see, played with a copy of the run without best.pth that
    node 1 resumes: both nodes stop with one clear message (exit status 2) instead of node 1 testing other weights
    or waiting for node 0 until the collective timeout. (A node that sees another config.yaml: test_trust_launch's
    two-rank test of the same check.)"""
    run = two_node_run[0]
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "best.pth").unlink()
    procs = two_nodes(lambda r: ["--resume", str(run if r == 0 else copy)], timeout=90)
    errors = [p.stderr.strip().splitlines()[-1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2] and errors[0] == errors[1], errors
    assert errors[0].startswith("error: whether the run directory holds best.pth differs between rank 0 on ")
    assert "needs output_dir on a filesystem shared by all nodes" in errors[0]


@pytest.mark.slow
def test_resume_refuses_another_world_size(two_node_run):
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--resume", str(two_node_run[0])], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: --resume {two_node_run[0]}: its last.pth was written by 2 process(es) and this launch starts 1; "
        f"data sharding and per-rank seeds depend on that number, so resume it on 2 process(es) in all (e.g. "
        f"--device cpu:2); python -m REC evaluate re-evaluates its checkpoints on any layout")
