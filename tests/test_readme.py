"""The README's Python example runs as written."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs() -> None:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the API section has no python example"
    scope: dict = {}
    exec(compile(blocks[0], str(README), "exec"), scope)  # noqa: S102 - our own documentation
    out = scope["out"]
    assert set(out) == {"cls", "patch", "loss"} and bool(out["loss"].isfinite())
    assert "pos_embed" in scope["load_file"]("/tmp/ibot_demo_backbone.pth")["state_dict"]
