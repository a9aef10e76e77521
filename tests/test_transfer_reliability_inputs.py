"""Reliability of the transfer harness on bad input files: truncated CIFAR pickles and annotation files, ImageFolder
classes without images, unreadable and 16-bit images (``ibot.images.open_rgb``), and result files the leaderboard
must not trust (truncated JSON, metrics that are not accuracies, failed runs).

Errors are caught by their base class and told apart by their message, so each test fails on its own merits on code
without the checks.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ibot.images import BadImageError
from transfer.datasets import DatasetLayoutError, build_dataset, read_cifar, read_imagefolder
from transfer.leaderboard import build_table, main, to_csv, to_html, to_latex, to_markdown
from transfer.results import SCHEMA, ResultFormatError, load_result, write_result


# ------------------------------------------------------------------------------------------------------------ CIFAR
def _cifar10(root: Path, n: int = 2) -> Path:
    """A CIFAR-10 python-pickle folder with ``n`` images per batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [0, 9][:n],
                 "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh, protocol=2)
    return folder


def _truncate(path: Path, keep: float = 0.5) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: int(len(blob) * keep)])


@pytest.mark.parametrize("name", ["data_batch_3", "batches.meta", "test_batch"])
def test_truncated_cifar_pickle_names_the_file_and_the_fix(tmp_path: Path, name: str) -> None:
    folder = _cifar10(tmp_path)
    _truncate(folder / name)
    split = "test" if name == "test_batch" else "train"
    with pytest.raises(ValueError) as err:
        read_cifar(tmp_path, split)
    msg = str(err.value)
    assert str(folder / name) in msg and "truncated" in msg and "re-download" in msg, msg
    assert "--data-root" in msg and "cs.toronto.edu" in msg
    assert type(err.value).__name__ == "DatasetFileError"


def test_cifar_pickle_with_wrong_contents_names_the_file(tmp_path: Path) -> None:
    folder = _cifar10(tmp_path)
    with open(folder / "data_batch_2", "wb") as fh:  # readable, but 1000 values per image
        pickle.dump({"data": np.zeros((2, 1000), dtype=np.uint8), "labels": [0, 1]}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_2' key 'data' is uint8 \(2, 1000\), not rows of 3072"):
        read_cifar(tmp_path, "train")
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1, 2]}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_2' has 2 images but 3 'labels'; re-download"):
        read_cifar(tmp_path, "train")
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"names": []}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"batches\.meta' has no 'label_names'"):
        read_cifar(tmp_path, "test")


def test_cifar_code_refusal_names_the_file(tmp_path: Path) -> None:
    folder = _cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": Evil()}, fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"batches\.meta': CIFAR pickle refers to \w+\.print, which"):
        read_cifar(tmp_path, "train")


def test_truncated_annotation_files_are_named(tmp_path: Path) -> None:
    with open(tmp_path / "train2018.json", "w") as fh:
        fh.write('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [')
    with pytest.raises(ValueError, match=r"train2018\.json' is not valid JSON .*truncated or corrupt: re-download"):
        build_dataset("inat2018", tmp_path, "train")
    flowers = tmp_path / "flowers"
    flowers.mkdir()
    (flowers / "imagelabels.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 20)
    (flowers / "setid.mat").write_bytes(b"")
    with pytest.raises(ValueError, match=r"imagelabels\.mat' cannot be read as a MATLAB file"):
        build_dataset("flowers102", flowers, "train")


# ------------------------------------------------------------------------------------------------------ ImageFolder
def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_imagefolder_class_without_images_is_an_error(tmp_path: Path) -> None:
    for c in ("ant", "bee"):
        _png(tmp_path / "train" / c / "0.png")
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "readme.txt").write_text("images were not copied")
    with pytest.raises(DatasetLayoutError, match=r"class folder '.*train/cat' has no images .*every class needs at "
                                                 r"least one image: put its images there, or delete the folder"):
        build_dataset("imagefolder", tmp_path, "train")
    lenient = read_imagefolder(tmp_path, "train", allow_empty_classes=True)  # a data set that says otherwise
    assert lenient.classes == ["ant", "bee", "cat"] and lenient.targets == [0, 1]
    # another split may leave a class out (labels keep the train indices) but not hold an empty class folder
    _png(tmp_path / "train" / "cat" / "0.png")
    _png(tmp_path / "test" / "ant" / "0.png")
    assert build_dataset("imagefolder", tmp_path, "test").targets == [0]
    (tmp_path / "test" / "bee").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"class folder '.*test/bee' has no images"):
        build_dataset("imagefolder", tmp_path, "test")


