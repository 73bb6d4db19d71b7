"""CIFAR-10 loading (python batches, image folders, cache, download, errors) and the augmentation pipeline."""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytrain.data import (
    LABEL_NAMES,
    Augmenter,
    ChecksumMismatchError,
    DataFormatError,
    DataNotFoundError,
    UnsafePickleError,
    cifar10,
    image_folder,
    load_cifar10,
    md5_file,
    random_crop_flip,
    resize_bilinear,
)
from tinytrain.data.download import md5_bytes

JPEG_ARCHIVE = cifar10.JPEG_ARCHIVE
SPLIT_SIZES = {"train": (7, 5, 6, 4, 8), "test": (9,)}  # images per batch file, small stand-ins for 10,000


# ---------------------------------------------------------------- writing the original format ----------------------


def py2_pickle(obj) -> bytes:
    """`obj` as Python 2's cPickle.dump(obj, f, 2) writes a CIFAR batch, without the memo opcodes (BINPUT), which a
    reader ignores: bytes are Python 2 str (SHORT_BINSTRING/BINSTRING), lists append in runs of 1000, and a uint8
    array is numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b') then BUILD with its state."""
    out = bytearray(b"\x80\x02")
    _write(out, obj)
    return bytes(out + b".")


def _write(out: bytearray, obj) -> None:
    if obj is None:
        out += b"N"
    elif obj is False:
        out += b"\x89"
    elif isinstance(obj, int):
        if 0 <= obj < 256:
            out += b"K" + bytes([obj])
        elif 0 <= obj < 65536:
            out += b"M" + struct.pack("<H", obj)
        else:
            out += b"J" + struct.pack("<i", obj)
    elif isinstance(obj, bytes):
        out += (b"U" + bytes([len(obj)]) if len(obj) < 256 else b"T" + struct.pack("<I", len(obj))) + obj
    elif isinstance(obj, tuple):
        if 1 <= len(obj) <= 3:  # TUPLE1..3
            for item in obj:
                _write(out, item)
            out += (b"\x85", b"\x86", b"\x87")[len(obj) - 1]
        else:  # MARK items TUPLE
            out += b"("
            for item in obj:
                _write(out, item)
            out += b"t"
    elif isinstance(obj, list):
        out += b"]"
        for start in range(0, len(obj), 1000):
            out += b"("
            for item in obj[start : start + 1000]:
                _write(out, item)
            out += b"e"
    elif isinstance(obj, dict):
        out += b"}("
        for key, value in obj.items():
            _write(out, key)
            _write(out, value)
        out += b"u"
    elif isinstance(obj, np.dtype):  # dtype("u1", 0, 1), then BUILD with its state
        assert obj == np.uint8
        out += b"cnumpy\ndtype\n"
        _write(out, (b"u1", 0, 1))
        out += b"R"
        _write(out, (3, b"|", None, None, None, -1, -1, 0))
        out += b"b"
    elif isinstance(obj, np.ndarray):  # _reconstruct(ndarray, (0,), "b"), then BUILD with its state
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        _write(out, (0,))
        _write(out, b"b")
        out += b"\x87R"
        _write(out, (1, obj.shape, obj.dtype, False, obj.tobytes()))
        out += b"b"
    else:
        raise TypeError(type(obj))


def write_batches(folder: Path, rows: dict[str, np.ndarray], labels: dict[str, np.ndarray], meta: bytes) -> None:
    """cifar-10-batches-py/ in the original format: rows[split] (N, 3072) uint8 split into SPLIT_SIZES files."""
    folder.mkdir(parents=True)
    (folder / "batches.meta").write_bytes(meta)
    for split, names in cifar10.SPLIT_BATCHES.items():
        start = 0
        for number, (name, size) in enumerate(zip(names, SPLIT_SIZES[split]), 1):
            part = slice(start, start + size)
            kind = "training" if split == "train" else "testing"
            batch = {
                b"batch_label": f"{kind} batch {number} of {len(names)}".encode(),
                b"labels": [int(label) for label in labels[split][part]],
                b"data": rows[split][part],
                b"filenames": [f"image_{index}.png".encode() for index in range(part.start, part.stop)],
            }
            (folder / name).write_bytes(py2_pickle(batch))
            start += size


