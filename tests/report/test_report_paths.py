"""Reports reference their images and neighbours relative to the report file, whatever the cwd."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from pathseg.data.io import write_image
from pathseg.report.html import image_tag, link_tag, relative_url, write_report
from pathseg.report.run_report import build_run_report

ODD_NAME = "tile 1#a%20ü"  # a space, '#', a literal '%20' and a non-ASCII letter


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        elif tag == "a" and values.get("href"):
            self.links.append(values["href"])


def references(report: Path) -> _References:
    parser = _References()
    parser.feed(report.read_text(encoding="utf-8"))
    return parser


def resolve(report: Path, url: str) -> Path:
    """The file a browser opens for ``url`` on the page ``report`` (a relative URL, never absolute)."""
    parts = urlsplit(url)
    assert not parts.scheme and not parts.netloc and not parts.path.startswith("/"), url
    return report.parent / unquote(parts.path)


def _png(path: Path, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.full((size, size, 3), 128, np.uint8))
    return path


def _fake_run(run_dir: Path) -> None:
    lines = [{"split": "train", "step": s, "loss": 1.0 / s} for s in range(1, 11)]
    lines += [{"split": "val", "step": 10, "dice": 0.8}]
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (run_dir / "test").mkdir()
    (run_dir / "test" / "metrics.json").write_text(json.dumps({"dice": 0.75, "hd95": 3.5}))
    (run_dir / "config.yaml").write_text("train:\n  steps: 10\nnote: a<b & c\n")
    for name in ("synth_00000", ODD_NAME):
        _png(run_dir / "test" / "overlays" / f"{name}.png")


def test_run_report_images_resolve_relative_to_the_report_from_any_cwd(tmp_path, monkeypatch):
    writer, reader = tmp_path / "writer", tmp_path / "reader"
    reader.mkdir()
    monkeypatch.chdir(_png(writer / "x.png").parent)
    _fake_run(Path("out/run"))
    report = build_run_report(Path("out/run"))  # relative, as with `pathseg demo --out demo_out`
    assert report == Path("out/run/report.html")

    monkeypatch.chdir(reader)  # open it from elsewhere, as a browser does: relative to the file
    report = writer / "out" / "run" / "report.html"
    found = references(report)
    assert len(found.images) == 3  # learning curve and two overlays
    for src in found.images:
        assert resolve(report, src).is_file(), src
    assert any(ODD_NAME in unquote(src) for src in found.images)
    assert all("out/run" not in src for src in found.images)
    text = report.read_text(encoding="utf-8")
    assert "a&lt;b &amp; c" in text  # the configuration is escaped, not parsed as HTML


def test_absolute_and_relative_out_give_the_same_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_run(Path("rel/run"))
    _fake_run(tmp_path / "abs" / "run")
    relative = references(build_run_report(Path("rel/run"))).images
    absolute = references(build_run_report(tmp_path / "abs" / "run")).images
    assert relative == absolute and relative


def test_image_tag_paths_from_cwd_from_report_absolute_and_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run, pretrain = Path("demo/run"), Path("demo/pretrain")
    run.mkdir(parents=True)
    _png(pretrain / "real.png")
    odd = _png(pretrain / f"{ODD_NAME}.png")
    from_cwd = image_tag(pretrain / "real.png", run, "real")
    from_report = image_tag(Path("../pretrain/real.png"), run, "real")  # as the demo writes it
    absolute = image_tag((pretrain / "real.png").resolve(), run.resolve(), "real")
    assert from_cwd == from_report == absolute
    assert 'src="../pretrain/real.png"' in from_cwd
    assert "<figcaption>real</figcaption>" in from_cwd
    quoted = image_tag(odd, run)
    assert 'src="../pretrain/tile%201%23a%2520%C3%BC.png"' in quoted
    missing = image_tag(pretrain / "samples.png", run, "samples")
    assert "<img" not in missing and "not written" in missing and "samples" in missing
    assert relative_url(pretrain / "real.png", Path("demo")) == "pretrain/real.png"
    assert link_tag(pretrain / "report.html", run, "its report") == (
        '<a href="../pretrain/report.html">its report</a>'
    )


def test_write_report_rewrites_cwd_relative_and_marks_dead_references(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _png(Path("out/run/figures/curve.png"))
    _png(Path("out/other/picture.png"))
    Path("out/other/report.html").write_text("<p>other</p>")
    body = (
        "<img src='out/run/figures/curve.png'>"  # relative to the cwd: the old bug
        "<img src=\"figures/curve.png\" alt='ok'>"  # already relative to the report
        f'<img src="{(tmp_path / "out/other/picture.png").as_uri()}">'  # absolute file URL
        "<img src='figures/never.png'>"  # broken
        "<a href='../other/report.html#top'>neighbour</a>"
        "<a href='../missing/report.html'>gone</a>"
        "<a href='https://example.org/x.png'>web</a><a href='#local'>anchor</a>"
        "<a href='report.html#s'>this page</a>"
    )
    report = write_report(Path("out/run/report.html"), "t", [("s", body)])
    monkeypatch.chdir(tmp_path / "out")
    found = references(tmp_path / report)
    assert found.images == ["figures/curve.png", "figures/curve.png", "../other/picture.png"]
    assert found.links == [
        "../other/report.html#top",
        "https://example.org/x.png",
        "#local",
        "report.html#s",
    ]
    text = (tmp_path / report).read_text()
    assert "(image never.png not written)" in text
    assert '<a class="missing" title="report.html not written">gone</a>' in text


def test_pretrain_report_from_a_relative_run_folder(tmp_path, monkeypatch):
    from pathseg.methods.genselfdiff import PretrainConfig, write_pretrain_report

    monkeypatch.chdir(tmp_path)
    run = Path("pre/run")
    _png(run / "real.png")
    _png(run / "samples" / "step_000010.png")
    (run / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 1, "loss": 1.0}) + "\n")
    report = tmp_path / write_pretrain_report(run, PretrainConfig(output=run))
    monkeypatch.chdir(tmp_path / "pre")
    found = references(report)
    assert "real.png" in found.images and "samples/step_000010.png" in found.images
    for src in found.images:
        assert resolve(report, src).is_file(), src
    assert "samples.png" not in found.images  # the final grid was not written: not referenced


@pytest.mark.parametrize("name", ["plain", "with space", "hash#", "percent%", "ünï"])
def test_relative_url_round_trips_odd_names(tmp_path, name):
    image = _png(tmp_path / "a" / f"{name}.png")
    url = relative_url(image, tmp_path / "b")
    assert resolve(tmp_path / "b" / "report.html", url).resolve() == image.resolve()
