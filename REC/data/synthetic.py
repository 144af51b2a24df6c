"""Synthetic interaction logs in the PixelRec CSV format, for the demo, the tests and the benchmarks.

Users walk item chains: with probability ``p_next`` the next item is the successor of the current one in a
fixed random order, otherwise a popularity-weighted (Zipf) draw. Order therefore carries signal that a
sequential model can learn and a popularity ranking cannot. Generation is vectorised across users.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def sequential_log(n_users: int, n_items: int, min_len: int = 5, max_len: int = 30, p_next: float = 0.7,
                   zipf: float = 1.1, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n_users)
    total = int(lengths.sum())
    successor = np.empty(n_items, dtype=np.int64)
    order = rng.permutation(n_items)
    successor[order] = np.roll(order, -1)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    popularity = popularity[rng.permutation(n_items)]
    popularity /= popularity.sum()

    items = np.empty((n_users, max_len), dtype=np.int64)
    items[:, 0] = rng.choice(n_items, size=n_users, p=popularity)
    for t in range(1, max_len):  # loop over positions, not interactions: max_len steps for any n_users
        jump = rng.random(n_users) >= p_next
        items[:, t] = np.where(jump, rng.choice(n_items, size=n_users, p=popularity), successor[items[:, t - 1]])
    keep = np.arange(max_len)[None, :] < lengths[:, None]
    user = np.repeat(np.arange(n_users), lengths)
    position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    start = rng.integers(0, 10_000_000, size=n_users)
    frame = pd.DataFrame({
        "item_id": np.char.add("i", items[keep].astype(str)),
        "user_id": np.char.add("u", user.astype(str)),
        "timestamp": np.repeat(start, lengths) + position * 60,
    })
    return frame.iloc[rng.permutation(total)].reset_index(drop=True)  # file order need not be time order


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, columns=["item_id", "user_id", "timestamp"])
    return path
