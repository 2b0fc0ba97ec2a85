"""Broken datasets as real users make them, through ``data check``, ``train``, ``evaluate``, ``predict``.

Every case ends in one of two ways:

* **rejected**: exit status 2 and exactly one line on stderr, ``error: <path>: <problem>``, naming the
  offending file or folder; never a traceback;
* **accepted**: converted sensibly (greyscale, RGBA and 16-bit images become RGB 8-bit, small images
  are padded to the crop) and handled end to end: training finishes, evaluation scores every image,
  predictions have each image's size.

The CLI runs in-process through :func:`pathseg.cli.main` (which turns a ``PathsegError`` into the one
line); one case goes through the installed ``pathseg`` executable as well. One tiny model is trained
per module and reused by the ``evaluate``/``predict`` cases.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathseg.data.io import read_image, read_label_image, write_mask

CLASSES = "background=0,gland=1"
TINY = [
    "--set",
    "model.base_channels=8",
    "--set",
    "data.val_fraction=0",
    "--set",
    "train.threads=1",
    "--set",
    "train.warmup_steps=0",
]


# --------------------------------------------------------------------------------------- running


def train_args(data: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    """A 2-step ``unet_small`` run on 64 px crops (later options in ``extra`` win)."""
    return [
        "train", "--train", data, "--classes", CLASSES, "--model", "unet_small", "--steps", "2",
        "--batch-size", "2", "--crop-size", "64", "--out", out, *TINY, *extra,
    ]  # fmt: skip


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def pathseg(*args: str | Path) -> Result:
    """``pathseg ARGS`` in-process through the real entry point; an escaping exception becomes a
    traceback in the output (so the assertions below show it), as it would for a user."""
    from pathseg import cli
    from pathseg.cli.common import console, err_console

    stdout, stderr = io.StringIO(), io.StringIO()
    old_argv = sys.argv
    sys.argv = ["pathseg", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            console.file, err_console.file = stdout, stderr
            try:
                cli.main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:
                traceback.print_exc(file=stderr)
                code = 1
    finally:
        sys.argv = old_argv
        console.file, err_console.file = None, None  # back to following sys.stdout/stderr
    return Result(code, stdout.getvalue(), stderr.getvalue())


def one_line_error(result: Result, *names: str) -> str:
    """The single ``error: ...`` line of a rejected command; every name in ``names`` must be in it."""
    assert "Traceback" not in result.output, result.output
    assert result.code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    return line


def succeeded(result: Result) -> Result:
    assert "Traceback" not in result.output, result.output
    assert result.code == 0, result.output
    return result


# --------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Four synthetic 64 px tiles with 0/1 gland masks (palette PNG), images/ + masks/ only."""
    from pathseg.data.synthetic import SynthConfig, write_dataset

    full = write_dataset(tmp_path_factory.mktemp("synth") / "all", 4, seed=0, config=SynthConfig(size=64))
    root = tmp_path_factory.mktemp("source") / "data"
    for sub in ("images", "masks"):
        shutil.copytree(full / sub, root / sub)
    assert set(np.unique(read_label_image(root / "masks" / "synth_00000.png")).tolist()) <= {0, 1}
    return root


@pytest.fixture(scope="module")
def run_dir(source: Path, tmp_path_factory) -> Path:
    """One tiny trained model (2 steps) for the evaluate/predict cases."""
    run = tmp_path_factory.mktemp("run") / "run"
    succeeded(pathseg(*train_args(source, run)))
    assert (run / "model.safetensors").exists()
    return run


def _copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


IMG, MASK = "images/synth_00001.png", "masks/synth_00001.png"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rename_pair(root: Path, stem: str) -> tuple[Path, Path]:
    image, mask = root / "images" / f"{stem}.png", root / "masks" / f"{stem}.png"
    (root / IMG).rename(image)
    (root / MASK).rename(mask)
    return image, mask


def _size_mismatch(root: Path) -> None:
    mask = read_label_image(root / MASK)
    write_mask(root / MASK, mask[:48, :40])


def _unknown_value(root: Path) -> None:
    mask = read_label_image(root / MASK).copy()
    mask[5, 5] = 7
    write_mask(root / MASK, mask)


