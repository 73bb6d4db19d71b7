"""Weight importers: TF-slim .npy, Keras .h5 and torchvision .pth give the same canonical tensors; bad files fail."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from tinytrain import paths
from tinytrain.weights import (
    TF_PREPROCESSING,
    TORCHVISION_PREPROCESSING,
    ChecksumMismatchError,
    DownloadError,
    UnsafeCheckpointError,
    WeightsFormatError,
    WeightsNotFoundError,
    WeightsTensorError,
    expected_shapes,
    import_keras_h5,
    import_tfslim_npy,
    import_torchvision_pth,
    load_canonical,
    load_pretrained,
    manifest,
    save_canonical,
)
from tinytrain.weights import pretrained as pretrained_module
from tinytrain.weights.download import download_file
from tinytrain.weights.torch_checkpoint import read_torch_checkpoint

REPO = Path(__file__).resolve().parents[1]
TFSLIM_FOLDER = "mobilenet_v2_1.0_224_tfslim"
KERAS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
TORCHVISION_FILE = "mobilenet_v2-b0353104.pth"
BN_TF = ("gamma", "beta", "moving_mean", "moving_variance")


# ----------------------------------------------------------------------------------------------------------------
# Fixtures and file writers (each writer builds the file from the raw TF-slim arrays, not from the code under test)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tfslim_dir() -> Path:
    """The real TF-slim folder under $TINYTRAIN_DATA; skip without it, except under CI=true, where it must be there."""
    root = os.environ.get("TINYTRAIN_DATA")
    folder = Path(root) / TFSLIM_FOLDER if root else None
    if folder is not None and (folder / "SHA256SUMS").is_file():
        return folder
    reason = f"real weights not found: TINYTRAIN_DATA={root!r} has no {TFSLIM_FOLDER}/SHA256SUMS"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tfslim_weights(tfslim_dir):
    return import_tfslim_npy(tfslim_dir)


@pytest.fixture()
def tfslim_copy(tfslim_dir, tmp_path) -> Path:
    """A private copy of the TF-slim folder that a test may damage."""
    return Path(shutil.copytree(tfslim_dir, tmp_path / TFSLIM_FOLDER))


def npy(folder: Path, name: str) -> np.ndarray:
    return np.load(folder / f"{name}.npy")


def rewrite_sha256sums(folder: Path) -> None:
    """Make SHA256SUMS agree with the folder again (to reach the checks that come after the checksums)."""
    lines = []
    for path in sorted(folder.glob("*.npy")):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}")
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def keras_layers(naming: str) -> list[tuple[str, str, str, bool]]:
    """(TF-slim scope, Keras conv layer, Keras BN layer, depthwise) in forward order, for one Keras naming."""
    layers = [("Conv", "Conv1", "bn_Conv1", False)]
    for block in range(17):
        scope = "expanded_conv" if block == 0 else f"expanded_conv_{block}"
        kinds = ("depthwise", "project") if block == 0 else ("expand", "depthwise", "project")
        for kind in kinds:
            if naming == "2018-release":  # the names inside the published .h5
                conv, bn = f"mobl{block}_conv_{block}_{kind}", f"bn{block}_conv_{block}_bn_{kind}"
            else:  # keras.applications' current layer names
                prefix = "expanded_conv_" if block == 0 else f"block_{block}_"
                conv, bn = f"{prefix}{kind}", f"{prefix}{kind}_BN"
            layers.append((f"{scope}_{kind}", conv, bn, kind == "depthwise"))
    layers.append(("Conv_1", "Conv_1", "Conv_1_bn", False))
    return layers


def write_keras_h5(
    path: Path,
    tfslim_dir: Path,
    naming: str = "2018-release",
    whole_model: bool = False,
    skip_layer: str | None = None,
    replace: dict[str, np.ndarray] | None = None,
) -> Path:
    """A Keras 2 save_weights file (layer_names / weight_names attrs, /<layer>/<layer>/<var>:0 datasets)."""
    replace = replace or {}
    layer_weights: list[tuple[str, list[tuple[str, np.ndarray]]]] = [("input_1", [])]
    for scope, conv, bn, depthwise in keras_layers(naming):
        kernel_name = "depthwise_kernel" if depthwise else "kernel"
        kernel = npy(tfslim_dir, f"{scope}_{'depthwise_weights' if depthwise else 'weights'}")
        layer_weights.append((conv, [(kernel_name, kernel)]))
        layer_weights.append((bn, [(stat, npy(tfslim_dir, f"{scope}_BatchNorm_{stat}")) for stat in BN_TF]))
        layer_weights.append((f"{conv}_relu", []))
    layer_weights.append(("global_average_pooling2d_1", []))
    layer_weights.append(
        ("Logits", [("kernel", np.zeros((1280, 1000), np.float32)), ("bias", np.zeros(1000, np.float32))])
    )
    layer_weights = [(name, weights) for name, weights in layer_weights if name != skip_layer]
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if whole_model else f
        root.attrs["layer_names"] = np.array([name.encode() for name, _ in layer_weights])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.1.5"
        for name, weights in layer_weights:
            group = root.create_group(name)
            weight_names = [f"{name}/{variable}:0" for variable, _ in weights]
            group.attrs["weight_names"] = np.array([w.encode() for w in weight_names]) if weights else []
            for weight_name, (_, value) in zip(weight_names, weights):
                group.create_dataset(weight_name, data=replace.get(weight_name, value))
    return path


def torchvision_state_dict(tfslim_weights):
    """A torchvision mobilenet_v2 state dict (314 keys: features, num_batches_tracked, classifier), TF-slim values."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from reference_mobilenetv2 import build_reference

    rng = np.random.default_rng(0)
    head = rng.standard_normal((1000, 1280)).astype(np.float32), np.zeros(1000, np.float32)
    state = build_reference(tfslim_weights, *head).state_dict()
    assert len(state) == 314 and "classifier.1.weight" in state and "features.18.1.num_batches_tracked" in state
    assert state["features.2.conv.0.1.num_batches_tracked"].dtype == torch.int64
    return state


