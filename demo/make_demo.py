"""Regenerate demo/Demo.csv (deterministic): python demo/make_demo.py"""
from pathlib import Path

from REC.data.synthetic import sequential_log, write_csv

if __name__ == "__main__":
    write_csv(sequential_log(n_users=2000, n_items=600, seed=7), Path(__file__).with_name("Demo.csv"))
