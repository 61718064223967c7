"""A real headless browser for tests: Debian's Chromium, installed on demand.

``chromium()`` returns the browser's path, installing Debian's ``chromium``
package with apt-get when it is missing (the test machines run as root). Under
CI (``CI`` or ``SOCIETY_CI`` set) a browser that cannot be had fails the test;
elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: apt-get update and install of chromium with its dependencies, on a slow mirror.
INSTALL_TIMEOUT_S = 900
#: One page load, screenshot or DOM dump.
RENDER_TIMEOUT_S = 120
NAMES = ("chromium", "chromium-browser")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
          "--disable-dev-shm-usage", "--no-first-run", "--mute-audio")


def _found() -> str | None:
    return next((p for p in map(shutil.which, NAMES) if p), None)


def _install() -> str:
    """Why Chromium could not be installed, or '' when it was."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine to install Debian's chromium package"
    if os.geteuid() != 0:
        return "installing Debian's chromium package needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
    for cmd in (["apt-get", "update", "-qq"], install):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        if done.returncode != 0:
            return f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
    return ""


def chromium() -> str:
    """Path of a headless-capable Chromium; installs it when missing, else fails (CI) or skips."""
    path = _found()
    if path is None:
        reason = _install()
        path = _found()
        if path is None:
            why = f"no Chromium for the browser test: {reason or 'installed, but not on PATH'}"
            if os.environ.get("CI") or os.environ.get("SOCIETY_CI"):
                pytest.fail(why)
            pytest.skip(why)
    return path


def _run(browser: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([browser, *_FLAGS, *args], capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
    assert done.returncode == 0, f"chromium {args[-1]} exited {done.returncode}: {done.stderr[-2000:]}"
    return done


#: Appended to a copy of the page: once everything is laid out, write each <img>'s state and box into the title.
_PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return {id: i.closest("figure") ? i.closest("figure").id : "", complete: i.complete,
            naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
            x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height};
  });
  document.title = JSON.stringify({height: document.documentElement.scrollHeight, images: imgs});
});
</script>"""


def layout(browser: str, page: Path, width: int) -> dict:
    """The page's laid-out height and, per image, whether it decoded and where it sits (CSS px)."""
    probe = page.with_name(page.stem + ".probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _run(browser, f"--window-size={width},1000", "--virtual-time-budget=5000", "--dump-dom",
               probe.as_uri()).stdout
    start = dom.index("<title>") + len("<title>")
    title = dom[start:dom.index("</title>", start)]
    return json.loads(html.unescape(title))


def screenshot(browser: str, page: Path, out: Path, width: int, height: int) -> Path:
    """A PNG of the whole page at `width` × `height` CSS pixels (one device pixel each)."""
    _run(browser, f"--window-size={width},{height}", f"--screenshot={out}", "--virtual-time-budget=5000",
         page.as_uri())
    assert out.exists(), f"chromium wrote no screenshot to {out}"
    return out
