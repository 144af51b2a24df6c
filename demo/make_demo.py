"""Regenerate the demo (deterministic): python demo/make_demo.py

demo/Demo.csv: 2,000 users over 600 items in 8 visual groups. Each user has a favourite group; an interaction
follows a fixed item-to-item chain half of the time (order signal, for sequential ID models) and otherwise comes
from the favourite group 60% of the time (visual signal). demo/cover/<item_id>.png: 32 px covers whose colour and
stripes show the group (generate_lmdb.py packs them).
"""
from pathlib import Path

from REC.data.synthetic import group_covers, visual_log, write_covers, write_csv

if __name__ == "__main__":
    here = Path(__file__).parent
    frame, groups = visual_log(n_users=2000, n_items=600, n_groups=8, min_len=5, max_len=30, p_group=0.6,
                               p_next=0.5, seed=7)
    write_csv(frame, here / "Demo.csv")
    write_covers(group_covers(groups, size=32, seed=7), here / "cover")