def meta_pickle() -> bytes:
    names = [name.encode() for name in LABEL_NAMES]
    return py2_pickle({b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072})


def trust(monkeypatch, folder: Path, archive: Path | None = None) -> None:
    """Make the small test files pass the md5 check, as the published files would."""
    for file in folder.iterdir():
        monkeypatch.setitem(cifar10.BATCH_MD5, file.name, md5_file(file))
    if archive is not None:
        monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5_file(archive))


def make_tar_gz(archive: Path, folder: Path, arcname: str) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)


def random_split_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = {split: rng.integers(0, 256, (sum(SPLIT_SIZES[split]), 3072), dtype=np.uint8) for split in SPLIT_SIZES}
    labels = {split: rng.integers(0, 10, len(rows[split]), dtype=np.uint8) for split in SPLIT_SIZES}
    return rows, labels


@pytest.fixture
def batches_dir(tmp_path, monkeypatch):
    """A data dir holding small random python batches, trusted by the md5 table; returns (data dir, rows, labels)."""
    rows, labels = random_split_data()
    folder = tmp_path / "data" / "cifar10" / cifar10.BATCHES_FOLDER
    write_batches(folder, rows, labels, meta_pickle())
    trust(monkeypatch, folder)
    return tmp_path / "data", rows, labels


# ---------------------------------------------------------------- python batches -----------------------------------


def to_hwc(rows: np.ndarray) -> np.ndarray:
    """CIFAR rows (N, 3072): 1024 R, 1024 G, 1024 B, each 32x32 row-major, written out by hand."""
    images = np.empty((len(rows), 32, 32, 3), dtype=np.uint8)
    for channel in range(3):
        images[..., channel] = rows[:, channel * 1024 : (channel + 1) * 1024].reshape(-1, 32, 32)
    return images


@pytest.mark.parametrize("packed", ["folder", "archive"])
def test_python_batches_round_trip_exact_pixels(data_dir, tmp_path, monkeypatch, packed):
    """Batches made from the pixel-exact CIFAR-10 images, in the original format, read back bit for bit."""
    exact = np.load(data_dir / "cifar10" / cifar10.ORDER_LABELS)
    rows = {split: exact[f"{split}_subset_data"][: sum(SPLIT_SIZES[split])] for split in SPLIT_SIZES}
    labels = {split: exact[f"{split}_labels"][exact[f"{split}_subset_index"]][: len(rows[split])] for split in rows}
    root = tmp_path / "data"
    folder = tmp_path / "extracted" / cifar10.BATCHES_FOLDER
    real_meta = (data_dir / "cifar10" / "batches.meta").read_bytes()  # the original file, official md5
    write_batches(folder, rows, labels, real_meta)
    root.mkdir()
    if packed == "folder":
        (root / "cifar10").mkdir()
        folder = folder.rename(root / "cifar10" / cifar10.BATCHES_FOLDER)
        trust(monkeypatch, folder)
    else:
        archive = root / cifar10.ARCHIVE  # directly in the data dir, as torchvision keeps it, works too
        make_tar_gz(archive, folder, cifar10.BATCHES_FOLDER)
        trust(monkeypatch, folder, archive)
    monkeypatch.setitem(cifar10.BATCH_MD5, "batches.meta", "5ff9c542aee3614f3951f8cda6e48888")
    for split in ("train", "test"):
        dataset = load_cifar10(split, data_dir=root, allow_download=False)
        assert dataset.images.dtype == np.uint8 and dataset.images.shape == (len(rows[split]), 32, 32, 3)
        assert dataset.labels.dtype == np.uint8 and dataset.labels.shape == (len(rows[split]),)
        np.testing.assert_array_equal(dataset.images, to_hwc(rows[split]))
        np.testing.assert_array_equal(dataset.labels, labels[split])
        assert dataset.label_names == LABEL_NAMES
        assert dataset.source.startswith("python batches ")
        assert dataset.source.endswith(cifar10.BATCHES_FOLDER if packed == "folder" else cifar10.ARCHIVE)


