"""Recommendations from a trained run (REC.app.predict): original ids, the evaluator's ranking, bad inputs, atomic output."""
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from REC.data import EvalBatches, leave_one_out, load_interactions
from REC.evaluator import FullRankingEvaluator
from REC.model import create_model, list_models
from REC.model.base import DatasetInfo
from REC.app.predict import KnownUsersOnlyError, PredictError, Recommender, UnknownIdError, main, write_recommendations
from REC.app.configure import build_config
from REC.utils.run_layout import CONFIG_FILE
from REC.trainer.checkpoint import save_atomic

from .conftest import ROOT, run_main, sasrec_args
from .model_cases import SMALL
from .test_pixelnet import TINY_ENCODER, vis_data  # noqa: F401  (the fixture, reused)

K = 10


@pytest.fixture(scope="module")
def run(seq_data, tmp_path_factory):
    """A tiny SASRec trained for 2 epochs, its run directory and test figures."""
    trained = run_main(sasrec_args(seq_data, tmp_path_factory.mktemp("runs"), "--epochs=2", "--eval_batch_size=64"))
    return trained.run_dir, trained.result


@pytest.fixture(scope="module")
def rec(run):
    return Recommender.from_run(run[0])


@pytest.fixture(scope="module")
def cli_csv(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("recs") / "recs.csv"
    assert main([str(run[0]), "--output", str(out), "--topk", str(K), "--batch_size", "100"]) == 0
    return pd.read_csv(out, dtype={"user_id": str, "item_id": str})


def original_sequences(seq_data) -> dict[str, list[str]]:
    frame = pd.read_csv(seq_data / "Seq.csv", dtype={"user_id": str, "item_id": str})
    frame = frame.sort_values("timestamp", kind="stable")
    return {u: list(g["item_id"]) for u, g in frame.groupby("user_id", sort=False)}


def test_cli_writes_k_original_ids_per_user_ranked_and_masked(cli_csv, seq_data):
    seqs = original_sequences(seq_data)
    items = {i for s in seqs.values() for i in s}
    assert list(cli_csv.columns) == ["user_id", "rank", "item_id", "score"]
    assert set(cli_csv["user_id"]) == set(seqs) and set(cli_csv["item_id"]) <= items
    for user, g in cli_csv.groupby("user_id", sort=False):
        assert g["rank"].tolist() == list(range(1, K + 1))
        assert (np.diff(g["score"].to_numpy()) <= 0).all()
        assert not set(g["item_id"]) & set(seqs[user])  # history masked
        assert g["item_id"].is_unique


def test_ranking_equals_the_evaluators_on_the_test_split(rec, run):
    """The test users' histories (everything before the test item) given to ``recommend``: the same top-k as the
    evaluator's ranking (its own masking code), and the same test figures as the run's result.json."""
    run_dir, result = run
    split = leave_one_out(load_interactions(rec.config["data_path"], rec.config["dataset"]))
    test = split.test
    histories = [[rec.item_ids[i] for i in test.history(k)] for k in range(len(test))]
    got = rec.recommend_histories(histories, K, batch_size=rec.config["eval_batch_size"])

    class Capture(FullRankingEvaluator):
        tops = []

        def batch_sums(self, scores, batch):
            sums = super().batch_sums(scores, batch)  # masks ``scores`` in place
            self.tops.append(scores.topk(K, dim=1))
            return sums

    evaluator = Capture(["Recall", "NDCG"], [K], 7, torch.device("cpu"))
    metrics = evaluator.evaluate(rec.model, EvalBatches(test, rec.max_len, rec.config["eval_batch_size"])).metrics
    want_ids = torch.cat([t.indices for t in evaluator.tops]).numpy()
    want_scores = torch.cat([t.values for t in evaluator.tops]).numpy()
    assert [[i for i, _ in row] for row in got] == [list(rec.item_ids[r]) for r in want_ids]
    np.testing.assert_allclose([[s for _, s in row] for row in got], want_scores, rtol=1e-6)

    targets = rec.item_ids[test.targets]
    ranks = [next((r for r, (i, _) in enumerate(row, 1) if i == t), None) for row, t in zip(got, targets)]
    recall = np.mean([r is not None for r in ranks])
    ndcg = np.mean([1 / math.log2(r + 1) if r else 0.0 for r in ranks])
    assert recall == pytest.approx(metrics[f"recall@{K}"], abs=1e-6) == pytest.approx(result["test"]["recall@10"],
                                                                                      abs=1e-6)
    assert ndcg == pytest.approx(metrics[f"ndcg@{K}"], abs=1e-6) == pytest.approx(result["test"]["ndcg@10"], abs=1e-6)


def test_python_api_equals_the_command_line(rec, cli_csv, seq_data):
    user = cli_csv["user_id"].iloc[0]
    want = cli_csv[cli_csv["user_id"] == user]
    got = rec.recommend(original_sequences(seq_data)[user], k=K)
    assert [i for i, _ in got] == want["item_id"].tolist()
    np.testing.assert_allclose([s for _, s in got], want["score"], rtol=1e-5)
    frame = rec.recommend_users([user], k=K)
    assert frame["item_id"].tolist() == want["item_id"].tolist() and frame["rank"].tolist() == want["rank"].tolist()


def test_keep_history_ranks_every_real_item(rec, seq_data):
    history = original_sequences(seq_data)[next(iter(original_sequences(seq_data)))]
    kept = rec.recommend(history, k=rec.item_num, exclude_history=False)
    masked = rec.recommend(history, k=rec.item_num)
    assert len(kept) == rec.item_num - 1 and "[PAD]" not in {i for i, _ in kept}
    assert [i for i, _ in masked] == [i for i, _ in kept if i not in set(history)]


def test_unknown_users_exit_2_before_writing(run, cli_csv, tmp_path):
    users = tmp_path / "users.txt"
    known = cli_csv["user_id"].unique()[:2].tolist()
    users.write_text("\n".join([known[0], "ghost-1", known[1], "ghost-2", "ghost-3"]) + "\n")
    out = tmp_path / "recs.csv"
    proc = subprocess.run([sys.executable, "-m", "REC", "predict", str(run[0]), "--users", str(users), "--output",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "3 of the 5 user ids" in proc.stderr and "'ghost-1', 'ghost-2', 'ghost-3'" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [users]


def test_unknown_items_are_left_out_with_a_warning(rec, cli_csv, caplog):
    known = cli_csv["item_id"].iloc[0]
    with caplog.at_level("WARNING", logger="REC.app.predict"):
        mixed = rec.recommend(["nope-1", known, "nope-2"])
    assert "2 of the 3 item ids" in caplog.text and "'nope-1', 'nope-2'" in caplog.text
    assert mixed == rec.recommend([known])
    with pytest.raises(ValueError, match=r"2 of the 2 item ids .*no known item"):
        rec.recommend(["nope-1", "nope-2"])
    with pytest.raises(UnknownIdError, match="1 of the 1 user ids"):
        rec.recommend_users(["nobody"])
    with pytest.raises(ValueError, match="empty"):
        rec.recommend([])


def test_output_is_written_under_a_temporary_name_then_renamed(tmp_path):
    out = tmp_path / "recs.csv"
    seen = []

    def batches(fail: bool):
        for n in range(3):
            seen.append((out.exists(), sorted(p.name for p in tmp_path.iterdir())))
            if fail and n == 1:
                raise RuntimeError("stopped mid-way")
            yield [("u", 1, f"i{n}", 0.5)]

    assert write_recommendations(out, batches(False)) == 3
    assert all(not exists and len(names) == 1 and names[0].startswith(".recs.csv.") for exists, names in seen)
    assert out.read_text() == "user_id,rank,item_id,score\nu,1,i0,0.5\nu,1,i1,0.5\nu,1,i2,0.5\n"
    before = out.read_text()
    with pytest.raises(RuntimeError, match="mid-way"):
        write_recommendations(out, batches(True))
    assert out.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["recs.csv"]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for option in ("--output", "--users", "--topk", "--keep_history", "--checkpoint", "--device", "--batch_size",
                   "--precision", "--save_items"):
        assert option in text


@pytest.mark.parametrize("name", list_models(family="IDNet"))
def test_needs_user_id_says_whether_the_user_vector_reads_the_user_id(name, seq_data):
    """The flag that makes ``recommend(history)`` refuse a model must match what the model reads."""
    cfg = build_config([f"IDNet/{name.lower()}.yaml", "overall/ID.yaml"],
                       [f"--data_path={seq_data}", "--dataset=Seq", *SMALL[name]])
    split = leave_one_out(load_interactions(str(seq_data), "Seq"))
    model = create_model(name, cfg, DatasetInfo.from_split(split)).eval()
    batch = next(iter(EvalBatches(split.test, cfg["MAX_ITEM_LIST_LENGTH"], 8)))
    with torch.no_grad():
        real = model.user_representations(batch)
        anonymous = model.user_representations(dict(batch, user_id=torch.zeros_like(batch["user_id"])))
    assert model.needs_user_id == (not torch.equal(real, anonymous))


def test_known_user_models_refuse_a_bare_history(seq_data):
    cfg = build_config(["IDNet/mf.yaml", "overall/ID.yaml"], [f"--data_path={seq_data}", "--dataset=Seq"])
    inter = load_interactions(str(seq_data), "Seq")
    model = create_model("MF", cfg, DatasetInfo.from_split(leave_one_out(inter)))
    rec = Recommender(cfg, model, inter, torch.device("cpu"), "fp32")
    with pytest.raises(KnownUsersOnlyError, match="known users only.*recommend_users"):
        rec.recommend([rec.item_ids[1]])
    user = inter.user_tokens[1]
    assert rec.recommend_users([user], k=3)["user_id"].tolist() == [user] * 3


def test_pixelnet_item_representations_round_trip(vis_data, tmp_path):  # noqa: F811
    """Covers encoded once and saved; a Recommender loading the table gives the same recommendations, and a
    table that does not match the dataset is refused."""
    cfg = build_config(["PixelNet/sasrec.yaml", "overall/ViT.yaml"],
                       [f"--data_path={vis_data}", "--dataset=Vis", *TINY_ENCODER, *SMALL["MOSASRec"]])
    split = leave_one_out(load_interactions(str(vis_data), "Vis"))
    torch.manual_seed(0)
    model = create_model("MOSASRec", cfg, DatasetInfo.from_split(split))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / CONFIG_FILE).write_text(cfg.dump_yaml())
    save_atomic({"model": model.state_dict(), "epoch": 0}, run_dir / "best.pth")

    encoded = Recommender.from_run(run_dir)
    users = encoded.inter.user_tokens.to_list()[1:6]
    want = encoded.recommend_users(users, k=5)
    npy = encoded.save_item_representations(tmp_path / "items.npy")
    table = np.load(npy)
    assert table.shape == (encoded.item_num, model.cover_width) and not table[0].any()
    ids = (tmp_path / "items.items.txt").read_text().splitlines()
    assert ids == encoded.item_ids.tolist()

    loaded = Recommender.from_run(run_dir, item_representations=tmp_path / "items")
    pd.testing.assert_frame_equal(loaded.recommend_users(users, k=5), want)
    history = [encoded.item_ids[3], encoded.item_ids[7]]
    assert loaded.recommend(history, k=5) == encoded.recommend(history, k=5)

    import json
    meta = json.loads((tmp_path / "items.json").read_text())
    assert (meta["format"], meta["kind"], meta["dataset"]) == ("pixelrec-item-array", "item-table", "Vis")
    assert meta["items_sha256"] == encoded.inter.item_tokens.digest() and meta["complete"]
    other = {**meta, "items_sha256": "0" * 64}  # what a table saved from another item order records
    (tmp_path / "items.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match=r"items.npy was made for dataset 'Vis' .* not for this run's dataset 'Vis'"):
        Recommender.from_run(run_dir, item_representations=tmp_path / "items.npy")
    (tmp_path / "items.json").write_text(json.dumps(meta))

    from .damage import swap_rows
    swap_rows(npy, 1, 2)  # damaged after it was saved: its checksums say so, in one line
    with pytest.raises(ValueError, match=r"items.npy: the rows of 1 of 1 chunks are not the ones written") as err:
        Recommender.from_run(run_dir, item_representations=tmp_path / "items.npy")
    assert "\n" not in str(err.value) and "save it again" in str(err.value)

    (tmp_path / "items.json").unlink()  # a table saved by hand (no checksum record) is still checked by its ids
    (tmp_path / "items.items.txt").write_text("\n".join(ids[:-1]) + "\n")
    np.save(tmp_path / "items.npy", table[:-1])
    with pytest.raises(ValueError, match="the run's dataset has"):
        Recommender.from_run(run_dir, item_representations=tmp_path / "items.npy")


# ---------------------------------------------------------------------------------------------- run identity
def copied_run(run_dir, tmp_path, name: str):
    import shutil
    copy = tmp_path / name
    shutil.copytree(run_dir, copy)
    return copy


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err[-3000:]
    return lines[-1]


def test_a_checkpoint_of_another_run_is_refused_by_evaluate_and_predict(run, tmp_path, capsys):
    """Two runs of one config have checkpoints of the same shapes: only the run id inside tells them apart."""
    from REC.app.evaluate import main as evaluate_main
    from REC.trainer.checkpoint import RUN_ID_FILE, new_run_id, read_run_id

    from .conftest import call_main
    original = read_run_id(run[0])
    assert original and torch.load(run[0] / "best.pth", weights_only=True)["run_id"] == original
    assert torch.load(run[0] / "last.pth", weights_only=True)["run_id"] == original
    other = copied_run(run[0], tmp_path, "other")
    new_run_id(other)  # another run, holding this run's best.pth (a copy, or a --checkpoint from elsewhere)
    for command, argv in ((evaluate_main, [other]), (main, [other, "--output", tmp_path / "recs.csv"])):
        status, out, err = call_main(command, argv, capsys)
        line = one_error_line(err)
        assert status == 2 and "does not belong to run directory" in line and original in line, line
        assert (other / RUN_ID_FILE).read_text().strip() in line
    assert not (tmp_path / "recs.csv").exists()


def test_weights_that_do_not_fit_the_runs_config_are_one_line(run, tmp_path, capsys):
    from REC.app.evaluate import main as evaluate_main

    from .conftest import call_main
    edited = copied_run(run[0], tmp_path, "edited")
    config = edited / CONFIG_FILE
    config.write_text(config.read_text().replace("embedding_size: 32", "embedding_size: 16", 1))
    for command, argv in ((evaluate_main, [edited]), (main, [edited, "--output", tmp_path / "recs.csv"])):
        status, _, err = call_main(command, argv, capsys)
        line = one_error_line(err)
        assert status == 2 and "its weights do not fit the model built from the run's config.yaml" in line, line
        assert "checkpoint [" in line and ", 32], model [" in line and ", 16]" in line, line


def test_an_output_that_is_a_folder_is_refused_before_scoring(run, tmp_path, capsys):
    from .conftest import call_main
    folder = tmp_path / "out"
    folder.mkdir()
    status, _, err = call_main(main, [run[0], "--output", folder], capsys)
    assert status == 2 and f"--output {str(folder)!r} is a folder" in one_error_line(err)
    assert list(folder.iterdir()) == []


def test_a_run_from_before_run_ids_still_loads(run, tmp_path):
    from REC.trainer.checkpoint import RUN_ID_FILE
    old = copied_run(run[0], tmp_path, "old")
    (old / RUN_ID_FILE).unlink()
    ckpt = torch.load(old / "best.pth", weights_only=True)
    del ckpt["run_id"]
    save_atomic(ckpt, old / "best.pth")
    rec = Recommender.from_run(old)
    assert rec.recommend(rec.inter.item_tokens.to_list()[1:4], k=3)


def test_a_run_is_never_read_without_its_weights(run):
    with pytest.raises(PredictError, match="expected a checkpoint file"):
        Recommender.from_run(run[0], checkpoint=None)

