"""Shared fixtures: small real data on disk and a helper that runs the real command line."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
import torch

from bench import main_runs
from REC.data.synthetic import sequential_log, write_csv

ROOT = Path(__file__).resolve().parents[1]
SMALL_MODEL = ["--embedding_size=32", "--n_heads=2", "--n_layers=1", "--show_progress=false"]


@pytest.fixture(scope="session")
def seq_data(tmp_path_factory) -> Path:
    """A synthetic log with a strong order signal: 301 users (odd, so 2 ranks get unequal shares), 120 items."""
    folder = tmp_path_factory.mktemp("seqdata")
    write_csv(sequential_log(n_users=301, n_items=120, min_len=6, max_len=25, p_next=0.8, seed=3),
              folder / "Seq.csv")
    return folder


def train_steps(model, batch: dict, steps: int, lr: float) -> list[float]:
    """``steps`` AdamW steps of ``model`` on one training batch (its trainable parameters); every loss must be a
    finite scalar. Returns the losses, for the caller's own "it decreased" assertion."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# bench/main_runs.py's run_main (one helper for the tests and the bench): (process, run directory); a test's run
# gets 300 s
run_main = functools.partial(main_runs.run_main, timeout=300)


def pop_test_metrics(data: Path, dataset: str, out: Path) -> dict:
    """Test metrics of Pop (most popular training items first) on a dataset: the floor a trained model must beat."""
    return run_main(["--config_file", "IDNet/pop.yaml", "overall/ID.yaml", f"--data_path={data}",
                     f"--dataset={dataset}", f"--output_dir={out}", "--show_progress=false"]).result["test"]


def call_main(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """A command's ``main(argv)`` in this process: (exit status, stdout, stderr). For the paths that end before any
    process starts (argument and preflight errors), where a subprocess would spend seconds importing torch. The
    root logger's handlers, which commands replace, are restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        status = exc.code
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return status, out, err


def sasrec_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", f"--data_path={data}", "--dataset=Seq",
            f"--output_dir={out}", *SMALL_MODEL, *extra]