def test_real_batches_meta_has_the_published_md5(data_dir):
    meta = data_dir / "cifar10" / "batches.meta"
    assert md5_file(meta) == cifar10.BATCH_MD5["batches.meta"]
    assert cifar10._label_names(cifar10._unpickle(meta.read_bytes(), str(meta)), str(meta)) == LABEL_NAMES


def test_wrong_md5_names_file_expected_and_actual(batches_dir):
    root, _, _ = batches_dir
    batch = root / "cifar10" / cifar10.BATCHES_FOLDER / "data_batch_3"
    expected = md5_file(batch)
    raw = bytearray(batch.read_bytes())
    raw[-100] ^= 1  # one flipped bit in the pixels
    batch.write_bytes(bytes(raw))
    with pytest.raises(ChecksumMismatchError) as error:
        load_cifar10("train", data_dir=root, allow_download=False)
    message = str(error.value)
    assert str(batch) in message and expected in message and md5_bytes(bytes(raw)) in message
    load_cifar10("test", data_dir=root, allow_download=False)  # the other split's files are fine


def test_missing_batch_file_is_named(batches_dir):
    root, _, _ = batches_dir
    (root / "cifar10" / cifar10.BATCHES_FOLDER / "data_batch_4").unlink()
    with pytest.raises(DataNotFoundError, match="data_batch_4.*extract cifar-10-python.tar.gz"):
        load_cifar10("train", data_dir=root, allow_download=False)


def test_nothing_found_says_what_to_put_where(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_cifar10("train", data_dir=tmp_path, allow_download=False)
    message = str(error.value)
    assert str(tmp_path / "cifar10") in message
    assert cifar10.ARCHIVE in message and cifar10.URL in message and JPEG_ARCHIVE in message


def test_split_must_be_train_or_test(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_cifar10("validation", data_dir=tmp_path, allow_download=False)


def test_pickle_globals_outside_the_allow_list_are_refused(batches_dir, monkeypatch):
    root, _, _ = batches_dir
    batch = root / "cifar10" / cifar10.BATCHES_FOLDER / "test_batch"
    # {b"data": os.getcwd()}: harmless if it ran, but it must not even be looked up
    batch.write_bytes(b"\x80\x02}(U\x04datacos\ngetcwd\n)Ru.")
    monkeypatch.setitem(cifar10.BATCH_MD5, "test_batch", md5_file(batch))
    with pytest.raises(UnsafePickleError, match=r"test_batch.*os\.getcwd"):
        load_cifar10("test", data_dir=root, allow_download=False)


def test_corrupt_pickle_names_the_file(batches_dir, monkeypatch):
    root, _, _ = batches_dir
    batch = root / "cifar10" / cifar10.BATCHES_FOLDER / "test_batch"
    batch.write_bytes(batch.read_bytes()[:5000])  # truncated inside the pixel string
    monkeypatch.setitem(cifar10.BATCH_MD5, "test_batch", md5_file(batch))
    with pytest.raises(DataFormatError, match="test_batch.*not a readable pickle"):
        load_cifar10("test", data_dir=root, allow_download=False)


def test_truncated_batch_archive_names_the_archive(batches_dir, monkeypatch):
    root, _, _ = batches_dir
    folder = root / "cifar10" / cifar10.BATCHES_FOLDER
    archive = root / cifar10.ARCHIVE
    make_tar_gz(archive, folder, cifar10.BATCHES_FOLDER)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    folder.rename(root / "elsewhere")
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5_file(archive))
    with pytest.raises(DataFormatError, match=f"{cifar10.ARCHIVE}.*corrupt or truncated"):
        load_cifar10("train", data_dir=root, allow_download=False)


def test_download_when_missing(batches_dir, tmp_path, monkeypatch):
    """The download path end to end, from a file:// URL: verified, atomic, then read like any archive."""
    source, rows, labels = batches_dir
    served = tmp_path / "served.tar.gz"
    make_tar_gz(served, source / "cifar10" / cifar10.BATCHES_FOLDER, cifar10.BATCHES_FOLDER)
    monkeypatch.setattr(cifar10, "URL", served.as_uri())
    root = tmp_path / "empty"
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", "0" * 32)
    with pytest.raises(DataNotFoundError, match="download failed.*md5"):
        load_cifar10("test", data_dir=root, progress=False)
    assert list((root / "cifar10").iterdir()) == []  # no partial file left behind
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5_file(served))
    dataset = load_cifar10("test", data_dir=root, progress=False)
    assert (root / "cifar10" / cifar10.ARCHIVE).is_file()
    np.testing.assert_array_equal(dataset.images, to_hwc(rows["test"]))
    np.testing.assert_array_equal(dataset.labels, labels["test"])


