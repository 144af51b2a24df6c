"""Train one configuration and print its figures: seconds per epoch, eval seconds, peak RSS, metrics.

    python -m bench.bench_train --device cpu --config_file IDNet/sasrec.yaml overall/ID.yaml \
        -- --data_path=../shared/data/Beauty --dataset=Beauty --epochs=30 --stopping_step=30 --precision=bf16

Everything after ``--`` is passed to main.py as config overrides. The run happens in a child process so that
its peak RSS is its own; the figures come from the run's result.json.
"""
import argparse

from bench.main_runs import ROOT, run_main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--config_file", nargs="+", required=True)
    p.add_argument("--output_dir", default=str(ROOT / "bench" / "out"))
    args, rest = p.parse_known_args()
    overrides = [a for a in rest if a != "--"]
    cmd = ["--device", args.device, "--config_file", *args.config_file, f"--output_dir={args.output_dir}",
           "--show_progress=false", *overrides]
    print("$ python main.py", " ".join(cmd), flush=True)
    run = run_main(cmd)
    r = run.result
    valid_ndcg = [h["valid"]["ndcg@10"] for h in r["history"] if h.get("valid")]
    print(f"run dir            {run.run_dir}")
    print(f"precision          {r['precision']}   world size {r['world_size']}")
    print(f"seconds per epoch  {r['seconds_per_epoch']:.2f}")
    print(f"eval seconds       {r['eval_seconds']:.2f}" if r["eval_seconds"] else "eval seconds       -")
    print(f"peak RSS (MiB)     {r['peak_rss_mib']:.0f}")
    print(f"best epoch         {r['best_epoch']}  (of {r['epochs_run']})")
    print(f"best valid         {r['best_valid']}")
    print(f"test               {r['test']}")
    print("valid NDCG@10 by epoch", " ".join(f"{v:.4f}" for v in valid_ndcg))


if __name__ == "__main__":
    main()