# ----------------------------------------------------------------------------------------------------------- images
def test_file_images_are_read_by_open_rgb(tmp_path: Path) -> None:
    """16-bit images are scaled to 8 bits (a bare ``convert('RGB')`` clips them to white)."""
    _png(tmp_path / "train" / "a" / "rgb.png", 200)
    Image.fromarray(np.full((8, 8), 0x7F00, dtype=np.uint16)).save(tmp_path / "train" / "a" / "deep.png")
    ds = build_dataset("imagefolder", tmp_path, "train")
    img = ds.load([Path(p).name for p, _ in ds.samples].index("deep.png"))
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [127, 127, 127]


@pytest.mark.parametrize("damage", ["truncated", "text", "empty"])
def test_unreadable_image_names_the_file(tmp_path: Path, damage: str) -> None:
    for i in range(3):
        _png(tmp_path / "train" / "a" / f"{i}.png", 10 * i)
    bad = tmp_path / "train" / "a" / "1.png"
    if damage == "truncated":
        _truncate(bad, 0.4)
    elif damage == "text":
        bad.write_text("<html>404</html>")
    else:
        bad.write_bytes(b"")
    ds = build_dataset("imagefolder", tmp_path, "train")
    assert np.asarray(ds[0][0])[0, 0, 0] == 0 and np.asarray(ds[2][0])[0, 0, 0] == 20
    with pytest.raises(OSError) as err:
        ds[1]
    assert isinstance(err.value, BadImageError)
    msg = str(err.value)
    assert str(bad) in msg and "sample 1 of 3" in msg and "replace the file" in msg, msg


