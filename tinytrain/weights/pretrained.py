"""load_pretrained: the canonical cache, else a published file in the data directory, else a download; cached."""

from __future__ import annotations

import warnings
from pathlib import Path

from .. import paths
from .canonical import load_canonical, save_canonical
from .download import download_file
from .errors import DownloadError, WeightsError, WeightsNotFoundError
from .sources import WEIGHTS_FILES, WeightsFile
from .tfslim import NAME
from .types import PretrainedWeights


def cache_path(cache_root: Path, name: str, source: str) -> Path:
    return cache_root / "weights" / f"{name}-{source}.h5"


def load_pretrained(
    name: str = NAME,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    allow_download: bool = True,
) -> PretrainedWeights:
    """The MobileNetV2-1.0 ImageNet backbone, from the first of these that works:

    1. a valid canonical file <cache_dir>/weights/<name>-<source>.h5 (sources in WEIGHTS_FILES order);
    2. the first published form found in the data directory (TF-slim .npy folder, Keras .h5, torchvision .pth),
       imported, then saved to the cache;
    3. if allow_download: the Keras .h5, then the torchvision .pth, downloaded into the data directory.
    Otherwise WeightsNotFoundError says which file to put where and where to download it.
    Downloads are checked against the published hash or size; files already in the data directory are not (a re-saved
    .pth is legitimate), but every import checks every tensor's name, shape and finiteness.
    Directories: paths.data_dir(data_dir) and paths.cache_dir(cache_dir).
    """
    if name != NAME:
        raise ValueError(f"unknown weights {name!r}; available: {NAME!r}")
    data_root = paths.data_dir(data_dir)
    cache_root = paths.cache_dir(cache_dir)
    for file in WEIGHTS_FILES:
        cached = cache_path(cache_root, name, file.source)
        if cached.is_file():
            try:
                weights = load_canonical(cached)
            except WeightsError as error:
                warnings.warn(f"ignoring the invalid cached weights: {error}", stacklevel=2)
                continue
            if weights.name == name and weights.source == file.source:
                return weights
    for file in WEIGHTS_FILES:
        if (data_root / file.filename).exists():
            return _import_and_cache(file, data_root / file.filename, cache_root)
    if not allow_download:
        raise WeightsNotFoundError(data_root, not_found_message(data_root))
    failures = []
    for file in WEIGHTS_FILES:
        if not file.downloadable:
            continue
        try:
            download_file(file.url, data_root / file.filename, file.sha256, file.sha256_prefix, file.size_bytes)
        except DownloadError as error:
            failures.append(str(error))
            continue
        return _import_and_cache(file, data_root / file.filename, cache_root)
    raise WeightsNotFoundError(
        data_root, not_found_message(data_root) + "\nDownloads failed:\n  " + "\n  ".join(failures)
    )


def _import_and_cache(file: WeightsFile, source_path: Path, cache_root: Path) -> PretrainedWeights:
    weights = file.importer(source_path)
    try:
        save_canonical(weights, cache_path(cache_root, weights.name, weights.source))
    except OSError as error:  # a read-only cache costs a re-import next time, nothing more
        warnings.warn(f"could not cache the imported weights in {cache_root}: {error}", stacklevel=3)
    return weights


def not_found_message(data_root: Path) -> str:
    lines = [f"no pretrained weights for {NAME} found. Put one of these in {data_root}:"]
    for file in WEIGHTS_FILES:
        kind = "folder of .npy files + SHA256SUMS" if file.source == "tfslim-npy" else "file"
        lines.append(f"  {file.filename}{'/' if file.source == 'tfslim-npy' else ''} ({kind}), from {file.url}")
    lines.append(
        "The data directory is --data-dir, else $TINYTRAIN_DATA, else ($XDG_CACHE_HOME or ~/.cache)/tinytrain/data. "
        "With downloads allowed, the .h5 (then the .pth) is fetched there automatically."
    )
    return "\n".join(lines)
