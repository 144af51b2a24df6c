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


def visual_log(n_users: int, n_items: int, n_groups: int = 8, n_cold: int = 0, min_len: int = 5,
               max_len: int = 30, p_group: float = 0.8, p_next: float = 0.0, zipf: float = 1.1,
               cold_fraction: float = 0.5, seed: int = 0) -> tuple[pd.DataFrame, dict[str, int]]:
    """A log where an item's visual group carries the signal: each user has a favourite group and draws from
    it with probability ``p_group`` (else a popularity-weighted draw from all items); with ``p_next`` the next
    item instead follows a fixed successor chain (order signal, as ``sequential_log``).

    ``n_cold`` extra items (tokens ``c<k>``) occur only as the LAST interaction of a ``cold_fraction`` of the users,
    always from that user's
    favourite group: they never appear in training or validation, so test metrics over those users measure how
    well a model ranks items it has never trained on. Returns the frame and each item token's group.
    """
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_groups, size=n_items)
    members = [np.flatnonzero(groups == g) for g in range(n_groups)]
    if any(len(m) == 0 for m in members):
        raise ValueError(f"{n_items} items leave some of the {n_groups} groups empty; use more items")
    favourite = rng.integers(0, n_groups, size=n_users)
    lengths = rng.integers(min_len, max_len + 1, size=n_users)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf
    popularity = popularity[rng.permutation(n_items)]
    popularity /= popularity.sum()
    successor = np.empty(n_items, dtype=np.int64)
    order = rng.permutation(n_items)
    successor[order] = np.roll(order, -1)

    def from_favourite(users):
        sizes = np.array([len(members[g]) for g in favourite[users]])
        picks = (rng.random(len(users)) * sizes).astype(np.int64)
        offsets = np.cumsum([0] + [len(m) for m in members])
        flat = np.concatenate(members)
        return flat[offsets[favourite[users]] + picks]

    all_users = np.arange(n_users)
    items = np.empty((n_users, max_len), dtype=np.int64)
    items[:, 0] = from_favourite(all_users)
    for t in range(1, max_len):  # loop over positions, not interactions
        u = rng.random(n_users)
        fav = from_favourite(all_users)
        pop = rng.choice(n_items, size=n_users, p=popularity)
        items[:, t] = np.where(u < p_next, successor[items[:, t - 1]], np.where(u < p_next + (1 - p_next) * p_group,
                                                                               fav, pop))
    keep = np.arange(max_len)[None, :] < lengths[:, None]
    tokens = np.char.add("i", items[keep].astype(str))
    user = np.repeat(all_users, lengths)
    position = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    start = rng.integers(0, 10_000_000, size=n_users)
    times = np.repeat(start, lengths) + position * 60
    group_of = {f"i{i}": int(g) for i, g in enumerate(groups)}
    if n_cold:
        cold_groups = np.arange(n_cold) % n_groups
        cold_members = [np.flatnonzero(cold_groups == g) for g in range(n_groups)]
        takers = np.flatnonzero(rng.random(n_users) < cold_fraction)
        takers = takers[[len(cold_members[favourite[u]]) > 0 for u in takers]]
        picks = np.array([rng.choice(cold_members[favourite[u]]) for u in takers], dtype=np.int64)
        tokens = np.concatenate([tokens, np.char.add("c", picks.astype(str))])
        user = np.concatenate([user, takers])
        times = np.concatenate([times, start[takers] + lengths[takers] * 60])
        group_of.update({f"c{k}": int(g) for k, g in enumerate(cold_groups)})
    frame = pd.DataFrame({"item_id": tokens, "user_id": np.char.add("u", user.astype(str)), "timestamp": times})
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True), group_of


# one colour per group, far apart in RGB; groups beyond the palette reuse it with a different stripe direction
_PALETTE = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230], [235, 210, 40], [200, 60, 210], [40, 210, 220],
                     [240, 140, 30], [120, 120, 120]], dtype=np.int64)


