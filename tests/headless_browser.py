"""Open an HTML report in headless Chromium for the report tests: script errors, image decoding, a screenshot.

Chromium is installed by ``tools/setup.sh`` where it can be (Debian ``apt-get install chromium`` as root); without
it the tests that use this module fail, naming what to install — they never skip.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Injected as the first thing in <head>: records uncaught errors and failed resource loads, then, once the page
# has loaded, how many <img> there are and how many decoded to a real picture.
_PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(e.message || ('failed to load ' + ((e.target && (e.target.src || e.target.href)) || '?')));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 100 && i.naturalHeight > 100; });
  document.body.setAttribute('data-probe-images', imgs.length + ':' + ok.length);
  document.body.setAttribute('data-probe-errors', JSON.stringify(window.__errors));
  document.body.setAttribute('data-probe-rows', document.querySelectorAll('table tr').length);
});
</script>"""


@dataclass
class Rendered:
    images: int  # <img> elements on the page
    decoded: int  # of those, decoded to a picture larger than 100 x 100
    errors: list[str]  # uncaught script errors and failed loads
    table_rows: int
    screenshot: Path

    def assert_ok(self, min_images: int) -> None:
        assert not self.errors, f"errors while loading the page: {self.errors}"
        assert self.images >= min_images and self.decoded == self.images, (self.images, self.decoded)
        assert_not_blank(self.screenshot)


def chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "chrome",
                 "headless_shell"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium is needed for the report rendering tests and was not found: run "
                "`bash tools/setup.sh` as root (it installs Debian's chromium), `apt-get install -y chromium`, or "
                "point $CHROMIUM at a chrome / headless_shell binary")


def render(page: Path, tmp: Path, size: tuple[int, int] = (1280, 2400)) -> Rendered:
    """Load ``page`` (with the probe injected, written next to it so relative links resolve) and screenshot it."""
    exe = chromium()
    text = page.read_text()
    probe_page = page.with_name(f".probe-{page.name}")
    probe_page.write_text(re.sub(r"<head[^>]*>", lambda m: m.group(0) + _PROBE, text, count=1)
                          if "<head" in text else _PROBE + text)
    common = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
              "--virtual-time-budget=10000", f"--user-data-dir={tmp / 'chromium-profile'}"]
    try:
        dom = subprocess.run(common + ["--dump-dom", probe_page.as_uri()], capture_output=True, text=True,
                             timeout=180)
    finally:
        probe_page.unlink()
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-probe-images="(\d+):(\d+)"', dom.stdout)
    assert found, "the probe script did not run (page failed to load?):\n" + dom.stdout[:1000]
    errors = re.search(r"data-probe-errors=\"([^\"]*)\"", dom.stdout).group(1)
    errors = [] if errors in ("[]", "") else [errors.replace("&quot;", '"')]
    rows = int(re.search(r'data-probe-rows="(\d+)"', dom.stdout).group(1))
    shot = tmp / f"{page.parent.name}-{page.stem}.png"
    subprocess.run(common + [f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=180, check=True)
    return Rendered(int(found.group(1)), int(found.group(2)), errors, rows, shot)


def assert_not_blank(png: Path) -> None:
    """The screenshot shows a page with content: enough non-background pixels and colours (plots, text)."""
    img = np.asarray(Image.open(png).convert("RGB"))
    background = np.median(img.reshape(-1, 3), axis=0)
    ink = np.abs(img.astype(int) - background).sum(-1) > 60
    colours = len(np.unique(img.reshape(-1, 3)[::7], axis=0))
    assert ink.mean() > 0.01 and colours > 50, f"{png} looks blank: {ink.mean():.4f} ink, {colours} colours"