def save_torch(obj, path: Path, fmt: str) -> Path:
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].dtype == np.float32 and actual[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


# ----------------------------------------------------------------------------------------------------------------
# TF-slim .npy folder
# ----------------------------------------------------------------------------------------------------------------


def test_tfslim_import_shapes_layouts_and_values(tfslim_dir, tfslim_weights):
    w = tfslim_weights
    assert (w.name, w.source, w.preprocessing) == ("mobilenet_v2_1.0_224", "tfslim-npy", TF_PREPROCESSING)
    assert {k: v.shape for k, v in w.tensors.items()} == expected_shapes()
    assert len(w.tensors) == 260
    weight_count = sum(v.size for k, v in w.tensors.items() if k.endswith((".weight", ".bias")))
    assert weight_count == 2_223_872  # torchvision mobilenet_v2().features (PROVENANCE.md)
    assert w.source_sha256 == hashlib.sha256((tfslim_dir / "SHA256SUMS").read_bytes()).hexdigest()
    assert w.source_sha256 == "5e87b5d8f97b469cec52df174c61b5e473386f9b6e0cc32d1ecc92597f1870b7"

    stem = npy(tfslim_dir, "Conv_weights")  # (3, 3, 3, 32) HWIO
    np.testing.assert_array_equal(w.tensors["features.0.0.weight"], stem.transpose(3, 2, 0, 1))
    k, c, i, j = 17, 2, 0, 1
    assert w.tensors["features.0.0.weight"][k, c, i, j] == stem[i, j, c, k]
    depthwise = npy(tfslim_dir, "expanded_conv_1_depthwise_depthwise_weights")  # (3, 3, 96, 1)
    np.testing.assert_array_equal(w.tensors["features.2.conv.1.0.weight"], depthwise.transpose(2, 3, 0, 1))
    assert w.tensors["features.2.conv.1.0.weight"][50, 0, 2, 1] == depthwise[2, 1, 50, 0]
    np.testing.assert_array_equal(
        w.tensors["features.1.conv.1.weight"], npy(tfslim_dir, "expanded_conv_project_weights").transpose(3, 2, 0, 1)
    )
    np.testing.assert_array_equal(
        w.tensors["features.17.conv.2.weight"][:, :, 0, 0], npy(tfslim_dir, "expanded_conv_16_project_weights")[0, 0].T
    )
    np.testing.assert_array_equal(
        w.tensors["features.18.1.running_var"], npy(tfslim_dir, "Conv_1_BatchNorm_moving_variance")
    )
    np.testing.assert_array_equal(
        w.tensors["features.4.conv.0.1.weight"], npy(tfslim_dir, "expanded_conv_3_expand_BatchNorm_gamma")
    )
    np.testing.assert_array_equal(
        w.tensors["features.1.conv.2.bias"], npy(tfslim_dir, "expanded_conv_project_BatchNorm_beta")
    )
    assert all(v.flags.c_contiguous for v in w.tensors.values())


def test_tfslim_sha256_mismatch_names_the_file(tfslim_copy):
    target = tfslim_copy / "expanded_conv_5_project_weights.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last weight
    target.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="expanded_conv_5_project_weights.npy"):
        import_tfslim_npy(tfslim_copy)


