"""``pathseg data synth|check|patch-labels``: create and check datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pathseg.cli.common import console, parse_classes


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Create and check datasets.", no_args_is_help=True)
    data_app.command("synth")(data_synth)
    data_app.command("check")(data_check)
    data_app.command("patch-labels")(data_patch_labels)
    app.add_typer(data_app, name="data")


def data_synth(
    output: Annotated[
        Path, typer.Argument(help="Folder to write (images/, masks/, instances/, tissue/ ...).")
    ],
    num_images: Annotated[int, typer.Option("--num", "-n", help="Number of tiles.")] = 64,
    size: Annotated[int, typer.Option(help="Tile size in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed; tile i is the same whatever --num is.")] = 0,
) -> None:
    """Write a procedural H&E-like dataset (glands, nuclei, tissue classes) for demos and tests."""
    from pathseg.data.synthetic import SynthConfig, write_dataset

    with console.status("generating") as status:
        write_dataset(
            output,
            num_images,
            seed=seed,
            config=SynthConfig(size=size),
            progress=lambda i, n: status.update(f"generating tile {i}/{n}"),
        )
    console.print(f"wrote {num_images} tiles to {output} (see {output / 'dataset.yaml'})")


def data_check(
    folder: Annotated[Path, typer.Argument(help="Folder with images/ and masks/.")],
    classes: Annotated[
        str,
        typer.Option(help='Class map, e.g. "background=0,gland=255"; "gland=1|255" accepts either value.'),
    ] = "background=0,gland=1|255",
    mask_suffix: Annotated[str, typer.Option(help="Mask stem suffix, e.g. _anno.")] = "",
) -> None:
    """Open every image and mask and report the first problem (unreadable, size mismatch, bad values)."""
    from pathseg.data.classes import ClassMap
    from pathseg.data.folders import check_samples, discover_dataset

    class_map = ClassMap.from_config(parse_classes(classes))
    samples = discover_dataset(folder, mask_suffix=mask_suffix)
    check_samples(samples, class_map)
    console.print(f"{folder}: {len(samples)} image/mask pairs, all readable and consistent")


def data_patch_labels(
    folder: Annotated[Path, typer.Argument(help="Folder with images/ and a mask folder.")],
    output: Annotated[Path, typer.Argument(help="Folder to write (images/, masks/, labels.csv).")],
    classes: Annotated[
        str, typer.Option(help='Class map of the masks, e.g. "tumour=0,stroma=1,normal=2".')
    ] = "tumour=0,stroma=1,normal=2",
    ignore: Annotated[
        str | None, typer.Option(help='Mask values left out (e.g. "3" for WSSS4LUAD background).')
    ] = None,
    masks: Annotated[
        str | None, typer.Option(help="Name of the mask folder beside images/ (default: masks).")
    ] = None,
    patch_size: Annotated[int, typer.Option(help="Patch side in pixels.")] = 224,
    stride: Annotated[int | None, typer.Option(help="Step between patches (default: patch size).")] = None,
    min_fraction: Annotated[
        float, typer.Option(help="A class is in a patch's label if it covers more than this share.")
    ] = 0.05,
    min_labelled: Annotated[
        float, typer.Option(help="Skip patches whose labelled pixels are below this share.")
    ] = 0.5,
    style: Annotated[str, typer.Option(help="Label style in names: comma, space or compact.")] = "comma",
) -> None:
    """Cut image + mask pairs into patches labelled by the classes they contain (weak-supervision data)."""
    from pathseg.data.classes import ClassMap
    from pathseg.data.folders import discover_dataset, pair_images_and_masks
    from pathseg.data.patch_labels import make_patch_label_set

    ignore_values = [int(v) for v in ignore.split(",")] if ignore else []
    class_map = ClassMap.from_config(parse_classes(classes), ignore_values=ignore_values)
    if masks is not None:
        samples = pair_images_and_masks(folder / "images", folder / masks)
    else:
        samples = discover_dataset(folder)
    counts = make_patch_label_set(
        samples, class_map, output, patch_size, stride, min_fraction, min_labelled, style
    )
    console.print(
        f"wrote {counts['patches']} patches from {counts['images']} images to {output} "
        f"(skipped {counts['skipped']}); patches per class: {counts['patches_per_class']}"
    )