def group_covers(group_of: dict[str, int], size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """An RGB uint8 [size, size, 3] cover per item token: its group's colour with stripes (the group signal),
    per-item brightness, a random patch of random colour (item identity) and pixel noise (no two alike)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    covers = {}
    for token, g in group_of.items():
        base = _PALETTE[g % len(_PALETTE)]
        stripes = ((xx if (g // len(_PALETTE)) % 2 == 0 else yy) // max(size // 8, 1)) % 2
        img = base[None, None, :] * (0.75 + 0.25 * stripes[:, :, None]) * rng.uniform(0.8, 1.1)
        h, w = rng.integers(size // 6, size // 3, size=2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, size=3)
        img = img + rng.normal(0, 12, size=img.shape)
        covers[token] = np.clip(img, 0, 255).astype(np.uint8)
    return covers


def write_covers(covers: dict[str, np.ndarray], folder: str | Path, ext: str = "png") -> Path:
    """One ``<token>.<ext>`` file per cover, the layout generate_lmdb.py reads."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for token, img in covers.items():
        Image.fromarray(img).save(folder / f"{token}.{ext}")
    return folder


def pixel_shaped_lengths(n_interactions: int, rng: np.random.Generator, min_len: int = 5,
                         max_len: int = 5000) -> np.ndarray:
    """Per-user sequence lengths shaped like Pixel8M's (17.8 events per user on average, most users near the
    minimum of 5, a Pareto tail into the thousands), summing to exactly ``n_interactions``."""
    lengths = np.minimum(min_len + np.floor(rng.pareto(1.3, size=n_interactions // 10 + 1) * 4), max_len)
    lengths = lengths.astype(np.int64)
    total = np.cumsum(lengths)
    n_users = int(np.searchsorted(total, n_interactions)) + 1
    lengths = lengths[:n_users]
    lengths[-1] -= int(total[n_users - 1]) - n_interactions  # the last user takes what is left
    if lengths[-1] < min_len:  # fold a too-short last user into the one before
        lengths[-2] += lengths[-1]
        lengths = lengths[:-1]
    return lengths


def pixel_shaped_log(n_interactions: int, n_items: int, seed: int = 0, users_per_chunk: int = 200_000):
    """Frames (item_id, user_id, timestamp) of a log shaped like Pixel8M, one group of users at a time, so that
    a log of any size is generated in bounded memory: long-tailed item popularity (Zipf 0.9 over ``n_items``
    numeric ids), Pareto user lengths (``pixel_shaped_lengths``), events an exponential number of seconds
    apart with one in ten at the same second as the previous one (real logs have such ties), each frame's rows
    shuffled (a CSV's row order means nothing)."""
    rng = np.random.default_rng(seed)
    lengths = pixel_shaped_lengths(n_interactions, rng)
    popularity = np.cumsum(1.0 / np.arange(10, n_items + 10) ** 0.9)
    popularity /= popularity[-1]
    item_names = rng.permutation(n_items) + 1_000_000
    user_names = rng.permutation(len(lengths)) + 10_000_000
    for first in range(0, len(lengths), users_per_chunk):
        chunk = lengths[first:first + users_per_chunk]
        n = int(chunk.sum())
        gaps = np.where(rng.random(n) < 0.1, 0, rng.exponential(3600.0, size=n).astype(np.int64))
        starts = np.cumsum(chunk) - chunk
        gaps[starts] = rng.integers(1_600_000_000, 1_630_000_000, size=len(chunk))  # each user's first event
        stamps = np.cumsum(gaps)
        stamps -= np.repeat(stamps[starts] - gaps[starts], chunk)  # restart the running sum at every user
        items = item_names[np.minimum(np.searchsorted(popularity, rng.random(n)), n_items - 1)]
        users = np.repeat(user_names[first:first + len(chunk)], chunk)
        order = rng.permutation(n)
        yield pd.DataFrame({"item_id": items[order], "user_id": users[order], "timestamp": stamps[order]})


def write_pixel_shaped_csv(path: str | Path, n_interactions: int, n_items: int, seed: int = 0) -> Path:
    """``pixel_shaped_log`` written to ``path`` frame by frame (bounded memory at any size)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="") as f:
        for k, frame in enumerate(pixel_shaped_log(n_interactions, n_items, seed)):
            frame.to_csv(f, index=False, header=k == 0, columns=["item_id", "user_id", "timestamp"])
    tmp.replace(path)
    return path