def test_tfslim_truncated_npy_names_the_file(tfslim_copy):
    truncate(tfslim_copy / "Conv_1_weights.npy")
    rewrite_sha256sums(tfslim_copy)  # so the .npy reader, not the checksum, is what notices
    with pytest.raises(WeightsFormatError, match="Conv_1_weights.npy") as error:
        import_tfslim_npy(tfslim_copy)
    assert "truncated" in str(error.value)


def test_tfslim_wrong_shape_names_file_and_tensor(tfslim_copy):
    np.save(tfslim_copy / "expanded_conv_3_expand_weights.npy", np.zeros((1, 1, 24, 100), np.float32))
    rewrite_sha256sums(tfslim_copy)
    with pytest.raises(WeightsTensorError, match="expanded_conv_3_expand_weights.npy") as error:
        import_tfslim_npy(tfslim_copy)
    assert error.value.tensor == "features.4.conv.0.0.weight" and "(1, 1, 24, 100)" in str(error.value)


def test_tfslim_missing_tensor_names_file_and_tensor(tfslim_copy):
    (tfslim_copy / "expanded_conv_7_depthwise_BatchNorm_moving_mean.npy").unlink()
    rewrite_sha256sums(tfslim_copy)
    with pytest.raises(WeightsTensorError, match="expanded_conv_7_depthwise_BatchNorm_moving_mean.npy") as error:
        import_tfslim_npy(tfslim_copy)
    assert error.value.tensor == "features.8.conv.1.1.running_mean"


def test_tfslim_unlisted_or_missing_sums(tfslim_copy):
    sums = tfslim_copy / "SHA256SUMS"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if "Conv_weights.npy" not in line))
    with pytest.raises(WeightsFormatError, match="Conv_weights.npy.*not listed"):
        import_tfslim_npy(tfslim_copy)
    sums.unlink()
    with pytest.raises(WeightsFormatError, match="no SHA256SUMS"):
        import_tfslim_npy(tfslim_copy)


# ----------------------------------------------------------------------------------------------------------------
# Canonical HDF5 file
# ----------------------------------------------------------------------------------------------------------------


def test_canonical_round_trip_is_exact_and_leaves_no_temp_file(tfslim_weights, tmp_path):
    target = tmp_path / "w.h5"
    save_canonical(tfslim_weights, target)
    assert sorted(tmp_path.iterdir()) == [target]
    loaded = load_canonical(target)
    assert_same_tensors(loaded.tensors, tfslim_weights.tensors)
    assert (loaded.name, loaded.source, loaded.preprocessing, loaded.source_sha256) == (
        tfslim_weights.name,
        tfslim_weights.source,
        tfslim_weights.preprocessing,
        tfslim_weights.source_sha256,
    )
    with h5py.File(target) as f:
        assert f.attrs["format"] == "tinytrain-weights" and f.attrs["format_version"] == 1
        assert f.attrs["padding"] == "tf_same" and f.attrs["bn_eps"] == 1e-3
        assert list(f.attrs["input_mean"]) == [0.5, 0.5, 0.5]


