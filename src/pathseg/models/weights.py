"""Saving and loading model weights from local files.

pathseg writes safetensors files (no pickle, so loading cannot execute code) and stores
``model.config`` as JSON in the safetensors metadata, so :func:`model_from_file` can rebuild the
architecture without a separate config file. It also reads PyTorch ``.pt``/``.pth`` state dicts
(loaded with ``weights_only=True``), plain or nested under ``"state_dict"``, ``"model"`` or ``"ema"``.
Only local paths are accepted: nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, overload

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import pathseg
from pathseg.errors import ConfigError, DataError, PathsegError
from pathseg.models.registry import create_model

__all__ = ["load_weights", "model_from_file", "read_config", "read_state_dict", "save_weights"]

log = logging.getLogger(__name__)

CONFIG_KEY = "pathseg.config"
_NESTED_KEYS = ("state_dict", "model", "ema")
_SHOW = 5  # offending keys listed in error messages


def _local_file(path: str | Path) -> Path:
    text = str(path)
    if "://" in text:
        raise PathsegError(f"{text}: only local weight files are supported (no downloads); fetch it first")
    p = Path(text).expanduser()
    if not p.is_file():
        raise DataError(p, "weights file not found" if not p.exists() else "not a file")
    return p


def _is_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte header length followed by the JSON header; sniffing
    # the content rather than the suffix also handles renamed files.
    with path.open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _looks_like_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _load_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors have many types; all mean "unusable file"
        raise DataError(
            path, f"cannot read as a PyTorch weights file ({type(err).__name__}: {err})"
        ) from None


def _unwrap(obj: Any, path: Path, key: str | None) -> dict[str, Tensor]:
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise DataError(path, f"checkpoint has no entry {key!r}")
        obj = obj[key]
    # Training checkpoints nest the weights, sometimes twice ({"model": {"state_dict": ...}}).
    for _ in range(3):
        if _looks_like_state_dict(obj):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        nested = next((k for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            break
        obj = obj[nested]
    top = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise DataError(
        path, f"no state dict found (tensors at top level or under {', '.join(_NESTED_KEYS)}); found {top}"
    )


def _map_prefixes(state: dict[str, Tensor], prefix_map: Mapping[str, str] | None) -> dict[str, Tensor]:
    if not prefix_map:
        return state
    # Longest source prefix wins, so {"": "encoder.", "fc.": "head."} routes fc.* to head.*.
    sources = sorted(prefix_map, key=len, reverse=True)
    out = {}
    for name, tensor in state.items():
        src = next((s for s in sources if name.startswith(s)), None)
        out[name if src is None else prefix_map[src] + name[len(src) :]] = tensor
    return out


def read_state_dict(
    path: str | Path, prefix_map: Mapping[str, str] | None = None, key: str | None = None
) -> dict[str, Tensor]:
    """Read a state dict from a local safetensors or PyTorch file (on CPU).

    Args:
        path: Local file path.
        prefix_map: Rename keys: ``{old_prefix: new_prefix}``; the longest matching prefix applies.
            ``{"module.": ""}`` strips DataParallel prefixes, ``{"": "encoder."}`` adds one.
        key: For nested PyTorch checkpoints, the entry to use (e.g. ``"ema"``); by default the first
            of ``"state_dict"``, ``"model"``, ``"ema"`` present.

    Returns:
        ``{name: tensor}``.

    Raises:
        PathsegError: Non-local path, missing or unreadable file (``DataError``).

    Example:
        >>> state = read_state_dict("unet.safetensors")  # doctest: +SKIP
    """
    p = _local_file(path)
    if _is_safetensors(p):
        try:
            state = load_file(p, device="cpu")
        except Exception as err:  # safetensors raises its own error type for corrupt headers
            raise DataError(p, f"cannot read as safetensors ({err})") from None
    else:
        state = _unwrap(_load_torch(p), p, key)
    return _map_prefixes(state, prefix_map)


def read_config(path: str | Path) -> dict[str, Any] | None:
    """Model config stored in a weights file, or ``None`` when there is none.

    Reads the safetensors metadata written by :func:`save_weights`, or a top-level ``"config"``
    dict of a PyTorch checkpoint.

    Args:
        path: Local file path.

    Returns:
        The config dict (with ``"name"``) or ``None``.

    Example:
        >>> read_config("unet.safetensors")["name"]  # doctest: +SKIP
        'unet'
    """
    p = _local_file(path)
    if _is_safetensors(p):
        try:
            with safe_open(p, framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception as err:
            raise DataError(p, f"cannot read as safetensors ({err})") from None
        text = meta.get(CONFIG_KEY)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(p, f"stored model config is not valid JSON ({err})") from None
    obj = _load_torch(p)
    config = obj.get("config") if isinstance(obj, Mapping) else None
    return dict(config) if isinstance(config, Mapping) else None


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Save a model's state dict as safetensors, with ``model.config`` as JSON metadata.

    The file is written to a temporary name and renamed, so an interrupted save never leaves a
    truncated checkpoint under ``path``.

    Args:
        model: The model; ``model.config`` (if present) is stored for :func:`model_from_file`.
        path: Destination file, conventionally ``*.safetensors``; parent folders are created.

    Returns:
        The written path.

    Example:
        >>> from pathseg.models import create_model
        >>> save_weights(create_model("unet_small"), "/tmp/unet_small.safetensors")  # doctest: +SKIP
    """
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        # safetensors refuses tensors sharing storage (tied weights, views); copy those.
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()
        seen.add(ptr)
        tensors[name] = t
    metadata = {"format": "pt", "pathseg.version": pathseg.__version__}
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        metadata[CONFIG_KEY] = json.dumps(config)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


