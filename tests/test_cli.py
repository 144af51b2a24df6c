"""The command line: the README's demo command, and errors raised before any training starts."""
import json
import math
import shutil
import subprocess
import sys

import pytest

from REC.app.launch import main

from .conftest import ROOT, call_main, run_main, sasrec_args

README_DEMO = ["--device", "cpu", "--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", "demo/demo.yaml"]


def test_readme_demo_command_trains_and_evaluates():
    readme = (ROOT / "README.md").read_text()
    assert "python main.py " + " ".join(README_DEMO) in readme
    proc, run_dir = run_main(README_DEMO)
    try:
        # the last line of stdout, once: run_dir=<absolute path>
        assert run_dir.is_absolute() and run_dir.parent == ROOT / "runs" and (run_dir / "result.json").is_file()
        assert [line for line in proc.stdout.splitlines() if line.startswith("run_dir=")] == [f"run_dir={run_dir}"]
        result = json.loads((run_dir / "result.json").read_text())
        assert (run_dir / "config.yaml").is_file() and (run_dir / "log.txt").is_file()
        assert (run_dir / "best.pth").is_file() and (run_dir / "last.pth").is_file()
        assert result["test"]["ndcg@10"] > 0.3  # popularity gets 0.072 on the demo log
        assert set(result) >= {"best_epoch", "best_valid", "test", "seconds_per_epoch", "eval_seconds", "peak_rss_mib"}
    finally:
        shutil.rmtree(run_dir)


def test_errors_come_before_training(seq_data, tmp_path, capsys):
    proc, run_dir = run_main(sasrec_args(seq_data, tmp_path, "--dataset=Missing"), check=False)  # the real status
    assert proc.returncode == 2 and run_dir is None and "run_dir=" not in proc.stdout and "Missing.csv" in proc.stderr and "does not exist" in proc.stderr
    assert not any(tmp_path.iterdir())  # no run directory for a run that cannot start
    status, _, err = call_main(main, sasrec_args(seq_data, tmp_path, "--n_heads=3"), capsys)
    assert status == 2 and ("command line: key 'n_heads' = 3; expected a divisor of key 'embedding_size' = 32 "
                            "(command line)") in err
    status, _, err = call_main(main, sasrec_args(seq_data, tmp_path, "--metrics=[Recall,AUC]",
                                                 "--valid_metric=Recall@10"), capsys)
    assert status == 2 and "unknown metric 'AUC'" in err
    status, _, err = call_main(main, ["--device", "gpu", "--config_file", "IDNet/sasrec.yaml"], capsys)
    assert status == 2 and "--device 'gpu'" in err
    assert not any(tmp_path.iterdir())


def test_docs_config_documents_every_config_key():
    from REC.config.config import DEFAULTS_FILE, read_defaults
    config_doc = (ROOT / "docs" / "config.md").read_text()
    _, specs = read_defaults(DEFAULTS_FILE)
    missing = [k for k in specs if f"`{k}`" not in config_doc]
    assert not missing, f"the config table of docs/config.md lacks {missing}"


PIXEL_DEMO_PACK = ["--data_path", "demo", "--dataset", "Demo", "--size", "32"]
PIXEL_DEMO = ["--device", "cpu", "--config_file", "PixelNet/sasrec.yaml", "demo/demo.yaml", "demo/pixel.yaml"]


def test_readme_pixelnet_demo_commands_run(tmp_path):
    """The README's two PixelNet demo commands, verbatim but for the database location and one epoch."""
    readme = (ROOT / "README.md").read_text()
    assert "python generate_lmdb.py " + " ".join(PIXEL_DEMO_PACK) in readme
    assert "python main.py " + " ".join(PIXEL_DEMO) in readme
    pack = subprocess.run([sys.executable, str(ROOT / "generate_lmdb.py"), *PIXEL_DEMO_PACK,
                           "--output", str(tmp_path / "covers.lmdb"), "--workers", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert pack.returncode == 0, pack.stdout + pack.stderr
    result = run_main([*PIXEL_DEMO, f"--cover_lmdb={tmp_path / 'covers.lmdb'}", "--epochs=1",
                       f"--output_dir={tmp_path}"]).result
    assert result["model"] == "MOSASRec" and result["epochs_run"] == 1
    # ranking at random: recall@10 = 10 / 600 items, ndcg@10 = (sum of 1 / log2(r + 1), r = 1..10) / 600; one
    # epoch from scratch gets 0.0725 / 0.058 (Pop: 0.072 ndcg@10)
    chance_recall, chance_ndcg = 10 / 600, sum(1 / math.log2(r + 1) for r in range(1, 11)) / 600
    assert result["test"]["recall@10"] > 3 * chance_recall and result["test"]["ndcg@10"] > 3 * chance_ndcg, result
    assert result["cover_encode_seconds"] > 0


# ------------------------------------------------------------------------------------------ python -m REC
def test_one_command_line_dispatches_to_every_command(seq_data, tmp_path, capsys):
    """python -m REC <command>: each registered command's module has main(argv); a wrong name is status 2 with a
    did-you-mean; a command's own errors keep their policy (one line, status 2)."""
    import importlib

    from REC.__main__ import COMMANDS, main as rec
    for name, (module, _) in COMMANDS.items():
        assert callable(importlib.import_module(module).main), name
    status, out, _ = call_main(rec, ["--help"], capsys)
    assert status == 0 and all(f"  {name} " in out for name in COMMANDS)
    status, _, err = call_main(rec, ["evaluat", str(tmp_path)], capsys)
    assert status == 2 and "unknown command 'evaluat'; did you mean 'evaluate'?" in err
    status, _, err = call_main(rec, ["evaluate", str(tmp_path / "nowhere")], capsys)
    assert status == 2 and err.startswith("error: ") and str(tmp_path / "nowhere") in err
    status, out, _ = call_main(rec, ["encoders", "16"], capsys)
    assert status == 0 and "clip_vit_b32" in out
    for argv in (["encoders", "--help"], ["encoders", "wide"]):  # argparse: usage, not int()'s traceback
        with pytest.raises(SystemExit) as stop:
            rec(argv)
        assert stop.value.code == (0 if argv[1] == "--help" else 2)
    status, _, err = call_main(rec, ["train", *sasrec_args(seq_data, tmp_path, "--n_heads=3")], capsys)
    assert status == 2 and "n_heads" in err and not list(tmp_path.rglob("config.yaml"))


def test_python_m_rec_report_starts_without_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import sys; from REC.__main__ import main; "
                           f"status = main(['report', {str(tmp_path)!r}]); print(status, 'torch' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "1 False", proc.stdout + proc.stderr  # 1: no finished run
    proc = subprocess.run([sys.executable, "-m", "REC", "pack", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "--data_path" in proc.stdout


def test_commands_load_timm_and_open_clip_only_for_an_image_model():
    """The store's record of library versions comes from their metadata, so importing the commands (predict,
    evaluate, a run) loads neither library; the versions are still the libraries' own."""
    code = ("import sys, REC.app.predict, REC.app.evaluate, REC.app.train, REC.app.prefix_store as ec; "
            "loaded = [m for m in ('timm', 'open_clip') if m in sys.modules]; "
            "import timm, open_clip; v = ec.library_versions(); "
            "print(loaded, v['timm'] == timm.__version__, v['open_clip'] == open_clip.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip().splitlines()[-1] == "[] True True", proc.stdout + proc.stderr
