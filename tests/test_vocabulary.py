"""A run remembers its own vocabulary: evaluate, predict and resume read the CSV through the run's ids."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from REC.data import DataError, load_interactions
from REC.data.interactions import TokenTable
from REC.data.synthetic import sequential_log, write_csv
from REC.data.vocabulary import DATA_FILE, VOCABULARY_FILE, through_vocabulary
from REC.evaluator import FullRankingEvaluator
from REC.evaluator.ranking import top_unmasked

from REC.app.evaluate import check_run
from REC.app.evaluate import main as evaluate_main
from REC.app.launch import main as launch_main
from REC.app.predict import main as predict_main

from .conftest import ROOT, SMALL_MODEL, call_main, run_main


def _figures(proc: subprocess.CompletedProcess) -> dict:
    """The JSON that REC.app.evaluate prints after the workers' log lines."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{\n"):])


def _module(command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "REC", command, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small SASRec run on a CSV of its own (tests below rewrite that CSV), with its result and predictions."""
    folder = tmp_path_factory.mktemp("vocab")
    frame = sequential_log(n_users=120, n_items=60, min_len=5, max_len=14, p_next=0.8, seed=11)
    write_csv(frame, folder / "V.csv")
    run = run_main(["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", f"--data_path={folder}",
                    "--dataset=V", f"--output_dir={folder / 'runs'}", *SMALL_MODEL, "--epochs=2", "--topk=[5,10]"])
    run_dir = run.run_dir
    recs = folder / "recs.csv"
    assert _module("predict", run_dir, "--output", recs).returncode == 0
    return folder, frame, run_dir, run.result, pd.read_csv(recs, dtype=str, keep_default_na=False)


def test_run_directory_holds_its_vocabulary_and_csv_hash(trained):
    folder, frame, run_dir, _, _ = trained
    info = json.loads((run_dir / DATA_FILE).read_text())
    inter = load_interactions(str(folder), "V")
    assert info["csv_blake2b"] == inter.csv_digest and info["interactions"] == len(frame)
    with np.load(run_dir / VOCABULARY_FILE, allow_pickle=False) as z:
        assert TokenTable(z["item_blob"], z["item_offsets"]).to_list() == inter.item_tokens.to_list()
        assert TokenTable(z["user_blob"], z["user_offsets"]).to_list() == inter.user_tokens.to_list()


def test_reordered_csv_same_predictions_and_evaluate_refuses_unless_asked(trained, tmp_path, capsys):
    folder, frame, run_dir, result, recs = trained
    original = (folder / "V.csv").read_bytes()
    try:
        write_csv(frame.iloc[::-1], folder / "V.csv")  # same interactions, other first-appearance order of ids
        with np.load(run_dir / VOCABULARY_FILE, allow_pickle=False) as z:  # the ids really moved
            assert load_interactions(str(folder), "V").item_tokens.to_list() != \
                TokenTable(z["item_blob"], z["item_offsets"]).to_list()
        status, _, err = call_main(evaluate_main, [run_dir], capsys)
        assert status == 2 and err.count("\n") == 1, err  # one line, no traceback
        assert "has changed since run" in err and "--allow_changed_data" in err
        allowed = _module("evaluate", run_dir, "--allow_changed_data")
        figures = _figures(allowed)
        assert figures["test"] == result["test"] and figures["valid"] == result["best_valid"]
        assert figures["data"]["changed"] and figures["data"]["rows_dropped"] == 0
        out = tmp_path / "recs.csv"
        proc = _module("predict", run_dir, "--output", out)
        assert proc.returncode == 0 and "has changed since run" in proc.stderr
        again = pd.read_csv(out, dtype=str, keep_default_na=False)
        key = ["user_id", "rank"]
        pd.testing.assert_frame_equal(again.sort_values(key).reset_index(drop=True)[["user_id", "rank", "item_id"]],
                                      recs.sort_values(key).reset_index(drop=True)[["user_id", "rank", "item_id"]])
        status, _, err = call_main(launch_main, ["--resume", run_dir], capsys)
        assert status == 2 and "cannot resume" in err and "has changed" in err
    finally:
        (folder / "V.csv").write_bytes(original)
    assert not check_run(str(run_dir), "best.pth", False).changed  # the original file again: no complaint


def test_new_items_and_users_in_the_csv_are_skipped_and_counted(trained, tmp_path):
    folder, frame, run_dir, _, _ = trained
    original = (folder / "V.csv").read_bytes()
    extra = pd.DataFrame({"item_id": ["brand-new", "brand-new", "i0"], "user_id": ["u0", "newcomer", "newcomer"],
                          "timestamp": [10 ** 9, 10 ** 9, 10 ** 9 + 1]})
    try:
        write_csv(pd.concat([frame, extra]), folder / "V.csv")
        out = tmp_path / "recs.csv"
        proc = _module("predict", run_dir, "--output", out)
        assert proc.returncode == 0, proc.stderr  # no state-dict size mismatch: the model keeps the run's tables
        assert "3 interactions skipped (1 item ids and 1 user ids the run never saw)" in proc.stderr
        recs = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert "newcomer" not in set(recs["user_id"]) and "brand-new" not in set(recs["item_id"])
        assert recs["user_id"].nunique() == frame["user_id"].nunique()
        allowed = _module("evaluate", run_dir, "--allow_changed_data")
        assert _figures(allowed)["data"]["unknown_items"] == 1
    finally:
        (folder / "V.csv").write_bytes(original)


def test_through_vocabulary_renumbers_and_drops_unknown_rows(tmp_path):
    (tmp_path / "A.csv").write_text("item_id,user_id,timestamp\nx,u1,1\ny,u1,2\nz,u2,1\nnew,u2,2\nx,u2,3\n"
                                    "x,stranger,5\n")
    inter = load_interactions(str(tmp_path), "A")
    run_items = TokenTable.from_strings(["z", "y", "x"])
    run_users = TokenTable.from_strings(["u2", "u1"])
    mapped, dropped, unknown_items, unknown_users = through_vocabulary(inter, run_users, run_items)
    assert (dropped, unknown_items, unknown_users) == (2, 1, 1)
    sequences = {run_users[int(u)]: [run_items[int(i)] for i in mapped.items[a:b]]
                 for u, a, b in zip(mapped.users, mapped.indptr[:-1], mapped.indptr[1:])}
    assert sequences == {"u1": ["x", "y"], "u2": ["z", "x"]}
    assert mapped.item_num == 4 and mapped.user_num == 3


def test_masked_items_are_never_hits():
    """History {1, 2, 3}, target 2, items 1..4 (five rows with padding): only item 4 is left, so recall@5 is 0
    (topk would fill the list with masked items, one of them the target)."""
    evaluator = FullRankingEvaluator(["Recall", "NDCG", "Hit"], [1, 5], 7, torch.device("cpu"))
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.1]])
    batch = {"target": torch.tensor([2]), "hist_row": torch.tensor([0, 0, 0]), "hist_item": torch.tensor([1, 2, 3])}
    values = dict(zip(evaluator.keys, (v.item() for v in evaluator.user_values(scores.clone(), batch))))
    assert values == {"recall@1": 0.0, "recall@5": 0.0, "ndcg@1": 0.0, "ndcg@5": 0.0, "hit@1": 0.0, "hit@5": 0.0}
    batch["target"] = torch.tensor([4])  # the one item left is ranked first
    values = dict(zip(evaluator.keys, (v.item() for v in evaluator.user_values(scores.clone(), batch))))
    assert values["recall@1"] == 1.0 and values["ndcg@5"] == 1.0
    ids, _, ranked = top_unmasked(scores.clone(), 5, batch["hist_row"], batch["hist_item"])
    assert ids[ranked].tolist() == [4]


def test_old_run_without_vocabulary_still_evaluates_with_a_warning(trained, tmp_path, capsys):
    folder, _, run_dir, result, _ = trained
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    (old / VOCABULARY_FILE).unlink()
    (old / DATA_FILE).unlink()
    proc = _module("evaluate", old)
    assert "no vocabulary.npz" in proc.stderr and _figures(proc)["test"] == result["test"]
    (old / VOCABULARY_FILE).write_bytes(b"not a zip")
    (old / DATA_FILE).write_text("{}")
    status, _, err = call_main(evaluate_main, [old], capsys)
    assert status == 2 and "unreadable" in err and err.count("\n") == 1


def test_id_strings_are_verbatim_and_bad_csvs_name_the_file(tmp_path, capsys):
    (tmp_path / "N.csv").write_text("item_id,user_id,timestamp\nNA,null,1\nnan,None,2\nN/A,null,3\n")
    inter = load_interactions(str(tmp_path), "N")
    assert inter.item_tokens.to_list() == ["[PAD]", "NA", "nan", "N/A"]
    assert inter.user_tokens.to_list() == ["[PAD]", "null", "None"]
    cases = {
        "Empty": (b"", r"Empty.csv: the file is empty"),
        "Huge": (b"item_id,user_id,timestamp\na,u,1\nb,u,99999999999999999999\n",
                 r"Huge.csv: timestamp '99999999999999999999' on line 3 .*int64"),
        "Latin": ("item_id,user_id,timestamp\ncaf\u00e9,u,1\n".encode("latin-1"), r"Latin.csv: not UTF-8"),
        "Blank": (b"item_id,user_id,timestamp\n,u,1\n", r"Blank.csv: empty item_id or user_id on lines \[2\]"),
        "HeaderOnly": (b"item_id,user_id,timestamp\n", r"HeaderOnly.csv: no interactions"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / f"{name}.csv").write_bytes(content)
        with pytest.raises(DataError, match=message):
            load_interactions(str(tmp_path), name)
    status, _, err = call_main(launch_main, ["--config_file", "IDNet/sasrec.yaml", f"--data_path={tmp_path}",
                                             "--dataset=Huge", f"--output_dir={tmp_path / 'runs'}"], capsys)
    assert status == 2 and "int64" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    (tmp_path / "C.csv").write_text("item_id,user_id,timestamp\na,u,1\nb,u,2\nc,v,1\n")
    first = load_interactions(str(tmp_path), "C")
    cache = next((tmp_path / ".pixelrec_cache").glob("C-*.npz"))
    for garbage in (b"", cache.read_bytes()[:100], b"PK\x03\x04 not really a zip"):
        cache.write_bytes(garbage)
        with caplog.at_level("WARNING"):
            again = load_interactions(str(tmp_path), "C")
        assert "unreadable" in caplog.text and "rebuilding" in caplog.text
        assert np.array_equal(again.items, first.items) and again.item_tokens.to_list() == first.item_tokens.to_list()
        caplog.clear()
    assert load_interactions(str(tmp_path), "C").csv_digest == first.csv_digest  # the rebuilt cache reads back


def test_missing_checkpoint_and_missing_output_folder_are_one_line_errors(trained, tmp_path, capsys):
    _, _, run_dir, _, _ = trained
    no_best = tmp_path / "no-best"
    shutil.copytree(run_dir, no_best)
    (no_best / "best.pth").unlink()
    status, _, err = call_main(evaluate_main, [no_best], capsys)
    assert status == 2 and err.count("\n") == 1 and "best.pth does not exist" in err
    out = tmp_path / "nowhere" / "recs.csv"
    status, _, err = call_main(predict_main, [run_dir, "--output", out], capsys)
    assert status == 2 and err.count("\n") == 1
    assert "--output" in err and "does not exist; create it first" in err
    assert not (tmp_path / "nowhere").exists()