@overload
def load_weights(
    model_or_path: nn.Module,
    path: str | Path,
    strict: bool = True,
    prefix_map: Mapping[str, str] | None = None,
    key: str | None = None,
) -> nn.Module: ...


@overload
def load_weights(
    model_or_path: str | Path,
    path: None = None,
    strict: bool = True,
    prefix_map: Mapping[str, str] | None = None,
    key: str | None = None,
) -> dict[str, Tensor]: ...


def load_weights(
    model_or_path: nn.Module | str | Path,
    path: str | Path | None = None,
    strict: bool = True,
    prefix_map: Mapping[str, str] | None = None,
    key: str | None = None,
) -> nn.Module | dict[str, Tensor]:
    """Load weights from a local file into a model, or just read them.

    Shapes are always checked (also with ``strict=False``); ``strict`` only concerns keys missing
    from the file or unknown to the model. With ``strict=False`` at least one tensor must match,
    which catches a wrong ``prefix_map``.

    Args:
        model_or_path: The model to fill, or a file path to only read a state dict.
        path: Weights file (``.safetensors``, ``.pt``, ``.pth``) when a model is given.
        strict: Require the file's keys to match the model's exactly.
        prefix_map: Key renaming ``{old_prefix: new_prefix}``, see :func:`read_state_dict`.
        key: Entry of a nested PyTorch checkpoint to use, e.g. ``"ema"``.

    Returns:
        The model (loaded in place) or, given only a path, the state dict.

    Raises:
        PathsegError: Missing/unreadable file, shape mismatches (up to 5 keys with both shapes),
            or key mismatches in strict mode.

    Example:
        >>> net = create_model("deeplabv3plus")
        >>> load_weights(net, "resnet34.pth", strict=False, prefix_map={"": "encoder."})  # doctest: +SKIP
    """
    if not isinstance(model_or_path, nn.Module):
        if path is not None:
            raise TypeError("give either a model and a path, or only a path")
        return read_state_dict(model_or_path, prefix_map, key)
    if path is None:
        raise TypeError("load_weights(model, path): path is required when a model is given")
    model = model_or_path
    state = read_state_dict(path, prefix_map, key)
    expected = model.state_dict()

    bad_shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if bad_shapes:
        raise PathsegError(
            f"{path}: {len(bad_shapes)} tensor(s) have the wrong shape for this model: {_listing(bad_shapes)}"
        )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing from the file: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the model: {_listing(unexpected)}")
        raise PathsegError(f"{path}: keys do not match the model ({'; '.join(parts)})")
    if len(missing) == len(expected) and expected:
        raise PathsegError(
            f"{path}: none of the {len(state)} tensors match the model's names "
            f"(file has e.g. {_listing(list(state))}); check prefix_map"
        )
    if missing or unexpected:
        log.info("%s: %d model keys not loaded, %d file keys ignored", path, len(missing), len(unexpected))
    model.load_state_dict(state, strict=False)
    return model


def model_from_file(path: str | Path) -> nn.Module:
    """Rebuild a model from the config stored in a weights file and load its weights.

    Args:
        path: A file written by :func:`save_weights` (or a ``.pt`` dict with ``"config"`` and weights).

    Returns:
        The model in eval mode, on CPU.

    Raises:
        PathsegError: File problems, no stored config, or weights that do not fit the config.

    Example:
        >>> model = model_from_file("runs/unet/best.safetensors")  # doctest: +SKIP
    """
    config = read_config(path)
    if config is None:
        raise DataError(
            Path(path),
            "no model config stored in this file; build the model and use load_weights(model, path)",
        )
    model = create_model(**config)
    load_weights(model, path)
    return model.eval()


def weights_path(source: str | Path) -> Path:
    """``source`` itself, or ``source/model.safetensors`` when it is a run folder."""
    source = Path(source)
    if source.is_dir():
        inner = source / "model.safetensors"
        if not inner.exists():
            raise DataError(source, "run folder has no model.safetensors (did the run finish?)")
        return inner
    return source


def is_denoiser(path: str | Path) -> bool:
    """Whether a weights file holds a time-conditioned network (a diffusion denoiser)."""
    config = read_config(path)
    return bool(config and config.get("time_embedding"))


def segmenter_from_pretrained(path: str | Path, num_classes: int, fixed_timestep: int = 0) -> nn.Module:
    """Rebuild a saved network with its weights and give it a fresh ``num_classes`` output head.

    The GenSelfDiff recipe: a denoiser from ``pathseg pretrain`` keeps every weight except the
    output conv, and its time input is fixed at ``fixed_timestep`` (the paper uses 0: the network
    sees a clean image); everything is then fine-tuned.

    Raises:
        ConfigError: the stored network has no ``to_segmenter`` conversion.
    """
    model = model_from_file(path)
    if not hasattr(model, "to_segmenter"):
        raise ConfigError(
            f"{path}: a {model.config.get('name')} cannot be converted to a segmenter; "
            "pretrained initialisation needs a U-Net from `pathseg pretrain`"
        )
    return model.to_segmenter(num_classes, fixed_timestep).train()
