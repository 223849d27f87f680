"""The fMoW path end to end on the committed fMoW fixture: pretrain a few steps -> export -> index -> evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from indexing.build import build
from indexing.evaluate import evaluate
from indexing.search import search_image
from training.config import load_config
from training.engine import pretrain
from training.export import export_run

FMOW = Path(__file__).resolve().parent / "data" / "fmow" / "fmow-rgb"


def test_fmow_pretrain_export_index_evaluate(tmp_path):
    config = load_config(None, method="ijepa", batch_size=4, log_every=1,
                         model={"embed_dim": 48, "depth": 2, "num_heads": 2},
                         ijepa={"pred_dim": 32, "pred_depth": 2},
                         data={"image_size": 64, "fmow_crop": "box"}, monitor={"every": 0})
    summary = pretrain(config, str(FMOW), tmp_path / "run", max_steps=3, show_progress=False)
    assert summary["step"] >= 1

    card = export_run(tmp_path / "run", tmp_path / "models" / "fmow-ijepa", check_images=4)
    assert card["training_data"] == str(FMOW) and card["parity"]["max_abs_diff"] <= 1e-4

    model = tmp_path / "models" / "fmow-ijepa"
    result = build(model, FMOW, tmp_path / "index")
    assert result.images > 0
    assert any("fountain_110_1_msrgb" in path + reason for _, path, reason in result.skipped)  # corrupt JSON
    con = duckdb.connect(str(result.index_dir / "catalog.duckdb"), read_only=True)
    rows = con.execute("SELECT path, label, split, lat, lon, timestamp, gsd FROM images").fetchall()
    con.close()
    assert {r[2] for r in rows} == {"train", "val"}
    assert any(r[3] is not None and r[5] is not None and r[6] is not None for r in rows)  # from the JSON

    query = next(FMOW.glob("train/airport/*/*_rgb.jpg"))
    hits = search_image(model, query, k=3, index_dir=tmp_path / "index")
    assert len(hits) == 3 and all(h["score"] <= 1.0 + 1e-5 for h in hits)

    table = evaluate([str(model)], FMOW, tmp_path / "index", json_file=tmp_path / "eval.json")
    assert "| fmow-ijepa |" in table and "| raw-pixels |" in table and "queries = val" in table
    numbers = json.loads((tmp_path / "eval.json").read_text())
    assert numbers["tuning"] == "none (C=1)" and set(numbers["rows"]) == {
        "fmow-ijepa", "random-init", "raw-pixels", "colour-histogram", "colour-histogram-hellinger"}