def test_canonical_failure_midway_leaves_target_untouched(tfslim_weights, tmp_path, monkeypatch):
    target = tmp_path / "w.h5"
    save_canonical(tfslim_weights, target)
    before = target.read_bytes()
    real_create_dataset = h5py.Group.create_dataset
    calls = []

    def failing_create_dataset(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 100:
            raise OSError("disk full (simulated)")
        return real_create_dataset(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create_dataset)
    changed = type(tfslim_weights)(
        tfslim_weights.name,
        tfslim_weights.source,
        tfslim_weights.preprocessing,
        {k: v + 1 for k, v in tfslim_weights.tensors.items()},
    )
    with pytest.raises(OSError, match="simulated"):
        save_canonical(changed, target)
    with pytest.raises(OSError, match="simulated"):
        calls.clear()
        save_canonical(changed, tmp_path / "new.h5")
    assert target.read_bytes() == before
    assert sorted(tmp_path.iterdir()) == [target]  # no temp file, no half-written new.h5


def test_canonical_refuses_invalid_weights(tfslim_weights, tmp_path):
    bad = dict(tfslim_weights.tensors)
    bad["features.3.conv.1.0.weight"] = np.zeros((144, 1, 3, 3), np.float64)
    weights = type(tfslim_weights)(tfslim_weights.name, tfslim_weights.source, tfslim_weights.preprocessing, bad)
    with pytest.raises(WeightsTensorError, match="features.3.conv.1.0.weight.*float64"):
        save_canonical(weights, tmp_path / "w.h5")
    assert not (tmp_path / "w.h5").exists()


@pytest.mark.parametrize("damage", ["missing", "shape", "nan", "truncated", "format"])
def test_load_canonical_errors_name_file_and_tensor(tfslim_weights, tmp_path, damage):
    target = tmp_path / "w.h5"
    save_canonical(tfslim_weights, target)
    key = "features.9.conv.2.weight"
    if damage == "truncated":
        truncate(target)
    else:
        with h5py.File(target, "a") as f:
            if damage == "format":
                f.attrs["format"] = "something-else"
            else:
                value = f[key][()]
                del f[key]
                if damage == "shape":
                    f.create_dataset(key, data=value[:10])
                elif damage == "nan":
                    value[3, 7] = np.nan
                    f.create_dataset(key, data=value)
    expected_error = WeightsTensorError if damage in ("missing", "shape", "nan") else WeightsFormatError
    with pytest.raises(expected_error, match=str(target)) as error:
        load_canonical(target)
    if expected_error is WeightsTensorError:
        assert error.value.tensor == key


# ----------------------------------------------------------------------------------------------------------------
# Keras .h5
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "naming, whole_model", [("2018-release", False), ("keras-applications", False), ("2018-release", True)]
)
def test_keras_import_equals_tfslim(tfslim_dir, tfslim_weights, tmp_path, naming, whole_model):
    path = write_keras_h5(tmp_path / KERAS_FILE, tfslim_dir, naming, whole_model)
    weights = import_keras_h5(path)
    assert (weights.source, weights.preprocessing) == ("keras-h5", TF_PREPROCESSING)
    assert weights.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert_same_tensors(weights.tensors, tfslim_weights.tensors)


def test_keras_truncated_file_names_the_file(tfslim_dir, tmp_path):
    path = write_keras_h5(tmp_path / KERAS_FILE, tfslim_dir)
    truncate(path)
    with pytest.raises(WeightsFormatError, match=KERAS_FILE):
        import_keras_h5(path)


def test_keras_wrong_shape_and_missing_layer_name_file_and_tensor(tfslim_dir, tmp_path):
    path = write_keras_h5(
        tmp_path / KERAS_FILE,
        tfslim_dir,
        replace={"mobl4_conv_4_project/kernel:0": np.zeros((1, 1, 192, 31), np.float32)},
    )
    with pytest.raises(WeightsTensorError, match=KERAS_FILE) as error:
        import_keras_h5(path)
    assert error.value.tensor == "mobl4_conv_4_project/mobl4_conv_4_project/kernel:0"
    assert "features.5.conv.2.weight" in str(error.value)
    path = write_keras_h5(tmp_path / KERAS_FILE, tfslim_dir, skip_layer="bn12_conv_12_bn_depthwise")
    with pytest.raises(WeightsTensorError, match="bn12_conv_12_bn_depthwise") as error:
        import_keras_h5(path)
    assert error.value.tensor == "features.13.conv.1.1.*" and KERAS_FILE in str(error.value)


