"""``pathseg data synth|check|patch-labels|tiles``: create and check datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pathseg.cli.common import console, parse_classes, parse_values


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Create and check datasets.", no_args_is_help=True)
    data_app.command("synth")(data_synth)
    data_app.command("check")(data_check)
    data_app.command("patch-labels")(data_patch_labels)
    data_app.command("tiles")(data_tiles)
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
    ignore: Annotated[
        str | None,
        typer.Option(help='Mask values meaning "not labelled", e.g. "255" for `data tiles` output.'),
    ] = None,
    instances: Annotated[
        bool,
        typer.Option(
            "--instances",
            help="Check nucleus instance data instead: images/ with instances/ (label maps), "
            "annotations/ (ImageScope XML, QuPath GeoJSON) or masks/ (binary, split into objects).",
        ),
    ] = False,
) -> None:
    """Open every image and mask and report the first problem (unreadable, size mismatch, bad values)."""
    if instances:
        _check_instances(folder, mask_suffix, ignore)
        return
    from pathseg.data.classes import ClassMap
    from pathseg.data.folders import check_samples, discover_dataset

    class_map = ClassMap.from_config(parse_classes(classes), ignore_values=parse_values(ignore, "--ignore"))
    samples = discover_dataset(folder, mask_suffix=mask_suffix)
    check_samples(samples, class_map)
    console.print(f"{folder}: {len(samples)} image/mask pairs, all readable and consistent")


def _check_instances(folder: Path, mask_suffix: str, ignore: str | None) -> None:
    """``data check --instances``: one line counting images, nuclei and where they come from."""
    from rich.markup import escape

    from pathseg.data.instances import check_instance_samples, discover_instance_dataset
    from pathseg.errors import ConfigError

    # Instance files are matched by the image stem and hold ids, not classes: these options
    # would be silently ignored, so say so instead.
    if mask_suffix or ignore is not None:
        raise ConfigError("--mask-suffix and --ignore do not apply to --instances")
    summary = check_instance_samples(discover_instance_dataset(folder))
    kinds = summary["per_kind"]
    line = (
        f"{folder}: {summary['images']} images, {summary['nuclei']} nuclei; images from instance maps "
        f"{kinds['instances']}, polygons {kinds['polygons']}, binary masks {kinds['binary']}"
    )
    if summary["approximate"]:
        line += f"; {summary['approximate']} approximate (binary masks: touching nuclei merge)"
    if summary["empty_polygons"]:
        empty = summary["empty_polygons"]
        line += (
            f"; {empty} polygon{'s' if empty != 1 else ''} got no pixel (covered by later ones or too small)"
        )
    console.print(escape(line), soft_wrap=True)


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

    ignore_values = parse_values(ignore, "--ignore")
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


def data_tiles(
    slide: Annotated[Path, typer.Argument(help="Slide (svs, tif, ndpi, mrxs ...) or a plain image.")],
    annotations: Annotated[
        Path, typer.Option(help="Polygons: QuPath GeoJSON (.geojson, .json) or ImageScope XML (.xml).")
    ],
    mpp: Annotated[float, typer.Option(help="Microns per pixel of the tiles (0.5 is about 20x).")],
    output: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write (images/, masks/, tiles.json).")
    ],
    tile: Annotated[int, typer.Option(help="Tile side in pixels.")] = 512,
    stride: Annotated[int | None, typer.Option(help="Step between tiles in pixels (default: tile).")] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help='Class map of the masks, e.g. "background=0,tumour=1,stroma=2" '
            "(default: the annotations' classes in order of appearance, stored as 0, 1, ...)."
        ),
    ] = None,
    default_class: Annotated[
        str | None, typer.Option(help="Class of annotations that have none (e.g. nucleus).")
    ] = None,
    unannotated: Annotated[
        str,
        typer.Option(
            help="Pixels outside every annotation: 'ignore' (a few drawn regions) or "
            "'background' (fully annotated fields; needs a class named background)."
        ),
    ] = "ignore",
    ignore_value: Annotated[int, typer.Option(help="Mask value of unlabelled pixels.")] = 255,
    min_labelled: Annotated[
        float, typer.Option(help="Keep tiles whose labelled share is above this (0 to 1).")
    ] = 0.0,
    slide_mpp: Annotated[
        float | None, typer.Option(help="Microns per pixel of the slide, for slides that do not state it.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Slide reader: tiffslide, openslide or image (default: by suffix).")
    ] = None,
) -> None:
    """Cut a slide and its polygon annotations into image/mask tiles that `pathseg train` reads."""
    from pathseg.data.annotations import class_indices, clip_to_slide, read_annotations
    from pathseg.data.classes import ClassMap
    from pathseg.errors import ConfigError, DataError
    from pathseg.slides.reader import open_slide
    from pathseg.slides.tiles import write_annotation_tiles

    if unannotated not in ("ignore", "background"):
        raise ConfigError(f"--unannotated must be 'ignore' or 'background', not {unannotated!r}")
    with open_slide(slide, backend=backend, mpp=slide_mpp) as opened:
        if opened.mpp is None:
            raise DataError(slide, "has no microns-per-pixel in its properties; pass --slide-mpp")
        found = clip_to_slide(read_annotations(annotations), opened.dimensions, annotations)
        if classes is not None:
            class_spec = parse_classes(classes)
        else:
            class_spec = _annotated_class_names(found, default_class, unannotated, annotations)
        class_map = ClassMap.from_config(class_spec, ignore_values=[ignore_value])
        indices = class_indices(found, class_map, annotations, default_class)
        fill = class_map.ignore_index if unannotated == "ignore" else _background_index(class_map)
        written = write_annotation_tiles(
            opened,
            found,
            indices,
            class_map,
            mpp=mpp,
            tile=tile,
            stride=stride,
            out_dir=output,
            fill_index=fill,
            min_labelled=min_labelled,
        )
    if not written:
        raise DataError(
            annotations, f"no tile has more than {min_labelled:.0%} labelled pixels; nothing written"
        )
    _print_tiles_summary(output, class_map)


def _annotated_class_names(annotations, default_class: str | None, unannotated: str, path: Path) -> list[str]:
    """The classes of the annotations in order of appearance (``background`` first when unannotated
    pixels are background; QuPath's Ignore* classes left out): the default class map of ``data tiles``."""
    from pathseg.errors import DataError

    names = ["background"] if unannotated == "background" else []
    for annotation in annotations:
        name = annotation.class_name or default_class
        if name and not name.lower().startswith("ignore") and name.lower() not in {n.lower() for n in names}:
            names.append(name)
    if not names:
        raise DataError(path, "no annotation has a class; pass --default-class or --classes")
    return names


def _background_index(class_map) -> int:
    from pathseg.errors import ConfigError

    for index, name in enumerate(class_map.names):
        if name.lower() == "background":
            return index
    raise ConfigError(
        f"--unannotated background needs a class named background (classes: {', '.join(class_map.names)})"
    )


def _print_tiles_summary(output: Path, class_map) -> None:
    """Two lines: what was written with each class's share of the pixels, then how to train on it."""
    import json

    from rich.markup import escape

    summary = json.loads((output / "tiles.json").read_text())
    counts = {**summary["labelled_pixels"], "unlabelled": summary["unlabelled_pixels"]}
    total = max(sum(counts.values()), 1)
    shares = ", ".join(f"{name} {count / total:.1%}" for name, count in counts.items())
    stored = ",".join(
        f"{name}=" + "|".join(str(v) for v in class_map.alternatives(i))
        for i, name in enumerate(class_map.names)
    )
    ignore = f"data.ignore_values=[{summary['ignore_value']}]"
    lines = (
        f"wrote {summary['tiles']} tiles of {summary['tile']} px at {summary['mpp']:g} um/px "
        f"(downsample {summary['downsample']:.3g}) to {output}; pixels: {shares}",
        f'train with: pathseg train --train {output} --classes "{stored}" --set {ignore}',
    )
    for line in lines:
        console.print(escape(line))