def test_missing_image_stays_a_layout_error(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "a" / "0.png")
    ds = build_dataset("imagefolder", tmp_path, "train")
    (tmp_path / "train" / "a" / "0.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"image listed by the data set is missing: '.*0\.png' \(sample 0\)"):
        ds[0]


# ------------------------------------------------------------------------------------------------------ leaderboard
def rec(model: str, dataset: str, protocol: str, value, seed: int = 0, **extra) -> dict:
    return {"schema": SCHEMA, "protocol": protocol, "seed": seed, "finished": "2026-01-01T00:00:00+00:00",
            "model": {"name": model, "params": 21_700_000, "pretrain_data": "IN-1k"}, "dataset": {"name": dataset},
            "metric": {"name": "top1", "value": value}, **extra}


INVALID_VALUES = {"null": None, "nan": float("nan"), "negative": -1.0, "above100": 150.0, "text": "99.0"}


def test_invalid_metrics_are_never_a_result(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each invalid record is the only one of its column, or beats the valid one numerically: neither may be bold."""
    records = [rec("good", "cifar10", "knn", 50.0), rec("good", "cars", "knn", 40.0)]
    for i, (label, value) in enumerate(INVALID_VALUES.items()):
        records.append(rec(f"bad-{label}", "cifar10", "knn", value, path=f"/runs/{label}/result.json"))
    records.append(rec("bad-failed", "cifar10", "knn", 99.0, status="failed", error="CUDA out of memory"))
    records.append(rec("only-invalid", "flowers102", "knn", -1.0, path="/runs/flowers/result.json"))
    records.append(rec("mixed", "cifar10", "knn", 60.0, seed=0))
    records.append(rec("mixed", "cifar10", "knn", float("nan"), seed=1, path="/runs/mixed1/result.json"))
    with caplog.at_level(logging.WARNING, logger="transfer.leaderboard"):
        table = build_table(records)
    rows = {r.name: r for r in table.rows}
    best = table.best()
    assert best[("cifar10", "knn")] == 50.0 and ("flowers102", "knn") not in best
    for name in [f"bad-{label}" for label in INVALID_VALUES] + ["bad-failed", "mixed"]:
        assert not rows[name].cells[("cifar10", "knn")].valid, name
    assert rows["mixed"].cells[("cifar10", "knn")].values == [60.0]  # the valid seed is kept, the cell is invalid
    md = to_markdown(table)
    line = {r.split(" | ")[0][2:]: r for r in md.splitlines() if r.startswith("| ") and not r.startswith("| Model")}
    assert "**50.0**" in line["good"]
    for name in [f"bad-{label}" for label in INVALID_VALUES] + ["bad-failed", "mixed", "only-invalid"]:
        assert "invalid" in line[name] and "**" not in line[name], line[name]
    assert "-1.0" not in md and "150.0" not in md and "| nan" not in md.lower()
    assert "invalid = a run of this cell gave no valid accuracy" in md
    assert rows["only-invalid"].mean(table.columns) is None and rows["mixed"].mean(table.columns) is None
    csv_rows = {r["model"]: r for r in csv.DictReader(io.StringIO(to_csv(table)))}
    assert csv_rows["only-invalid"]["flowers102/knn"] == "" and csv_rows["only-invalid"]["flowers102/knn_best"] == "0"
    assert csv_rows["only-invalid"]["flowers102/knn_invalid"] == "1" and csv_rows["mixed"]["cifar10/knn_invalid"] == "1"
    assert csv_rows["good"]["cifar10/knn_best"] == "1" and csv_rows["good"]["cifar10/knn_invalid"] == "0"
    assert "<td>invalid</td>" in to_html(table) and r"\textbf{-1" not in to_latex(table)
    warned = caplog.text
    for label in INVALID_VALUES:
        assert f"'/runs/{label}/result.json'" in warned
    assert "'/runs/flowers/result.json'" in warned and "is not an accuracy in [0, 100]" in warned
    assert "the run failed (status 'failed': CUDA out of memory)" in warned


def _board(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    for i, (model, value) in enumerate((("a", 80.0), ("b", 70.0))):
        write_result(runs / f"{model}" / "knn" / "result.json", rec(model, "cifar10", "knn", value, seed=i))
    (runs / "notes.json").write_text(json.dumps({"not": "a result"}))  # other tools' JSON: skipped
    (runs / "broken_other.json").write_text("{ not json")  # not a transfer result by name or tag: skipped
    return runs


@pytest.mark.parametrize("name", ["result.json", "seed1.json"])
def test_truncated_result_file_is_an_error_naming_it(tmp_path: Path, name: str) -> None:
    runs = _board(tmp_path)
    bad = runs / "c" / "knn" / name
    write_result(bad, rec("c", "cifar10", "knn", 99.0))
    _truncate(bad)
    with pytest.raises(ResultFormatError) as err:
        main([str(runs), "--formats", "md"])
    msg = str(err.value)
    assert str(bad) in msg and "not valid JSON" in msg and "re-run the run that wrote it" in msg, msg
    assert "--skip-invalid" in msg


def test_skip_invalid_warns_and_does_not_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runs = _board(tmp_path)
    truncated = runs / "c" / "knn" / "result.json"
    write_result(truncated, rec("c", "cifar10", "knn", 99.0))
    _truncate(truncated)
    mistyped = runs / "d" / "knn" / "result.json"
    write_result(mistyped, rec("d", "cifar10", "knn", 99.0, seed="0"))
    with caplog.at_level(logging.INFO):
        out = main([str(runs), "--formats", "md", "--skip-invalid"])
    assert "| a |" in out["md"] and "| b |" in out["md"] and "| c |" not in out["md"] and "| d |" not in out["md"]
    assert f"skipped result file '{truncated}'" in caplog.text and f"skipped result file '{mistyped}'" in caplog.text
    assert "2 result files, 2 rows, 1 columns; 2 unreadable files skipped" in caplog.text


def test_load_result_checks_field_types(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    for field, record in (("seed", rec("m", "cifar10", "knn", 1.0, seed="0")),
                          ("model.name", {**rec("m", "cifar10", "knn", 1.0), "model": {"name": 7}}),
                          ("protocol", {**rec("m", "cifar10", "knn", 1.0), "protocol": ["knn"]})):
        write_result(path, record)
        with pytest.raises(ResultFormatError, match=rf"'{path}': field {field} = .* is not a"):
            load_result(path)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(ResultFormatError, match=rf"'{path}' is not a transfer result"):
        load_result(path)