# ----------------------------------------------------------------------------------------------------------------
# torchvision .pth (restricted unpickler, zip and legacy formats)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torchvision_import_equals_tfslim(tfslim_weights, tmp_path, fmt):
    path = save_torch(torchvision_state_dict(tfslim_weights), tmp_path / TORCHVISION_FILE, fmt)
    weights = import_torchvision_pth(path)
    # Same values; the preprocessing is torchvision's (ImageNet mean/std, eps 1e-5, symmetric) because that is
    # what a real torchvision file was trained with, whatever values the test put in it.
    assert (weights.source, weights.preprocessing) == ("torchvision-pth", TORCHVISION_PREPROCESSING)
    assert weights.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert_same_tensors(weights.tensors, tfslim_weights.tensors)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_checkpoint_reader_matches_torch(tmp_path, fmt):
    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "transposed": base.T,
        "offset_view": base[1:, 2:],
        "scalar": torch.tensor(7),
        "half": base.half(),
        "nested": [base[0], (torch.ones(2, dtype=torch.float64),)],
        "number": 3,
    }
    loaded = read_torch_checkpoint(save_torch(obj, tmp_path / "c.pth", fmt))
    for key in ("transposed", "offset_view", "scalar", "half"):
        assert loaded[key].dtype == np.dtype(str(obj[key].dtype).removeprefix("torch.")), key
        np.testing.assert_array_equal(loaded[key], obj[key].numpy(), err_msg=key)
    np.testing.assert_array_equal(loaded["nested"][0], base[0].numpy())
    np.testing.assert_array_equal(loaded["nested"][1][0], np.ones(2))
    assert loaded["number"] == 3