def _extra_image(root: Path) -> None:
    shutil.copy(root / IMG, root / "images" / "extra.png")


def _extra_mask(root: Path) -> None:
    shutil.copy(root / MASK, root / "masks" / "extra.png")


def _empty_images(root: Path) -> None:
    for path in (root / "images").iterdir():
        path.unlink()
    (root / "images" / "notes.txt").write_text("the scans are on the other disk\n")


def _no_subfolders(root: Path) -> None:
    for path in (root / "images").iterdir():
        shutil.move(path, root / path.name)
    shutil.rmtree(root / "images")
    shutil.rmtree(root / "masks")


def _duplicate_stem(root: Path) -> None:
    Image.open(root / IMG).save(root / "images" / "synth_00001.tif")


def _broken_unicode(root: Path) -> None:
    image, _ = _rename_pair(root, "tête 1")
    _truncate(image)


def _broken_brackets(root: Path) -> None:
    # Square brackets are rich markup: printed as markup, "[b]" and "[he]" vanish from the line.
    image, _ = _rename_pair(root, "scan [b] [he]")
    _truncate(image)


def _jpeg_masks(root: Path) -> str:
    """Every mask saved as JPEG (what a user's image editor does); the first one to which the
    compression added values other than 0 and 1 is the one named."""
    bad = []
    for mask in sorted((root / "masks").glob("*.png")):
        values = read_label_image(mask)
        mask.unlink()
        Image.fromarray(values.astype(np.uint8)).save(mask.with_suffix(".jpg"), quality=90)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not set(np.unique(read_label_image(mask.with_suffix(".jpg"))).tolist()) <= {0, 1}:
                bad.append(mask.with_suffix(".jpg").name)
    assert bad, "JPEG kept every label value; use a mask with more edges"
    return f"masks/{bad[0]}"


RETURNED = "<the path make() returns>"


@dataclass(frozen=True)
class Broken:
    """A broken dataset: how to break a copy of ``source`` and what the error line must say."""

    make: Callable[[Path], str | None]  # breaks the copy; may return the offending file's `where`
    where: str  # the offending file or folder, relative to the dataset folder ("" = the folder)
    problem: str  # words of the problem
    image_level: bool = False  # breaks an image, so `predict` on images/ meets it too

    def expected(self, root: Path, where: str | None = None) -> tuple[str, str]:
        where = self.where if where is None else where
        return str(root / where) if where else str(root), self.problem


BROKEN: dict[str, Broken] = {
    "truncated image": Broken(lambda r: _truncate(r / IMG), IMG, "truncated or corrupt", True),
    "truncated mask": Broken(lambda r: _truncate(r / MASK), MASK, "truncated or corrupt"),
    "empty image": Broken(lambda r: (r / IMG).write_bytes(b""), IMG, "empty file", True),
    "empty mask": Broken(lambda r: (r / MASK).write_bytes(b""), MASK, "empty file"),
    "text as image": Broken(
        lambda r: (r / IMG).write_text("not a picture\n"), IMG, "cannot read image", True
    ),
    "text as mask": Broken(lambda r: (r / MASK).write_text("not a picture\n"), MASK, "cannot read"),
    "size mismatch": Broken(_size_mismatch, MASK, "mask is 40x48 but image synth_00001.png is 64x64"),
    "unknown mask value": Broken(_unknown_value, MASK, "mask has values [7] that are not in the class map"),
    "masks stored as JPEG": Broken(_jpeg_masks, RETURNED, "JPEG compression changes label values"),
    "image without mask": Broken(_extra_image, "images/extra.png", "no mask found"),
    "mask without image": Broken(_extra_mask, "masks/extra.png", "no matching image"),
    "empty images folder": Broken(_empty_images, "images", "no images found", True),
    "no images or masks folder": Broken(_no_subfolders, "", "no images/ folder"),
    "no masks folder": Broken(lambda r: shutil.rmtree(r / "masks"), "", "no masks/ folder"),
    "two images one stem": Broken(_duplicate_stem, "images/synth_00001.tif", "share the stem"),
    "unicode name, truncated": Broken(_broken_unicode, "images/tête 1.png", "truncated", True),
    "brackets in name, truncated": Broken(_broken_brackets, "images/scan [b] [he].png", "truncated", True),
}


