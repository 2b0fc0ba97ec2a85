"""Open real reports in headless Chromium and check that every picture loads.

The run is made with the command line from one working directory with a relative ``--out`` (as
``make demo`` does) and the report is opened from another, so only references relative to the report
file itself can load. Chromium is driven from its command line: a copy of the report, next to it (so
relative URLs resolve the same), gets a script that lists ``naturalWidth`` of every ``<img>`` after the
page's load event, and ``--dump-dom`` prints it.

Without a Chromium binary the tests are skipped, except under CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
RESULT_ID = "pathseg-image-check"
CHECK_SCRIPT = f"""<script>
window.addEventListener("load", function () {{
  var found = Array.prototype.map.call(document.images, function (img) {{
    return {{src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth}};
  }});
  var out = document.createElement("pre");
  out.id = "{RESULT_ID}";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
}});
</script>"""


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    reason = f"no Chromium on PATH (looked for {', '.join(BROWSERS)}); install Debian's `chromium`"
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {reason}: the report browser test must run in CI")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> str:
    return find_browser()


def chromium(browser: str, profile: Path, cwd: Path, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium with a throwaway profile; its stdout."""
    profile.mkdir(parents=True, exist_ok=True)
    command = [
        browser,
        "--headless",
        "--no-sandbox",  # CI containers run as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *args,
    ]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result.stdout


def image_states(browser: str, report: Path, cwd: Path, profile: Path) -> list[dict]:
    """src, complete and naturalWidth of every <img> of ``report`` once Chromium has loaded it."""
    text = report.read_text(encoding="utf-8")
    text = text.replace("</body>", CHECK_SCRIPT + "</body>") if "</body>" in text else text + CHECK_SCRIPT
    probe = report.with_name(f".image-check-{uuid.uuid4().hex[:8]}.html")  # same folder: same relative URLs
    probe.write_text(text, encoding="utf-8")
    try:
        dom = chromium(browser, profile, cwd, "--dump-dom", probe.resolve().as_uri())
    finally:
        probe.unlink()
    match = re.search(rf'<pre id="{RESULT_ID}">(.*?)</pre>', dom, re.DOTALL)
    assert match, f"the check script did not report (no load event?); DOM starts: {dom[:500]!r}"
    return json.loads(html.unescape(match.group(1)))


def assert_all_images_load(browser: str, report: Path, cwd: Path, profile: Path) -> list[dict]:
    states = image_states(browser, report, cwd, profile)
    assert states, f"{report}: no <img> at all"
    broken = [s["src"] for s in states if not (s["complete"] and s["width"] > 0)]
    assert not broken, f"{report}: images that did not load from the report's folder: {broken}"
    return states


def pathseg(*args: str, cwd: Path) -> None:
    script = Path(sys.executable).with_name("pathseg")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pathseg.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"pathseg {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory holding a small synthetic dataset ``data/`` written by the CLI."""
    root = tmp_path_factory.mktemp("browser") / "work dir"  # a space on the way, for good measure
    root.mkdir()
    pathseg("data", "synth", "data", "-n", "12", "--size", "96", cwd=root)
    return root


def test_train_report_images_load_in_chromium_from_another_cwd(browser, workdir, tmp_path):
    pathseg(
        "train",
        "--train", "data",
        "--test", "data",
        "--classes", "background=0,gland=1",
        "--model", "unet_small",
        "--steps", "4",
        "--batch-size", "2",
        "--crop-size", "64",
        "--out", "rel/run",
        cwd=workdir,
    )  # fmt: skip
    report = workdir / "rel" / "run" / "report.html"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    states = assert_all_images_load(browser, report, elsewhere, tmp_path / "profile")
    sources = [s["src"] for s in states]
    assert "figures/learning_curve.png" in sources
    assert any(s.startswith("test/overlays/") for s in sources)
    shot = tmp_path / "report.png"
    chromium(browser, tmp_path / "profile", elsewhere, f"--screenshot={shot}", "--window-size=1200,3000",
             report.resolve().as_uri())  # fmt: skip
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_pretrain_report_images_load_in_chromium_from_another_cwd(browser, workdir, tmp_path):
    pathseg(
        "pretrain",
        "--images", "data",
        "--steps", "2",
        "--crop-size", "64",
        "--batch-size", "2",
        "--set", "samples.count=4",
        "--set", "samples.sampler.steps=4",
        "--set", "train.eval_every=2",
        "--out", "rel/pretrain",
        cwd=workdir,
    )  # fmt: skip
    report = workdir / "rel" / "pretrain" / "report.html"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sources = [s["src"] for s in assert_all_images_load(browser, report, elsewhere, tmp_path / "profile")]
    assert {"real.png", "samples.png", "figures/learning_curve.png"} <= set(sources)


def test_the_check_detects_a_broken_image(browser, tmp_path):
    from pathseg.data.io import write_image

    folder = tmp_path / "report dir"
    write_image(folder / "good.png", np.full((6, 9, 3), 200, np.uint8))
    report = folder / "report.html"
    report.write_text(
        "<!doctype html><html><body><img src='good.png'><img src='figures/good.png'></body></html>"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    states = image_states(browser, report, elsewhere, tmp_path / "profile")
    assert [(s["src"], s["width"]) for s in states] == [("good.png", 9), ("figures/good.png", 0)]
    with pytest.raises(AssertionError, match=r"figures/good\.png"):
        assert_all_images_load(browser, report, elsewhere, tmp_path / "profile")
    assert sorted(p.name for p in folder.iterdir()) == ["good.png", "report.html"]  # probe removed
