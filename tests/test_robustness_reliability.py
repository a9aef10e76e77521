"""Reliability of the classification robustness tools on bad input, concurrent and interrupted runs, changed model
files and untrusted result files.

* Concurrent runs into one ``--out`` merge their cells (``fcntl.flock`` on ``<out>.lock``, re-read under the lock).
* Model files are identified by content (SHA-256): a same-size replacement is refused, naming the file and the key.
* Nothing is written before the first finished cell: a refused or failed run leaves the result file byte-identical
  (or absent), and the corrected run needs no ``--restart``.
* A damaged result file, a bad image and a hostile model name are named / escaped.

Runs use a tiny self-describing ViT (``robustness_helpers.tiny_model_files``) on a generated 2 x 2 PNG folder (32 px),
so each command takes about a second.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from robustness_helpers import REPO, check_html_report, load_tool, png_folder, tiny_model_files

from ibot.checkpoint import CheckpointError
from ibot.images import BadImageError
from ibot.records import RecordError
from robustness import backgrounds, cli
from robustness.data import ImageListDataset, list_image_folder, load_rgb
from robustness.store import ConfigMismatchError, ResultStore

RUN = ["--resize", "0", "--crop", "32", "--workers", "0", "--batch-size", "4", "--no-progress", "--log-level",
       "WARNING"]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    backbone, head = tiny_model_files(tmp_path / "model")
    return {"backbone": backbone, "head": head, "data": png_folder(tmp_path / "data"), "out": tmp_path / "r.json"}


def model_flags(f: dict[str, Path]) -> list[str]:
    return ["--backbone", str(f["backbone"]), "--head", str(f["head"])]


def imagenet_c(f: dict[str, Path], *extra: str, corruptions: tuple[str, ...] = ("contrast",),
               severities: tuple[str, ...] = ("1",)) -> list[str]:
    """An ``imagenet-c`` command line; ``extra`` flags come last (and win over earlier ones)."""
    return ["imagenet-c", *model_flags(f), "--out", str(f["out"]), "--data", str(f["data"]), "--corruptions",
            *corruptions, "--severities", *severities, *RUN, *extra]


def snapshot(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


# ------------------------------------------------------------------------------------------------ 1. concurrency
def test_two_writers_of_one_file_merge_their_cells(tmp_path: Path) -> None:
    """Two stores opened on one file before either writes (two processes started together): both keep their cells;
    a group restarted by the other writer under another configuration is refused, never mixed."""
    path = tmp_path / "r.json"
    a, b = ResultStore(path, model="m"), ResultStore(path, model="m")
    a.open_group("imagenet_c", {"seed": 0})
    b.open_group("imagenet_c", {"seed": 0})
    b.open_group("occlusion", {"grid": "8x8"})
    a.put("imagenet_c", "fog/1", {"err": 0.5})
    b.put("imagenet_c", "contrast/1", {"err": 0.25})
    b.put("occlusion", "random/0.50", {"acc": 0.5})
    a.put("imagenet_c", "fog/2", {"err": 0.75})
    data = json.loads(path.read_text())
    assert set(data["groups"]["imagenet_c"]["cells"]) == {"fog/1", "fog/2", "contrast/1"}
    assert set(data["groups"]["occlusion"]["cells"]) == {"random/0.50"}
    assert a.lock_path == tmp_path / "r.json.lock" and a.lock_path.is_file()

    c = ResultStore(path)
    c.open_group("imagenet_c", {"seed": 1}, restart=True)
    c.put("imagenet_c", "fog/1", {"err": 0.1})  # another run restarts the group under another configuration
    before = path.read_bytes()
    with pytest.raises(ConfigMismatchError, match=r"r\.json.*'imagenet_c'.*restarted by another run.*--restart"):
        a.put("imagenet_c", "fog/3", {"err": 0.9})
    assert path.read_bytes() == before


def test_concurrent_processes_into_one_out_keep_every_cell(files: dict[str, Path]) -> None:
    """Three ``python -m robustness.cli`` processes at once into one --out: two add other corruptions to the same
    ImageNet-C group, one adds occlusion; all exit 0 and the file holds every cell of all three."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    commands = [imagenet_c(files, corruptions=("gaussian_noise", "contrast"), severities=("1", "2")),
                imagenet_c(files, corruptions=("pixelate", "brightness"), severities=("1", "2")),
                ["occlusion", *model_flags(files), "--out", str(files["out"]), "--data", str(files["data"]),
                 "--modes", "random", "--levels", "0", "0.25", "0.5", "--grid", "8", "8", *RUN]]
    procs = [subprocess.Popen([sys.executable, "-m", "robustness.cli", *cmd, "--threads", "1"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in commands]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    groups = json.loads(files["out"].read_text())["groups"]
    want = {"clean"} | {f"{c}/{s}" for c in ("gaussian_noise", "contrast", "pixelate", "brightness") for s in (1, 2)}
    assert set(groups["imagenet_c"]["cells"]) == want
    assert set(groups["occlusion"]["cells"]) == {"random/0.00", "random/0.25", "random/0.50"}
    assert all(c["total"] == 4 for g in groups.values() for c in g["cells"].values())


# ------------------------------------------------------------------------------------------ 2. content identity
@pytest.mark.parametrize("which", ["head", "backbone"])
def test_same_size_replacement_of_a_model_file_is_refused(files: dict[str, Path], tmp_path: Path,
                                                         which: str) -> None:
    """A head / backbone file replaced by another of the same size is recognised by its SHA-256: the re-run is
    refused naming the file, the key and the fix; the same content under another path is reused."""
    cli.main(imagenet_c(files))
    stored = files["out"].read_bytes()
    config = json.loads(stored)["groups"]["imagenet_c"]["config"]
    assert len(config[f"{which}_sha256"]) == 64 and which not in config  # by content, not by path
    other = dict(zip(("backbone", "head"), tiny_model_files(tmp_path / "other", seed=1)))
    assert other[which].stat().st_size == files[which].stat().st_size
    original = files[which].read_bytes()
    files[which].write_bytes(other[which].read_bytes())
    with pytest.raises(ConfigMismatchError) as err:
        cli.main(imagenet_c(files))
    msg = str(err.value)
    for part in (str(files["out"]), f"'{which}_sha256'", str(files[which]), "--restart", "another --out"):
        assert part in msg, (part, msg)
    assert files["out"].read_bytes() == stored

    moved = tmp_path / "moved" / f"{which}.pth"  # the original content at another path: same results, reused
    moved.parent.mkdir()
    moved.write_bytes(original)
    computed: list[str] = []
    cli.main(imagenet_c({**files, which: moved}), on_cell_done=lambda k, r: computed.append(k))
    assert computed == [] and files["out"].read_bytes() == stored
    cli.main(imagenet_c(files, "--restart"), on_cell_done=lambda k, r: computed.append(k))
    assert computed == ["clean", "contrast/1"]


# ------------------------------------------------------------------------------------------ 3. nothing half-written
def test_refused_or_failed_runs_leave_the_result_file_byte_identical(files: dict[str, Path]) -> None:
    """Bad flags, a bad head or backbone file, an unfit model and a run failing at its first cell (also with
    --restart) change nothing in an absent or existing result file; the corrected run then needs no --restart."""
    out = files["out"]
    good_head = files["head"].read_bytes()
    files["head"].write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="head.pth"):
        cli.main(imagenet_c(files))
    assert not out.exists()
    files["head"].write_bytes(good_head)
    cli.main(imagenet_c(files))  # corrected: no --restart needed
    stored = out.read_bytes()

    good_backbone = files["backbone"].read_bytes()
    files["backbone"].write_bytes(good_backbone[: len(good_backbone) // 2])  # truncated
    with pytest.raises(CheckpointError, match="backbone.pth"):
        cli.main(imagenet_c(files, corruptions=("fog",)))
    assert out.read_bytes() == stored
    files["backbone"].write_bytes(good_backbone)

    for bad, match in ((["--severities", "0"], r"--severities.*\[0\]"), (["--batch-size", "0"], "--batch-size"),
                       (["--corruptions", "fogg"], "fogg")):
        with pytest.raises(ValueError, match=match):
            cli.main(imagenet_c(files, *bad))
        assert out.read_bytes() == stored
    with pytest.raises(ValueError, match=r"--modes \['salient'\].*does not expose"):
        cli.main(["occlusion", "--torchvision", "alexnet", "--num-classes", "10", "--out", str(out), "--data",
                  str(files["data"]), "--modes", "random", "salient", *RUN])
    assert out.read_bytes() == stored

    broken = files["data"] / "bee" / "1.png"  # the first cell fails on it, after a --restart emptied the group
    good_png = broken.read_bytes()
    broken.write_bytes(good_png[:40])
    with pytest.raises(BadImageError, match=r"1\.png"):
        cli.main(imagenet_c(files, "--restart"))
    assert out.read_bytes() == stored  # the stored cells survived the failed restart
    broken.write_bytes(good_png)
    computed: list[str] = []
    cli.main(imagenet_c(files, corruptions=("contrast", "fog")), on_cell_done=lambda k, r: computed.append(k))
    assert computed == ["fog/1"]


# ------------------------------------------------------------------------------------------------ 4. damaged files
@pytest.mark.parametrize("content", [
    b'{"schema": "ibot-suite/robustness/2", "model": "m", "groups": {"imagenet_c": {"conf',  # truncated
    b"\xff\xfe\x00garbage",  # not text
    b"[1, 2]",
    b'{"schema": "ibot-suite/robustness/2", "model": "m", "meta": {}}',
    b'{"schema": "ibot-suite/robustness/2", "model": "m", "meta": {}, "groups": {"ood": {"config": {}, "cells": 3}}}',
], ids=["truncated", "binary", "array", "no-groups", "cells-not-object"])
def test_damaged_result_file_is_named_with_the_fix(files: dict[str, Path], content: bytes, capsys) -> None:
    files["out"].write_bytes(content)
    with pytest.raises(RecordError) as err:
        cli.main(imagenet_c(files))
    msg = str(err.value)
    assert str(files["out"]) in msg and "delete" in msg and "another --out" in msg, msg
    assert files["out"].read_bytes() == content
    with pytest.raises(RecordError, match="r.json"):
        cli.main(["report", str(files["out"]), "--out-dir", str(files["out"].parent / "report")])
    assert not (files["out"].parent / "report").exists()
    assert cli.run_command_line(imagenet_c(files)) == 2  # the shell gets one line, no traceback
    err_text = capsys.readouterr().err
    assert err_text.startswith("robustness.cli: error: ") and str(files["out"]) in err_text
    assert "Traceback" not in err_text


# ------------------------------------------------------------------------------------------------ 5. images
def test_images_are_read_by_the_suite_reader_and_bad_ones_named(tmp_path: Path) -> None:
    """16-bit images are scaled (not clipped to white); truncated files, non-images and decompression bombs raise
    BadImageError naming the file, in the main process and through data-loader workers; bad masks too."""
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(deep)
    assert np.asarray(load_rgb(deep)).max() == 128  # PIL's convert('RGB') clips this to 255
    folder = png_folder(tmp_path / "data")
    truncated = folder / "ant" / "1.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    ds = ImageListDataset(list_image_folder(folder), None, 32)
    with pytest.raises(BadImageError, match=r"ant/1\.png.*(replace|remove)"):
        ds[1]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    with pytest.raises(BadImageError, match=r"ant/1\.png"):
        next(iter(loader))
    bomb = tmp_path / "bomb.png"
    Image.new("1", (15000, 15000)).save(bomb)  # 225 Mpx in a few kB
    with pytest.raises(BadImageError, match=r"bomb\.png.*remove"):
        load_rgb(bomb)

    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "img" / "x.png")
    (tmp_path / "mask" / "x.npy").write_bytes(b"\x93NUMPY garbage")
    base = backgrounds.ForegroundImages(backgrounds.read_image_mask_folder(tmp_path / "img", tmp_path / "mask"),
                                        None, None)
    with pytest.raises(BadImageError, match=r"mask.*x\.npy"):
        base.arrays(0)
    (tmp_path / "mask" / "x.npy").unlink()
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(tmp_path / "mask" / "x.png")
    base = backgrounds.ForegroundImages(backgrounds.read_image_mask_folder(tmp_path / "img", tmp_path / "mask"),
                                        None, None)
    assert base.arrays(0)[1].all()  # a 16-bit mask read by the suite's reader


# ------------------------------------------------------------------------------------------------ 6. report
class _Cells(HTMLParser):
    """Text of every <td> / <th>, and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_report_escapes_hostile_model_names(tmp_path: Path) -> None:
    """A model name with ``|``, ``<``, ``>``, newlines and matplotlib mathtext breaks no Markdown table, starts no
    heading and passes no raw HTML; the HTML page shows it as text."""
    name = "evil | <b>bold</b> <script>x</script>\n# Injected heading\n| a | b |\n$\\frac$ _hidden"
    shown = "evil | <b>bold</b> <script>x</script> # Injected heading | a | b | $\\frac$ _hidden"
    path = tmp_path / "evil.json"
    store = ResultStore(path, model=name)
    store.open_group("imagenet_c", {"seed": 0})
    store.put_many("imagenet_c", {"clean": {"err": 0.2, "acc": 0.8},
                                  **{f"fog/{s}": {"err": 0.3 + 0.1 * s, "acc": 0.7 - 0.1 * s} for s in (1, 2)}})
    store.open_group("occlusion", {"grid": "8x8\n# grid", "fill": "black <i>"})
    store.put_many("occlusion", {f"random/{lv:.2f}": {"acc": 0.8 - lv, "info_loss": lv} for lv in (0.0, 0.5)})
    load_tool("robustness_report").main([str(path), "--out-dir", str(tmp_path / "report")])

    md = (tmp_path / "report" / "report.md").read_text()
    assert "<b>" not in md and "<script" not in md and "<i>" not in md
    assert not any(line.lstrip().startswith("# Injected") or line.startswith("# grid") for line in md.splitlines())
    tables = [block.splitlines() for block in md.split("\n\n") if block.startswith("|")]
    assert tables
    for table in tables:  # every row has the header's number of (unescaped) cell separators
        widths = {len(line.replace("\\|", "")) - len(line.replace("\\|", "").replace("|", "")) for line in table}
        assert len(widths) == 1, table
    assert any("evil \\| &lt;b&gt;bold&lt;/b&gt;" in line for table in tables for line in table)

    html = (tmp_path / "report" / "report.html").read_text()
    check_html_report(tmp_path / "report" / "report.html", min_plots=2)
    probe = _Cells()
    probe.feed(html)
    assert shown in probe.cells
    assert not {"b", "script", "i"} & probe.tags