@pytest.fixture
def broken(request, source: Path, tmp_path: Path) -> tuple[Path, tuple[str, str], Broken]:
    """The broken copy, what its error line must contain (the offending path, the problem), the case."""
    case = BROKEN[request.param]
    root = _copy(source, tmp_path / "data")
    where = case.make(root)
    return root, case.expected(root, where if isinstance(where, str) else None), case


@pytest.mark.parametrize("broken", list(BROKEN), indirect=True)
def test_data_check_rejects(broken) -> None:
    root, expected, _ = broken
    one_line_error(pathseg("data", "check", root, "--classes", CLASSES), *expected)


@pytest.mark.parametrize("broken", list(BROKEN), indirect=True)
def test_train_rejects_before_training(broken, tmp_path: Path) -> None:
    root, expected, _ = broken
    run = tmp_path / "run"
    result = pathseg(*train_args(root, run))
    one_line_error(result, *expected)
    assert not (run / "checkpoints").exists()


@pytest.mark.parametrize("broken", list(BROKEN), indirect=True)
def test_evaluate_rejects(broken, run_dir: Path, tmp_path: Path) -> None:
    root, expected, _ = broken
    result = pathseg("evaluate", run_dir, "--data", root, "--out", tmp_path / "ev")
    one_line_error(result, *expected)


@pytest.mark.parametrize("broken", [k for k, v in BROKEN.items() if v.image_level], indirect=True)
def test_predict_names_the_bad_image(broken, run_dir: Path, tmp_path: Path) -> None:
    """One bad image among good ones: the good ones are written, the bad one is named, exit 2."""
    root, expected, case = broken
    out = tmp_path / "pred"
    result = pathseg("predict", run_dir, root / "images", "--out", out)
    one_line_error(result, *expected)
    if case.make is _empty_images:
        return
    written = sorted(p.name for p in (out / "masks").glob("*.png"))
    assert written == sorted(p.name for p in (out / "instances").glob("*.png"))
    assert written == ["synth_00000.png", "synth_00002.png", "synth_00003.png"]


def test_predict_refuses_two_images_with_one_stem(source: Path, run_dir: Path, tmp_path: Path) -> None:
    """``a.png`` and ``a.tif`` would both become ``masks/a.png``: named, nothing written."""
    root = _copy(source, tmp_path / "data")
    _duplicate_stem(root)
    out = tmp_path / "pred"
    one_line_error(
        pathseg("predict", run_dir, root / "images", "--out", out),
        str(root / "images" / "synth_00001.tif"),
        "same stem as synth_00001.png",
    )
    assert not (out / "masks").exists()


def test_the_installed_executable_prints_one_line(source: Path, tmp_path: Path) -> None:
    root = _copy(source, tmp_path / "data")
    _broken_unicode(root)
    exe = Path(sys.executable).with_name("pathseg")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "pathseg.cli"]
    done = subprocess.run(
        [*command, "data", "check", str(root), "--classes", CLASSES],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"},
    )
    result = Result(done.returncode, done.stdout, done.stderr)
    one_line_error(result, str(root / "images" / "tête 1.png"), "truncated")


# --------------------------------------------------------------------------------------- run folders


def _missing_run(run: Path, tmp: Path) -> Path:
    return tmp / "no_such_run"


def _no_weights(run: Path, tmp: Path) -> Path:
    copy = tmp / "unfinished"
    copy.mkdir()
    shutil.copy(run / "config.yaml", copy / "config.yaml")
    return copy


def _empty_weights(run: Path, tmp: Path) -> Path:
    copy = _no_weights(run, tmp)
    (copy / "model.safetensors").write_bytes(b"")
    return copy