class _RunsShell:
    """Pickles as a call to os.system: unpickling it with a plain pickle.load would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _RunsEval:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import builtins

        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("payload", [_RunsShell, _RunsEval])
def test_torchvision_refuses_pickles_naming_other_globals(tmp_path, fmt, payload):
    import torch

    marker = tmp_path / "pwned"
    path = save_torch(
        {"features.0.0.weight": torch.zeros(32, 3, 3, 3), "extra": payload(marker)}, tmp_path / TORCHVISION_FILE, fmt
    )
    with pytest.raises(UnsafeCheckpointError, match=r"(system|eval)") as error:
        import_torchvision_pth(path)
    assert TORCHVISION_FILE in str(error.value) and "nothing from the file was run" in str(error.value)
    assert not marker.exists()


def test_torchvision_refuses_a_hand_made_zip_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / TORCHVISION_FILE
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_RunsShell(marker), protocol=2))
        archive.writestr("archive/version", "3\n")
    with pytest.raises(UnsafeCheckpointError, match="system"):
        import_torchvision_pth(path)
    assert not marker.exists()
    # And in the legacy header, before the magic number is even checked.
    path.write_bytes(pickle.dumps(_RunsShell(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        import_torchvision_pth(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torchvision_truncated_file_names_the_file(tfslim_weights, tmp_path, fmt):
    path = save_torch(torchvision_state_dict(tfslim_weights), tmp_path / TORCHVISION_FILE, fmt)
    truncate(path, 0.7)
    with pytest.raises(WeightsFormatError, match=TORCHVISION_FILE) as error:
        import_torchvision_pth(path)
    assert "truncated" in str(error.value)


def test_torchvision_wrong_shape_or_missing_tensor_names_file_and_tensor(tfslim_weights, tmp_path):
    import torch

    state = torchvision_state_dict(tfslim_weights)
    state["features.6.conv.3.running_var"] = torch.ones(33)
    path = save_torch(state, tmp_path / TORCHVISION_FILE, "zip")
    with pytest.raises(WeightsTensorError, match=TORCHVISION_FILE) as error:
        import_torchvision_pth(path)
    assert error.value.tensor == "features.6.conv.3.running_var" and "(33,)" in str(error.value)
    del state["features.6.conv.3.running_var"]
    path = save_torch(state, tmp_path / TORCHVISION_FILE, "zip")
    with pytest.raises(WeightsTensorError, match="missing") as error:
        import_torchvision_pth(path)
    assert error.value.tensor == "features.6.conv.3.running_var"


# ----------------------------------------------------------------------------------------------------------------
# load_pretrained, downloads, manifest, paths
# ----------------------------------------------------------------------------------------------------------------


def test_load_pretrained_without_weights_says_what_to_put_where(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(WeightsNotFoundError) as error:
        load_pretrained(data_dir=data, cache_dir=tmp_path / "cache", allow_download=False)
    message = str(error.value)
    for needed in (
        str(data),
        TFSLIM_FOLDER,
        KERAS_FILE,
        TORCHVISION_FILE,
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + KERAS_FILE,
        "https://download.pytorch.org/models/" + TORCHVISION_FILE,
    ):
        assert needed in message
    assert list(data.iterdir()) == []


def test_load_pretrained_imports_once_then_reads_the_cache(tfslim_copy, tfslim_weights, tmp_path):
    data, cache = tfslim_copy.parent, tmp_path / "cache"
    first = load_pretrained(data_dir=data, cache_dir=cache, allow_download=False)
    cached = cache / "weights" / "mobilenet_v2_1.0_224-tfslim-npy.h5"
    assert first.source == "tfslim-npy" and cached.is_file()
    shutil.rmtree(tfslim_copy)  # the source is gone: the second call can only use the cache
    second = load_pretrained(data_dir=data, cache_dir=cache, allow_download=False)
    assert (second.source, second.preprocessing, second.source_sha256) == (
        "tfslim-npy",
        TF_PREPROCESSING,
        first.source_sha256,
    )
    assert_same_tensors(second.tensors, tfslim_weights.tensors)


def test_load_pretrained_replaces_an_invalid_cache(tfslim_copy, tmp_path):
    cache = tmp_path / "cache"
    load_pretrained(data_dir=tfslim_copy.parent, cache_dir=cache, allow_download=False)
    cached = cache / "weights" / "mobilenet_v2_1.0_224-tfslim-npy.h5"
    truncate(cached)
    with pytest.warns(UserWarning, match="invalid cached weights"):
        load_pretrained(data_dir=tfslim_copy.parent, cache_dir=cache, allow_download=False)
    load_canonical(cached)  # rewritten whole


def test_load_pretrained_downloads_the_keras_file_first(tfslim_dir, tfslim_weights, tmp_path, monkeypatch):
    requested = []

    def fake_download(url, target, sha256=None, sha256_prefix=None, size_bytes=None, progress=True):
        requested.append((url, Path(target).name, size_bytes))
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        write_keras_h5(Path(target), tfslim_dir)
        return "0" * 64

    monkeypatch.setattr(pretrained_module, "download_file", fake_download)
    data = tmp_path / "data"
    weights = load_pretrained(data_dir=data, cache_dir=tmp_path / "cache")
    assert requested == [
        (
            "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" + KERAS_FILE,
            KERAS_FILE,
            14_536_120,
        )
    ]
    assert weights.source == "keras-h5" and (data / KERAS_FILE).is_file()
    assert (tmp_path / "cache" / "weights" / "mobilenet_v2_1.0_224-keras-h5.h5").is_file()
    assert_same_tensors(weights.tensors, tfslim_weights.tensors)


def test_download_file_is_atomic_and_verified(tmp_path):
    source = tmp_path / "published.bin"
    source.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    target = tmp_path / "data" / "copy.bin"
    assert download_file(source.as_uri(), target, sha256=digest, size_bytes=7000, progress=False) == digest
    assert target.read_bytes() == source.read_bytes()
    target.unlink()
    for bad in ({"sha256": "0" * 64}, {"sha256_prefix": "ffffffff"}, {"size_bytes": 6999}):
        with pytest.raises(DownloadError, match="copy.bin"):
            download_file(source.as_uri(), target, progress=False, **bad)
    with pytest.raises(DownloadError, match="failed"):
        download_file((tmp_path / "absent.bin").as_uri(), target, progress=False)
    assert list((tmp_path / "data").iterdir()) == []  # nothing half-written, no temp file


def test_committed_manifest_matches_the_code():
    committed = json.loads((REPO / "weights" / "manifest.json").read_text())
    assert committed == manifest()
    by_source = {entry["source"]: entry for entry in committed["weights"]}
    assert by_source["torchvision-pth"]["sha256_prefix"] == "b0353104"
    assert by_source["keras-h5"]["url"].endswith("/keras-applications/mobilenet_v2/" + KERAS_FILE)


def test_paths_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYTRAIN_DATA", raising=False)
    monkeypatch.delenv("TINYTRAIN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.data_dir() == tmp_path / "xdg" / "tinytrain" / "data"
    assert paths.cache_dir() == tmp_path / "xdg" / "tinytrain"
    monkeypatch.setenv("TINYTRAIN_DATA", str(tmp_path / "env-data"))
    monkeypatch.setenv("TINYTRAIN_CACHE", str(tmp_path / "env-cache"))
    assert paths.data_dir() == tmp_path / "env-data" and paths.cache_dir() == tmp_path / "env-cache"
    assert paths.data_dir(tmp_path / "cli") == tmp_path / "cli" and paths.cache_dir(tmp_path / "c") == tmp_path / "c"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("TINYTRAIN_DATA")
    assert paths.data_dir() == Path.home() / ".cache" / "tinytrain" / "data"
