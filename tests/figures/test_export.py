"""Studies exported where researchers look (issue #29): a Hugging Face dataset, an MLflow run and a W&B table, each
read back: the row count, every table column, and one image equal pixel for pixel to the run folder's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from img2img_lab.cli.main import main
from img2img_lab.images.hashes import content_hash
from img2img_lab.store.run_store import RunStore


@pytest.fixture(scope="module")
def study(tiny_pipe, tmp_path_factory):
    from conftest import structured_image

    from img2img_lab.plan.sweep_plan import SweepPlan
    from img2img_lab.sweep.run import run_sweep

    folder = tmp_path_factory.mktemp("export")
    structured_image(32).save(folder / "source.png")
    plan = SweepPlan(images=[str(folder / "source.png")], prompts=["a cat", "a dog"], strengths=[0.3, 0.7],
                     seeds=[0, 1], steps=[4], guidance_scales=[2.0])
    run_sweep(plan, folder / "run", pipe=tiny_pipe, metrics=["ssim", "psnr"], progress=False)
    store = RunStore.open(folder / "run")
    return store, store.read_table()


def test_a_hugging_face_dataset_loads_back_offline(study, tmp_path, capsys):
    from datasets import load_dataset

    store, table = study
    assert main(["export", str(store.root), "--to", "hf-dataset", str(tmp_path / "hf")]) == 0
    assert "exported" in capsys.readouterr().out
    dataset = load_dataset(str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "cache"))
    assert dataset.num_rows == len(table) == 8
    assert set(table.columns) | {"output", "source_image"} == set(dataset.column_names)
    row = dataset[3]
    assert content_hash(np.asarray(row["output"].convert("RGB"))) == row["output_hash"]
    assert np.array_equal(np.asarray(row["output"].convert("RGB")),
                          np.asarray(store.load_output({"cell_key": row["cell_key"]})))
    assert content_hash(np.asarray(row["source_image"].convert("RGB"))) == row["source_hash"]


def test_an_mlflow_run_holds_the_plan_the_table_and_the_figures(study, tmp_path, capsys, monkeypatch):
    """A local file store (MLflow 3 asks for MLFLOW_ALLOW_FILE_STORE to use one; mlflow-skinny has no SQLite store)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store, table = study
    uri = (tmp_path / "mlruns").as_uri()
    assert main(["export", str(store.root), "--to", "mlflow", "--tracking-uri", uri]) == 0
    run_id = capsys.readouterr().out.split("MLflow run ")[1].split()[0]
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("img2img-lab")
    loaded = mlflow.load_table("results.json", run_ids=[run_id])
    assert len(loaded) == len(table) and set(table.columns) <= set(loaded.columns)
    assert sorted(loaded["output_hash"]) == sorted(table["output_hash"])
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert json.loads(run.data.params["strengths"]) == [0.3, 0.7]
    artifacts = {item.path for item in mlflow.MlflowClient(uri).list_artifacts(run_id, "figures")}
    assert artifacts == {"figures/grid.png", "figures/curves_ssim.png"}


def test_a_wandb_table_is_written_offline(study, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)
    store, table = study
    assert main(["export", str(store.root), "--to", "wandb", str(tmp_path / "wb")]) == 0
    assert "wandb sync" in capsys.readouterr().out
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    staged = [path for path in (tmp_path / "wb" / "data").rglob("*") if path.is_file()]  # the artifact, for sync
    tables = [json.loads(path.read_bytes()) for path in staged if path.read_bytes()[:1] == b"{"]
    saved = next(document for document in tables if "columns" in document and "data" in document)
    assert len(saved["data"]) == len(table) and saved["columns"][-2:] == ["output", "source_image"]
    assert all(row[-1]["_type"] == row[-2]["_type"] == "image-file" for row in saved["data"])
    pngs = [path for path in staged if path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"]
    assert len(pngs) >= len(set(table["output_hash"]))


def test_a_missing_package_names_the_extra(study, monkeypatch, capsys):
    import builtins

    store, _ = study
    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    monkeypatch.delitem(__import__("sys").modules, "wandb", raising=False)
    assert main(["export", str(store.root), "--to", "wandb"]) == 2
    assert "pip install 'img2img-lab[export]'" in capsys.readouterr().err
    assert main(["export", str(store.root), "--to", "tensorboard"]) == 2
    assert "unknown export target 'tensorboard'" in capsys.readouterr().err