def _truncated_weights(run: Path, tmp: Path) -> Path:
    copy = _no_weights(run, tmp)
    data = (run / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    return copy


def _no_config(run: Path, tmp: Path) -> Path:
    copy = tmp / "weights_only"
    copy.mkdir()
    shutil.copy(run / "model.safetensors", copy / "model.safetensors")
    return copy


def _a_file(run: Path, tmp: Path) -> Path:
    return run / "model.safetensors"


RUN_CASES: dict[str, tuple[Callable[[Path, Path], Path], str, str]] = {
    # name: (make the run argument, the file the error names relative to it, a word of the problem)
    "no such run folder": (_missing_run, "", "does not exist"),
    "run without model.safetensors": (_no_weights, "", "no model.safetensors"),
    "empty model.safetensors": (_empty_weights, "model.safetensors", "safetensors"),
    "truncated model.safetensors": (_truncated_weights, "model.safetensors", "safetensors"),
    "run without config.yaml": (_no_config, "config.yaml", "does not exist"),
    "weights file instead of run folder": (_a_file, "", "not a folder"),
}


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("case", list(RUN_CASES))
def test_bad_run_folder(case: str, command: str, run_dir: Path, source: Path, tmp_path: Path) -> None:
    make, name, problem = RUN_CASES[case]
    run = make(run_dir, tmp_path)
    if command == "evaluate":
        result = pathseg("evaluate", run, "--data", source, "--out", tmp_path / "ev")
    else:
        result = pathseg("predict", run, source / "images", "--out", tmp_path / "pred")
    one_line_error(result, str(run / name) if name else str(run), problem)
    assert not (tmp_path / "pred" / "masks").exists() and not (tmp_path / "ev").exists()


def test_missing_data_folders(run_dir: Path, tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    one_line_error(pathseg("evaluate", run_dir, "--data", nowhere), str(nowhere), "does not exist")
    one_line_error(
        pathseg("predict", run_dir, nowhere, "--out", tmp_path / "p"), str(nowhere), "does not exist"
    )
    one_line_error(pathseg("data", "check", nowhere, "--classes", CLASSES), str(nowhere), "does not exist")


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_output_folder_that_is_a_file(command: str, run_dir: Path, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.png"
    out.write_bytes(b"an old file")
    args = {
        "train": train_args(source, out),
        "evaluate": ["evaluate", run_dir, "--data", source, "--out", out],
        "predict": ["predict", run_dir, source / "images", "--out", out],
    }[command]
    one_line_error(pathseg(*args), f"{out}: is a file, not a folder")
    assert out.read_bytes() == b"an old file"


def test_predict_on_a_split_folder_points_to_images(run_dir: Path, source: Path, tmp_path: Path) -> None:
    """``predict RUN data/`` (the folder holding images/) says where the images are."""
    line = one_line_error(pathseg("predict", run_dir, source, "--out", tmp_path / "p"), str(source))
    assert str(source / "images") in line


# --------------------------------------------------------------------------------------- accepted


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _as_grey(path: Path) -> np.ndarray:
    grey = _grey(read_image(path))
    Image.fromarray(grey).save(path)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _as_rgba(path: Path) -> np.ndarray:
    rgb = read_image(path)
    alpha = np.full(rgb.shape[:2], 128, dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(path)
    return rgb  # alpha is dropped, colours are kept


def _as_16bit(path: Path) -> np.ndarray:
    grey = _grey(read_image(path))
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)  # mode I;16, full 16-bit range
    assert Image.open(path).mode == "I;16"
    return np.repeat(grey[:, :, None], 3, axis=2)  # scaled back to the same 8-bit values


def _to_all(convert: Callable[[Path], np.ndarray]) -> Callable[[Path], dict[str, np.ndarray]]:
    def make(root: Path) -> dict[str, np.ndarray]:
        return {p.name: convert(p) for p in sorted((root / "images").glob("*.png"))}

    return make


def _small(root: Path) -> dict[str, np.ndarray]:
    """40x40 tiles, smaller than --crop-size 64 (padded for training; the window shrinks to fit)."""
    expected = {}
    for image in sorted((root / "images").glob("*.png")):
        mask = root / "masks" / image.name
        rgb = read_image(image)[:40, :40]
        Image.fromarray(rgb).save(image)
        write_mask(mask, read_label_image(mask)[:40, :40])
        expected[image.name] = rgb
    return expected


def _tiny(root: Path) -> dict[str, np.ndarray]:
    """A few pixels: too small for reflection padding up to the network's size multiple."""
    expected = {}
    images = sorted((root / "images").glob("*.png"))
    for image, (h, w) in zip(images, [(1, 1), (5, 7), (3, 64), (64, 2)], strict=True):
        mask = root / "masks" / image.name
        rgb = read_image(image)[:h, :w]
        Image.fromarray(rgb).save(image)
        write_mask(mask, read_label_image(mask)[:h, :w])
        expected[image.name] = rgb
    return expected


def _unicode_names(root: Path) -> dict[str, np.ndarray]:
    expected = {}
    for i, stem in enumerate(("tête 1", "Gewebe ä 2", "腺 3", "slide [HE] 4")):
        old = f"synth_{i:05d}.png"
        (root / "masks" / old).rename(root / "masks" / f"{stem}.png")
        (root / "images" / old).rename(root / "images" / f"{stem}.png")
        expected[f"{stem}.png"] = read_image(root / "images" / f"{stem}.png")
    return expected


def _one_jpeg_mask(root: Path) -> dict[str, np.ndarray]:
    """A JPEG mask whose values survived (a constant mask compresses exactly): accepted, with
    one ``warning:`` line (the documented policy of ``read_label_image``)."""
    mask = root / "masks" / "synth_00000.png"
    values = read_label_image(mask)
    assert not values.any()
    mask.unlink()
    Image.fromarray(values.astype(np.uint8)).save(mask.with_suffix(".jpg"), quality=90)
    return {p.name: read_image(p) for p in sorted((root / "images").glob("*.png"))}


ACCEPTED: dict[str, Callable[[Path], dict[str, np.ndarray]]] = {
    "greyscale (L)": _to_all(_as_grey),
    "RGBA": _to_all(_as_rgba),
    "16-bit (I;16)": _to_all(_as_16bit),
    "smaller than the crop": _small,
    "a few pixels": _tiny,
    "unicode and spaces in names": _unicode_names,
    "a JPEG mask that kept its values": _one_jpeg_mask,
}


@pytest.fixture
def odd(request, source: Path, tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = _copy(source, tmp_path / "data")
    expected = ACCEPTED[request.param](root)
    for name, rgb in expected.items():
        got = read_image(root / "images" / name)
        assert got.dtype == np.uint8 and got.shape == (*rgb.shape[:2], 3)
        np.testing.assert_array_equal(got, rgb)
    return root, expected


def _sizes(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: np.asarray(Image.open(p)).shape[:2] for p in folder.glob("*.png")}


@pytest.mark.parametrize("odd", list(ACCEPTED), indirect=True)
def test_accepted_everywhere(odd: tuple[Path, dict[str, np.ndarray]], run_dir: Path, tmp_path: Path) -> None:
    root, expected = odd
    sizes = {name: rgb.shape[:2] for name, rgb in expected.items()}
    stems = sorted(Path(name).stem for name in expected)

    checked = succeeded(pathseg("data", "check", root, "--classes", CLASSES))
    assert f"{len(expected)} image/mask pairs" in " ".join(checked.stdout.split())
    jpegs = sorted((root / "masks").glob("*.jpg"))
    lines = [line for line in checked.stderr.splitlines() if line.strip()]
    assert len(lines) == len(jpegs), checked.stderr
    for line, jpeg in zip(lines, jpegs, strict=True):
        assert line.startswith(f"warning: {jpeg}: mask is stored as JPEG"), line

    run = tmp_path / "run"
    succeeded(pathseg(*train_args(root, run, "--test", root, "--steps", "1", "--batch-size", "4")))
    assert (run / "model.safetensors").exists()
    tested = (run / "test" / "per_image.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert sorted(line.split(",")[0] for line in tested) == stems

    ev = tmp_path / "ev"
    succeeded(pathseg("evaluate", run_dir, "--data", root, "--out", ev))
    rows = (ev / "per_image.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert sorted(line.split(",")[0] for line in rows) == stems

    pred = tmp_path / "pred"
    succeeded(pathseg("predict", run_dir, root / "images", "--out", pred))
    assert _sizes(pred / "masks") == sizes
    assert _sizes(pred / "instances") == sizes