# ---------------------------------------------------------------- image folder -------------------------------------


def flat_image(value: int, label: int) -> bytes:
    """A flat-colour 32x32 JPEG: it decodes to within a grey level or two, so its red value identifies it."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (value, 20 * label, 128)).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def write_image_folder(target: Path, labels: dict[str, np.ndarray], as_archive: bool = True) -> None:
    """<split>/<class>/NNNN.jpg, NNNN = rank within its class in the given order; image i has red = 4 * i."""
    files = {}
    for split, split_labels in labels.items():
        ranks = np.zeros(10, dtype=int)
        for index, label in enumerate(split_labels):
            files[f"{split}/{LABEL_NAMES[label]}/{ranks[label]:04d}.jpg"] = flat_image(4 * index, int(label))
            ranks[label] += 1
    if not as_archive:
        for name, data in files.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(data)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def folder_labels():
    rng = np.random.default_rng(1)
    return {"train": rng.integers(0, 10, 60, dtype=np.uint8), "test": rng.integers(0, 10, 25, dtype=np.uint8)}


@pytest.mark.parametrize("layout", [JPEG_ARCHIVE, "CIFAR-10-images"])
def test_image_folder_restores_the_original_order(tmp_path, folder_labels, layout):
    root = tmp_path / "data"
    write_image_folder(root / "cifar10" / layout, folder_labels, as_archive=layout.endswith(".tar.gz"))
    np.savez(root / "cifar10" / cifar10.ORDER_LABELS, train_labels=folder_labels["train"],
             test_labels=folder_labels["test"])
    for split, labels in folder_labels.items():
        dataset = load_cifar10(split, data_dir=root, cache_dir=tmp_path / "cache", allow_download=False, progress=False)
        assert dataset.images.dtype == np.uint8 and dataset.images.shape == (len(labels), 32, 32, 3)
        np.testing.assert_array_equal(dataset.labels, labels)
        red = dataset.images[..., 0].mean(axis=(1, 2))
        np.testing.assert_allclose(red, 4 * np.arange(len(labels)), atol=2)
        assert dataset.source == (f"JPEG q75 image folder cifar10/{layout}, original order from the labels in "
                                  f"cifar10/{cifar10.ORDER_LABELS}")


def test_image_folder_without_labels_is_class_major_and_says_so(tmp_path, folder_labels):
    root = tmp_path / "data"
    write_image_folder(root / "cifar10" / JPEG_ARCHIVE, folder_labels)
    dataset = load_cifar10("train", data_dir=root, cache_dir=tmp_path / "cache", allow_download=False, progress=False)
    order = np.argsort(folder_labels["train"], kind="stable")  # class by class, each in its original order
    np.testing.assert_array_equal(dataset.labels, folder_labels["train"][order])
    np.testing.assert_allclose(dataset.images[..., 0].mean(axis=(1, 2)), 4 * order, atol=2)
    assert "class-major order, NOT the original CIFAR order" in dataset.source


def test_decoded_images_are_cached(tmp_path, folder_labels, monkeypatch):
    root, cache = tmp_path / "data", tmp_path / "cache"
    write_image_folder(root / "cifar10" / JPEG_ARCHIVE, folder_labels)
    first = load_cifar10("train", data_dir=root, cache_dir=cache, allow_download=False, progress=False)
    (cached,) = (cache / "data").glob("cifar10_jpeg_q75_yoongikim-train-*.npz")

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache holds the images")

    monkeypatch.setattr(image_folder, "_decode", no_decoding)
    second = load_cifar10("train", data_dir=root, cache_dir=cache, allow_download=False, progress=False)
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.source == first.source
    assert not list((cache / "data").glob(".*.part"))  # the atomic write left no temp file

    cached.write_bytes(b"not an npz")  # a broken cache is rebuilt, with a warning
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="unreadable cache"):
        third = load_cifar10("train", data_dir=root, cache_dir=cache, allow_download=False, progress=False)
    np.testing.assert_array_equal(third.images, first.images)


def test_corrupt_jpeg_names_the_member(tmp_path, folder_labels):
    root = tmp_path / "data"
    folder = root / "cifar10" / "CIFAR-10-images"
    write_image_folder(folder, folder_labels, as_archive=False)
    victim = sorted((folder / "train" / "cat").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataFormatError, match=f"train/cat/{victim.name}: corrupt or truncated image"):
        load_cifar10("train", data_dir=root, cache_dir=tmp_path / "cache", allow_download=False, progress=False)


def test_truncated_image_archive_names_the_archive(tmp_path, folder_labels):
    archive = tmp_path / "data" / "cifar10" / JPEG_ARCHIVE
    write_image_folder(archive, folder_labels)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataFormatError, match=f"{JPEG_ARCHIVE}.*corrupt or truncated archive"):
        load_cifar10("train", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", allow_download=False,
                     progress=False)


def test_labels_that_do_not_match_the_files_are_refused(tmp_path, folder_labels):
    root = tmp_path / "data"
    write_image_folder(root / "cifar10" / JPEG_ARCHIVE, folder_labels)
    wrong = folder_labels["train"].copy()
    wrong[0] = (wrong[0] + 1) % 10  # one image moved to another class
    np.savez(root / "cifar10" / cifar10.ORDER_LABELS, train_labels=wrong, test_labels=folder_labels["test"])
    with pytest.raises(DataFormatError, match="do not belong together|is missing"):
        load_cifar10("train", data_dir=root, cache_dir=tmp_path / "cache", allow_download=False, progress=False)


def test_real_jpeg_archive_order_matches_the_exact_pixels(data_dir):
    """The first test/airplane/k.jpg of the real archive is the k-th airplane of test_batch (read lazily)."""
    exact = np.load(data_dir / "cifar10" / cifar10.ORDER_LABELS)
    position = dict(zip(exact["test_subset_index"].tolist(), range(len(exact["test_subset_index"]))))
    airplanes = np.flatnonzero(exact["test_labels"] == 0)
    checked = 0
    with tarfile.open(data_dir / "cifar10" / JPEG_ARCHIVE, "r|gz") as archive:
        for info in archive:
            if not info.name.startswith("test/airplane/") or not info.isfile():
                continue
            rank = int(Path(info.name).stem)
            out = np.empty((32, 32, 3), dtype=np.uint8)
            image_folder._decode(out, Path(JPEG_ARCHIVE), image_folder.Member(0, rank, info.name,
                                                                              archive.extractfile(info).read()))
            original = to_hwc(exact["test_subset_data"][position[airplanes[rank]]][None])[0]
            assert np.abs(out.astype(int) - original).mean() < 13  # JPEG q75 error; a wrong image is ~70
            checked += 1
            if checked == 5:
                break
    assert checked == 5


# ---------------------------------------------------------------- augmentation -------------------------------------


def reference_crop_flip(image, rng, padding=4):
    """The textbook version: pad, slice, maybe mirror; the same three draws in the same order."""
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = rng.integers(2 * padding + 1), rng.integers(2 * padding + 1)
    crop = padded[top : top + 32, left : left + 32]
    flip = rng.random() < 0.5
    return (crop[:, ::-1] if flip else crop), flip


def test_random_crop_flip_matches_pad_slice_mirror():
    image = np.random.default_rng(0).integers(1, 256, (32, 32, 3), dtype=np.uint8)  # no zeros: padding shows
    out = np.empty_like(image)
    rng, reference_rng = np.random.default_rng(5), np.random.default_rng(5)
    flips = padded = 0
    for _ in range(200):
        random_crop_flip(out, image, rng)
        expected, flip = reference_crop_flip(image, reference_rng)
        np.testing.assert_array_equal(out, expected)
        flips += flip
        padded += bool((out == 0).any())
    assert 60 < flips < 140 and padded > 150  # both mirror states and real shifts were exercised


def test_augmenter_is_reproducible_and_seeded():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 50, dtype=np.uint8)

    def run(seed, epoch=0, augment=True, subset=20):
        stream = Augmenter(images, labels, resolution=48, augment=augment, subset=subset, seed=seed)
        return [(image.copy(), label) for image, label in stream.epoch(epoch)], stream

    first, stream = run(seed=1)
    assert len(first) == len(stream) == 20
    assert all(image.shape == (48, 48, 3) and image.dtype == np.uint8 for image, _ in first)
    assert [label for _, label in first] == labels[stream.order(0)].tolist()
    again, _ = run(seed=1)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, again))
    other_seed, other = run(seed=2)
    assert not np.array_equal(stream.indices, other.indices)
    assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, other_seed))
    assert not np.array_equal(stream.order(0), stream.order(1))  # a new order every epoch ...
    assert np.array_equal(np.sort(stream.order(1)), stream.indices)  # ... over the same subset
    _, plain = run(seed=1, augment=False)
    assert np.array_equal(plain.order(0), stream.order(0))  # augmentation does not move the order


def test_augmenter_without_augmentation_at_native_size_is_the_dataset():
    images = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(10, dtype=np.uint8)
    stream = Augmenter(images, labels, resolution=32, shuffle=False)
    for index, (image, label) in enumerate(stream.epoch(0)):
        np.testing.assert_array_equal(image, images[index])
        assert label == index


# ---------------------------------------------------------------- resize -------------------------------------------


@pytest.mark.parametrize("in_shape, out_shape", [
    ((32, 32), (224, 224)), ((32, 32), (128, 128)), ((32, 32), (96, 160)), ((32, 32), (32, 32)), ((7, 5), (9, 13)),
])
def test_resize_bilinear_equals_pillow_when_upsampling(in_shape, out_shape):
    image = np.random.default_rng(0).integers(0, 256, (*in_shape, 3), dtype=np.uint8)
    out = np.empty((*out_shape, 3), dtype=np.uint8)
    resize_bilinear(out, image)
    expected = np.asarray(Image.fromarray(image).resize(out_shape[::-1], Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("in_shape, out_shape", [((32, 32), (20, 17)), ((7, 5), (3, 11)), ((32, 32), (16, 64))])
def test_resize_bilinear_within_one_level_of_pillow_when_downsampling(in_shape, out_shape):
    """Pillow 13 resizes along H first when H shrinks much more than W; rounding in between then differs by 1."""
    image = np.random.default_rng(0).integers(0, 256, (*in_shape, 3), dtype=np.uint8)
    out = np.empty((*out_shape, 3), dtype=np.uint8)
    resize_bilinear(out, image)
    expected = np.asarray(Image.fromarray(image).resize(out_shape[::-1], Image.Resampling.BILINEAR))
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_resize_bilinear_within_one_level_of_torch_when_upsampling():
    torch = pytest.importorskip("torch")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = np.empty((160, 224, 3), dtype=np.uint8)
    resize_bilinear(out, image)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    expected = torch.nn.functional.interpolate(batch, size=(160, 224), mode="bilinear", align_corners=False,
                                               antialias=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(out - expected).max() <= 1
