"""Name → constructor registry for segmentation networks.

Every model built through :func:`create_model` carries ``model.config``: a JSON-serialisable dict
with the registry name under ``"name"`` and every constructor argument, so ``create_model(**config)``
rebuilds the same architecture (this is what :func:`pathseg.models.model_from_file` relies on).
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from pathseg.errors import ConfigError

__all__ = ["MODELS", "create_model", "list_models", "model_arguments", "register_model", "register_preset"]

ModelFactory = Callable[..., nn.Module]
_F = TypeVar("_F", bound=ModelFactory)

#: Registered constructors. Each takes keyword arguments including ``in_channels`` and ``num_classes``.
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[_F], _F]:
    """Decorator that registers a model constructor under ``name``.

    The constructor must accept ``in_channels`` and ``num_classes`` keyword arguments. Its named
    parameters define which keyword arguments :func:`create_model` accepts.

    Args:
        name: Registry key, e.g. ``"unet"``.

    Returns:
        The decorator; it returns the constructor unchanged.

    Example:
        >>> @register_model("tiny_conv")
        ... def tiny_conv(in_channels: int = 3, num_classes: int = 2) -> nn.Module:
        ...     return nn.Conv2d(in_channels, num_classes, 1)
        >>> "tiny_conv" in list_models()
        True
        >>> del MODELS["tiny_conv"]
    """

    def decorator(factory: _F) -> _F:
        if name in MODELS:
            # A silent overwrite would make checkpoints rebuild the wrong architecture.
            raise ValueError(f"a model named {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return decorator


def register_preset(
    name: str, model_cls: type[nn.Module], *, rename: Mapping[str, str] | None = None, **defaults: Any
) -> ModelFactory:
    """Register ``model_cls`` under ``name`` with some constructor defaults changed.

    The generated constructor has the class's own keyword parameters (so unknown-argument checks
    and :func:`model_arguments` work) with ``defaults`` substituted; every argument can still be
    overridden at :func:`create_model` time.

    Args:
        name: Registry key.
        model_cls: The ``nn.Module`` subclass to build.
        rename: Maps class parameter names to registry names, e.g. ``{"out_channels": "num_classes"}``.
        **defaults: New default values, keyed by registry parameter names.

    Returns:
        The registered constructor.

    Example:
        >>> from pathseg.models.unet.model import UNet
        >>> rename = {"out_channels": "num_classes"}
        >>> factory = register_preset("unet_doc", UNet, rename=rename, base_channels=8)
        >>> factory(num_classes=3).config["base_channels"]
        8
        >>> del MODELS["unet_doc"]
    """
    rename = dict(rename or {})
    back = {new: old for old, new in rename.items()}
    params = []
    for p in inspect.signature(model_cls).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        new_name = rename.get(p.name, p.name)
        params.append(
            p.replace(name=new_name, kind=p.KEYWORD_ONLY, default=defaults.get(new_name, p.default))
        )
    names = {p.name for p in params}
    stray = sorted(set(defaults) - names)
    if stray:
        raise ValueError(f"preset {name!r}: {model_cls.__name__} has no parameter(s) {stray}")

    def factory(**kwargs: Any) -> nn.Module:
        values = {p.name: p.default for p in params if p.default is not p.empty}
        values.update(kwargs)
        return model_cls(**{back.get(k, k): v for k, v in values.items()})

    factory.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    factory.__name__ = factory.__qualname__ = name
    changed = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "class defaults"
    factory.__doc__ = f"{model_cls.__name__} preset ({changed})."
    return register_model(name)(factory)


def list_models() -> list[str]:
    """Sorted names of all registered models.

    Returns:
        Registry keys accepted by :func:`create_model`.

    Example:
        >>> "unet" in list_models()
        True
    """
    return sorted(MODELS)


def _factory(name: str) -> ModelFactory:
    try:
        return MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; known models: {', '.join(list_models())}") from None


def model_arguments(name: str) -> dict[str, Any]:
    """Keyword arguments a registered model accepts, with their defaults.

    Args:
        name: Registry key.

    Returns:
        ``{argument: default}``; arguments without a default map to :data:`inspect.Parameter.empty`.

    Example:
        >>> model_arguments("unet_small")["base_channels"]
        16
    """
    params = inspect.signature(_factory(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def create_model(name: str, in_channels: int = 3, num_classes: int = 2, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: Registry key (see :func:`list_models`).
        in_channels: Input image channels (including any conditioning channels the caller concatenates).
        num_classes: Output channels (classes for a segmenter, predicted-noise channels for a denoiser).
        **kwargs: Architecture arguments of that model.

    Returns:
        The model, with ``model.config`` set so that ``create_model(**model.config)`` rebuilds it.

    Raises:
        ConfigError: ``name`` is unknown or a keyword argument is not accepted by that model.

    Example:
        >>> model = create_model("unet_small", in_channels=3, num_classes=4)
        >>> model.config["name"], model.config["num_classes"]
        ('unet_small', 4)
    """
    factory = _factory(name)
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            allowed = sorted(set(params) - {"in_channels", "num_classes"})
            raise ConfigError(
                f"model {name!r} got unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
            )
    model = factory(in_channels=in_channels, num_classes=num_classes, **kwargs)
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        # Plain user factories: record what we were given, which is enough to call them again.
        config = {"in_channels": in_channels, "num_classes": num_classes, **kwargs}
    config = {"name": name, **{k: v for k, v in config.items() if k != "name"}}
    try:
        json.dumps(config)
    except TypeError as err:
        raise ConfigError(f"model {name!r}: config is not JSON-serialisable ({err})") from None
    model.config = config
    return model
