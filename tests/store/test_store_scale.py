"""The store at scale (issue #16): a checkpoint appends a part file instead of rewriting results.parquet, parts merge
in size tiers, the end of a sweep consolidates, readers see every row at every stage, and a finished folder is
re-read without listing rows/."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
from PIL import Image

from img2img_lab.store import table_log as table_log
from img2img_lab.images.hashes import content_hash
from img2img_lab.store.run_store import RunStore

RED = Image.new("RGB", (8, 8), "red")


def _save(store: RunStore, index: int, **extra) -> str:
    key = hashlib.sha256(str(index).encode()).hexdigest()[:20]
    assert store.save_cell(key, RED, {"cell_key": key, "output_hash": content_hash(RED), "seed": index,
                                      "output_path": f"images/{key}.png", **extra})
    return key


def test_checkpoints_append_parts_that_merge_in_tiers_and_flush_consolidates(tmp_path):
    store = RunStore.create(tmp_path / "run", {"plan": {}})
    keys = []
    for index in range(40 * 8):
        keys.append(_save(store, index))
        if len(keys) % 8 == 0:
            store.checkpoint()  # 40 checkpoints of 8 rows
    parts = table_log.part_paths(store.root)
    tiers = [table_log.size_tier(table_log.part_rows(path.name)) for path in parts]
    assert not (store.root / "results.parquet").exists()
    assert all(tiers.count(tier) < table_log.MERGE_FANOUT for tier in set(tiers))  # merged in size tiers
    assert sum(table_log.part_rows(path.name) for path in parts) == 320 and len(parts) <= 8
    assert sorted(RunStore.open(store.root).read_table()["cell_key"]) == sorted(keys)  # readers see the parts
    store.flush()
    assert table_log.part_paths(store.root) == []
    assert sorted(pd.read_parquet(store.root / "results.parquet")["cell_key"]) == sorted(keys)


def test_a_later_row_wins_and_replace_table_clears_the_parts(tmp_path):
    store = RunStore.create(tmp_path / "run", {"plan": {}})
    key = _save(store, 0)
    store.flush()
    other = RunStore.open(store.root)
    (store.root / "rows" / f"{key}.json").unlink()  # the writer rewrites its cell (a repair)
    other.reload()
    assert other.save_cell(key, RED, {"cell_key": key, "output_hash": content_hash(RED), "seed": 99,
                                      "output_path": f"images/{key}.png"})
    other.checkpoint()
    assert RunStore.open(store.root).read_table()["seed"].tolist() == [99]  # the part's row replaces the parquet's
    table = RunStore.open(store.root).read_table().assign(ssim=0.5)
    RunStore.open(store.root).replace_table(table)  # measure_run's path
    assert table_log.part_paths(store.root) == []
    assert RunStore.open(store.root).read_table()[["seed", "ssim"]].values.tolist() == [[99, 0.5]]


def test_a_consolidated_folder_is_read_without_listing_rows(tmp_path, monkeypatch):
    store = RunStore.create(tmp_path / "run", {"plan": {}})
    keys = [_save(store, index) for index in range(50)]
    store.flush()
    listed = []
    original = Path.glob

    def counting_glob(self, pattern):
        if self.name == "rows":
            listed.append(pattern)
        return original(self, pattern)

    monkeypatch.setattr(Path, "glob", counting_glob)
    reopened = RunStore.open(store.root)
    assert all(reopened.has_cell(key) for key in keys) and listed == []
    _save(reopened, 50)  # a new row file: rows/ changed after results.parquet
    assert len(RunStore.open(store.root).read_table()) == 51 and listed == ["*.json"]


def test_merging_never_moves_an_older_row_past_a_newer_one(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    temp = root / ".tmp"
    temp.mkdir()
    row = {"cell_key": "k", "output_hash": "h"}
    big = [{"cell_key": f"b{i}", "output_hash": "h"} for i in range(4)]
    # tier-1 parts at t1, t2, t4, t6 and, at t3, a newer row of "k" than the one at t1
    for time_ns, rows in ((1, big + [{**row, "seed": 1}]), (2, big), (3, [{**row, "seed": 3}]), (4, big), (6, big)):
        table_log.write_part(root, rows, temp_dir=temp, time_ns=time_ns)
    table_log.merge_tiers(root, temp_dir=temp)
    rows = {r["cell_key"]: r for r in table_log.read_parts(table_log.part_paths(root))}
    assert rows["k"]["seed"] == 3 and len(table_log.part_paths(root)) == 1
