"""The shared pieces of the harness layer: the record writer (``ibot.records``), the report page (``ibot.report``)
and the frozen-feature definition (``ibot.features``)."""
from __future__ import annotations

import base64
import json
import math
import re

import pytest
import torch

from ibot.features import FeatureSpec, spec_features
from ibot.records import RecordError, file_sha256, read_record, schema_tag, write_record
from ibot.report import Page, Strong
from ibot.vit import build_vit


# -------------------------------------------------------------------------------------------------------- records
def test_record_is_strict_json_with_its_schema_first(tmp_path) -> None:
    path = tmp_path / "r.json"
    write_record(path, {"acc": math.nan, "inf": -math.inf, "pair": (1, 2), "t": torch.tensor(0.5)},
                 schema=schema_tag("demo", 3))
    text = path.read_text()
    assert text.startswith('{\n  "schema": "ibot-suite/demo/3"') and "NaN" not in text
    assert json.loads(text) == {"schema": "ibot-suite/demo/3", "acc": None, "inf": None, "pair": [1, 2], "t": 0.5}
    assert read_record(path, kind="demo")["pair"] == [1, 2]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_record_reader_names_the_file_and_the_fix(tmp_path) -> None:
    path = tmp_path / "r.json"
    write_record(path, {"x": 1}, schema=schema_tag("demo", 1))
    with pytest.raises(RecordError, match=r"r\.json: key 'schema' is 'ibot-suite/demo/1', expected "
                                          r"'ibot-suite/other/'"):
        read_record(path, kind="other")
    with pytest.raises(RecordError, match="ibot-suite/demo/2"):
        read_record(path, schema=schema_tag("demo", 2))
    path.write_text('{"x": ')
    with pytest.raises(RecordError, match=r"r\.json is not valid JSON"):
        read_record(path)
    with pytest.raises(ValueError, match="schema_tag"):
        write_record(path, {}, schema="my-own-format")


def test_failed_write_keeps_the_previous_record(tmp_path) -> None:
    path = tmp_path / "r.json"
    write_record(path, {"x": 1}, schema=schema_tag("demo", 1))
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_record(path, {"x": object()}, schema=schema_tag("demo", 1))
    assert path.read_bytes() == before


def test_file_sha256(tmp_path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ----------------------------------------------------------------------------------------------------------- page
def test_page_renders_markdown_and_self_contained_html(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    page = Page("Report <1>")
    page.heading("Numbers")
    page.table(["model", "linear", "knn"], [["a|b\nc", Strong("71.2"), "70.0"], ["<script>", "1", "2"]],
               groups=[("", 1), ("CIFAR-10", 2)])
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    page.figure(fig, "curve", "a curve")
    page.links([("leaderboard", "leaderboard.html"), ("odd name", "a b/report.html")])
    paths = page.write(tmp_path)
    md = paths["md"].read_text()
    assert "| model | CIFAR-10 · linear | CIFAR-10 · knn |" in md
    assert "| a\\|b c | **71.2** | 70.0 |" in md and "&lt;script&gt;" in md and "<script>" not in md
    assert "![a curve](plots/curve.png)" in md and paths["curve"].read_bytes().startswith(b"\x89PNG")
    assert "- [leaderboard](leaderboard.html)" in md and "(<a b/report.html>)" in md
    html = paths["html"].read_text()
    assert "<title>Report &lt;1&gt;</title>" in html and "&lt;script&gt;" in html and "<script" not in html
    assert '<th colspan="2">CIFAR-10</th>' in html and "<b>71.2</b>" in html
    png = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(png) == paths["curve"].read_bytes()
    assert "http://" not in html and "https://" not in html


def test_page_extend_nests_headings_and_keeps_figures() -> None:
    inner = Page("Suite")
    inner.heading("Reports")
    inner.figure(b"\x89PNG fake", "chart", "chart")
    outer = Page("Demo")
    outer.extend(inner)
    assert "<h2>Suite</h2>" in outer.html() and "<h3>Reports</h3>" in outer.html()
    assert "## Suite" in outer.markdown() and "### Reports" in outer.markdown() and "chart" in outer.figures
    with pytest.raises(ValueError, match="rows"):
        outer.table(["a", "b"], [["1"]])


# ------------------------------------------------------------------------------------------------------- features
def test_feature_spec_dicts_and_legacy_forms() -> None:
    assert FeatureSpec.from_dict({"n_last_blocks": 4, "pooling": "cls+avgpool"}) == FeatureSpec(4, "cls+avgpool")
    assert FeatureSpec.from_dict({"n_last_blocks": 4, "avgpool": True}) == FeatureSpec(4, "cls+avgpool")
    assert [FeatureSpec.from_avgpool(2, a).pooling for a in (0, 1, 2)] == ["cls", "avgpool", "cls+avgpool"]
    spec = FeatureSpec(4, "cls+avgpool")
    assert FeatureSpec.from_dict(spec.to_dict()) == spec and spec.label == "cls4+avgpool" and spec.dim(384) == 1920
    assert FeatureSpec(4, "avgpool").dim(384) == 384 and FeatureSpec(4, "avgpool").blocks_read == 1
    with pytest.raises(ValueError, match="pooling"):
        FeatureSpec(1, "mean")
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        FeatureSpec(3).check(2)


def test_spec_features_match_the_token_definition() -> None:
    torch.manual_seed(0)
    model = build_vit("vit_tiny", patch_size=8, img_size=32, depth=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.get_intermediate_layers(x, 3, norm=True)
        both, cls, avg = spec_features(model, x, [FeatureSpec(2, "cls+avgpool"), FeatureSpec(3), FeatureSpec(1,
                                                                                                             "avgpool")])
    mean_patch = tokens[-1][:, 1:].mean(dim=1)
    assert torch.equal(both, torch.cat([tokens[1][:, 0], tokens[2][:, 0], mean_patch], dim=-1))
    assert torch.equal(cls, torch.cat([t[:, 0] for t in tokens], dim=-1))
    assert torch.equal(avg, mean_patch)
