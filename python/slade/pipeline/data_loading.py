"""The data a config's ``data`` section describes, read through the protocol registry
(:data:`slade.data.PROTOCOLS`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._images import STAGE_CODES, derive_seed
from ..config import Config, DataConfig
from ..errors import ConfigError
from .inputs import as_config


def load_data(config: Config | str | None = None) -> Any:
    """The :class:`slade.data.SemiSupervisedData` a config's ``data`` section describes: the
    protocol's loader on its folders, at ``data.image_size`` with the grayscale training
    shift of ``data.shift``, the validation split and the ``max_*`` subsets."""
    from ..data import protocol, with_val_in_pool

    config = as_config(config)
    d = config.data
    entry = protocol(d.protocol)
    try:
        data = entry.loader(*_roots(d, entry), **_loader_options(config, entry))
    except TypeError as err:
        raise ConfigError(f"data.protocol_options do not fit {d.protocol}: {err}") from None
    if d.val_in_pool:
        data = with_val_in_pool(
            data, d.val_in_pool, derive_seed(config.seed, STAGE_CODES["val_in_pool"])
        )
    return _subsampled(data, d, config.seed)


def data_or_load(data: Any, config: Config) -> Any:
    """``data`` itself, or the config's data when it is None."""
    return load_data(config) if data is None else data


def _roots(d: DataConfig, entry: Any) -> list[Any]:
    """The folders the protocol reads, in its loader's order; required ones must be set."""
    values = []
    for root in entry.roots:
        value = getattr(d, root.field)
        if value is None and root.required:
            raise ConfigError(
                f"data.{root.field} is required by this protocol: {root.description} "
                f"(e.g. {root.flag} PATH)"
            )
        values.append(value)
    return values


def _loader_options(config: Config, entry: Any) -> dict[str, Any]:
    """``data.protocol_options`` with the validation split, the style (``folders``: from
    ``model.in_channels`` unless given), the image size and the default transforms."""
    d = config.data
    options = dict(d.protocol_options)
    if d.val_classes:
        options["val_classes"] = (
            int(d.val_classes) if float(d.val_classes).is_integer() else d.val_classes
        )
        options.setdefault("seed", config.seed)
    if d.val_groups:
        options["val_groups"] = d.val_groups
        options.setdefault("seed", config.seed)
    if d.skip_bad_files:
        options["skip_bad_files"] = True
    style = options.setdefault("style", data_style(config)) if entry.style is None else entry.style
    for key, value in entry.defaults(style, d.image_size, d.shift).items():
        options.setdefault(key, value)
    return options


def data_style(config: Config) -> str:
    """The transform style of a config's data: the protocol's, or for ``folders`` the
    ``style`` option, by default following ``model.in_channels`` (1 grayscale, 3 natural)."""
    from ..data import protocol

    entry = protocol(config.data.protocol)
    if entry.style is not None:
        return entry.style
    default = "grayscale" if config.model.in_channels == 1 else "natural"
    return str(config.data.protocol_options.get("style", default))


def eval_preprocessing_of(config: Config) -> Any:
    """How a config's pipeline turns an image file into the network's input when embedding
    (in-memory loaders resize when decoding, the others in the transform: the same steps),
    a :class:`slade.data.Preprocessing`."""
    from ..data import eval_preprocessing, protocol

    entry = protocol(config.data.protocol)
    size = entry.image_size if config.data.image_size is None else config.data.image_size
    return eval_preprocessing(data_style(config), size)


def _subsampled(data: Any, d: DataConfig, seed: int) -> Any:
    def pick(dataset: Any, limit: int | None, code: int) -> np.ndarray | None:
        if limit is None or dataset is None or len(dataset) <= limit:
            return None
        rng = np.random.default_rng(derive_seed(seed, STAGE_CODES["subset"], code))
        return np.sort(rng.choice(len(dataset), size=limit, replace=False))

    changes = {}
    rows = pick(data.labeled, d.max_labeled, 0)
    if rows is not None:
        changes["labeled"] = data.labeled.subset(rows)
    rows = pick(data.unlabeled, d.max_unlabeled, 1)
    if rows is not None:
        changes["unlabeled"] = data.unlabeled.subset(rows)
    rows = pick(data.test, d.max_test, 2)
    if rows is not None:
        changes["test"] = data.test.subset(rows, relabel=False)
    return dataclasses.replace(data, **changes) if changes else data
