"""Fuzz every reader of a downloaded or cached file: whatever the damage, it reads or raises the project's own error.

Each reader gets a small valid file built here, then Hypothesis damages it: a truncation, a few flipped bytes (about
half of them where the format keeps its structure rather than its values) or, in a pickle, opcodes spliced in,
among them calls of globals that would run code if an unpickler let them through. No other exception may escape,
no error may leave the damaged file unnamed, nothing may run and no read may hang. The search is derandomized and
the case count fixed, so CI runs the same cases in bounded time; each test prints how many ran and how they ended.
"""

from __future__ import annotations

import faulthandler
import gzip
import io
import pickle
import pickletools
import re
import shutil
import sys
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data import make_tar_gz, meta_pickle, random_split_data, trust, write_batches, write_image_folder
from test_weights import KERAS_FILE, TORCHVISION_FILE, rewrite_sha256sums, save_torch, write_keras_h5

from tinytrain.checkpoint import (CheckpointError, TrainingState, load_checkpoint, load_trained_model, read_progress,
                                  save_checkpoint)
from tinytrain.data import (LABEL_NAMES, DataError, DataFormatError, cifar10, load_cifar10, load_image_folder,
                            read_python_batches)
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.weights import (
    WeightsError,
    WeightsFormatError,
    expected_shapes,
    import_keras_h5,
    import_tfslim_npy,
    import_torchvision_pth,
    load_canonical,
    save_canonical,
)
from tinytrain.weights.layout import BN_STATS, UNITS
from tinytrain.weights.torch_checkpoint import ALLOWED_GLOBALS as TORCH_GLOBALS

CASES = 100  # per reader; each test takes a few seconds on one core
FUZZ = settings(
    max_examples=CASES,
    deadline=None,  # reads of a few MB vary in time; hang_guard catches a read that never ends
    derandomize=True,
    database=None,  # the same cases on every machine, none replayed from an earlier run
    suppress_health_check=[HealthCheck.too_slow],
)
READER_ERRORS = (WeightsError, DataError, CheckpointError)
HANG_SECONDS = 60
NPY_HEADER_BYTES = 128  # magic, version, header length and the header dict of a small .npy (format 1.0)

SENTINEL_CALLS: list[tuple] = []


def sentinel(*args) -> None:
    """Stands for any code a pickle could run: the fuzz splices calls of it into pickles, and it must never run."""
    SENTINEL_CALLS.append(args)


# ---------------------------------------------------------------- damage -------------------------------------------


@dataclass(frozen=True)
class Truncation:
    length: int

    def __call__(self, data: bytes) -> bytes:
        return data[: self.length]


@dataclass(frozen=True)
class ByteFlips:
    flips: tuple[tuple[int, int], ...]  # (offset, XOR mask)

    def __call__(self, data: bytes) -> bytes:
        damaged = bytearray(data)
        for offset, mask in self.flips:
            damaged[offset] ^= mask
        return bytes(damaged)


@dataclass(frozen=True)
class Splice:
    start: int
    end: int  # start: an insertion; past it: the opcode there is overwritten
    opcodes: bytes

    def __call__(self, data: bytes) -> bytes:
        return data[: self.start] + self.opcodes + data[self.end :]


def damages(size: int, hot_spots: Sequence[int] = ()) -> st.SearchStrategy:
    """A truncation, or 1-4 flipped bytes, drawn at `hot_spots` (the format's structure) half of the time."""
    offsets = st.integers(0, size - 1)
    if hot_spots:
        offsets = st.one_of(offsets, st.sampled_from(hot_spots))
    flips = st.lists(st.tuples(offsets, st.integers(1, 255)), min_size=1, max_size=4)
    return st.one_of(st.builds(Truncation, st.integers(0, size - 1)), st.builds(ByteFlips, flips.map(tuple)))


def pushes(value) -> bytes:
    """Opcodes that push `value` on the unpickler's stack: a protocol 2 pickle of it without PROTO and STOP."""
    return pickle.dumps(value, protocol=2)[2:-1]


def calls(module: str, name: str, arguments: tuple) -> list[bytes]:
    """Ways a pickle calls module.name(*arguments): GLOBAL or STACK_GLOBAL then REDUCE, INST, OBJ and NEWOBJ."""
    by_global = f"c{module}\n{name}\n".encode()
    by_stack_global = pushes(module) + pushes(name) + pickle.STACK_GLOBAL
    items = b"".join(pushes(argument) for argument in arguments)  # after a MARK, for INST and OBJ to collect
    return [
        by_global + pushes(arguments) + pickle.REDUCE,
        by_stack_global + pushes(arguments) + pickle.REDUCE,
        pickle.MARK + items + f"i{module}\n{name}\n".encode(),
        pickle.MARK + by_global + items + pickle.OBJ,
        by_global + pushes(arguments) + pickle.NEWOBJ,
    ]


def opcode_offsets(raw: bytes, pickles: int = 1) -> list[int]:
    """Where each opcode starts in the first `pickles` pickles of `raw` (torch's legacy format chains five)."""
    stream = io.BytesIO(raw)
    return [offset for _ in range(pickles) for _, _, offset in pickletools.genops(stream)]


def pickle_damages(raw: bytes, allowed: Sequence[tuple[str, str]], marker: Path, pickles: int = 1):
    """Truncations, flips (half of them at opcode starts) and splices at an opcode start: calls of os.system, eval
    and `sentinel`, calls of the reader's own allowed globals with arguments they do not expect, any one opcode."""
    offsets = opcode_offsets(raw, pickles)
    code = [
        *calls("os", "system", (f"touch {marker}",)),
        *calls("builtins", "eval", (f"open({str(marker)!r}, 'w')",)),
        *calls(__name__, "sentinel", ("ran",)),
        *(
            call
            for module, name in allowed
            for arguments in [(), (0,), ("x", -1), ((1 << 40, 3), (0,)), ((2, 2), "<f4", None)]
            for call in calls(module, name, arguments)
        ),
    ]
    opcode_bytes = [opcode.code.encode("latin-1") for opcode in pickletools.opcodes]
    one_opcode = st.tuples(st.sampled_from(opcode_bytes), st.binary(max_size=4)).map(b"".join)  # and its argument

    @st.composite
    def splices(draw) -> Splice:
        index = draw(st.integers(0, len(offsets) - 1))
        overwrite = draw(st.booleans()) and index + 1 < len(offsets)
        end = offsets[index + 1] if overwrite else offsets[index]
        return Splice(offsets[index], end, draw(st.one_of(st.sampled_from(code), one_opcode)))

    return st.one_of(damages(len(raw), offsets), splices())


def hdf5_structure(path: Path) -> list[int]:
    """Offsets of every byte of an HDF5 file but its datasets' values: superblock, headers, B-trees, heaps."""
    is_value = np.zeros(path.stat().st_size, dtype=bool)

    def mark(name: str, item) -> None:
        if isinstance(item, h5py.Dataset) and item.id.get_offset() is not None:
            start = item.id.get_offset()
            is_value[start : start + item.id.get_storage_size()] = True

    with h5py.File(path, "r") as f:
        f.visititems(mark)
    return np.flatnonzero(~is_value).tolist()


def zip_structure(raw: bytes) -> list[int]:
    """Offsets of each member's local header and first bytes (a .npy header, say), and of the central directory."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        regions = [range(member.header_offset, member.header_offset + 256) for member in archive.infolist()]
        regions.append(range(archive.start_dir, len(raw)))
    return sorted({offset for region in regions for offset in region if offset < len(raw)})


# ---------------------------------------------------------------- running cases ------------------------------------


@contextmanager
def hang_guard():
    """A read stuck past HANG_SECONDS, in Python or in C where no signal handler runs, dumps every stack and exits."""
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def read_damaged(read: Callable[[], object], named: str, outcomes: Counter) -> None:
    """One read of a damaged file: it may succeed or raise a project error naming `named`, and nothing else."""
    try:
        with hang_guard(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged cache is rebuilt with a warning: that is a success
            read()
    except READER_ERRORS as error:
        assert named in str(error), f"{type(error).__name__} does not name {named}: {error}"
        outcomes[type(error).__name__] += 1
    except Exception as error:
        raise AssertionError(f"the reader let {type(error).__name__} escape: {error}") from error
    else:
        outcomes["read"] += 1


@contextmanager
def nothing_runs(marker: Path):
    """Fails the case if a pickle called `sentinel` or made `marker` (which os.system or eval would)."""
    SENTINEL_CALLS.clear()
    yield
    assert not SENTINEL_CALLS, f"the pickle ran sentinel{SENTINEL_CALLS[0]}"
    assert not marker.exists(), "the pickle ran os.system or eval"


def run_cases(fuzz: Callable[[], None], capsys, reader: str, outcomes: Counter) -> None:
    """Run the cases uncaptured, so that a hang's stack dump and the summary line reach the terminal."""
    with capsys.disabled():
        fuzz()
        endings = ", ".join(f"{count} {outcome}" for outcome, count in outcomes.most_common())
        print(f"\nfuzz {reader}: {outcomes.total()} cases: {endings}")
    assert outcomes.total() == CASES


def restore(originals: dict[Path, bytes]) -> None:
    for path, data in originals.items():
        path.write_bytes(data)


# ---------------------------------------------------------------- weights ------------------------------------------


@pytest.fixture(scope="module")
def zero_tfslim(tmp_path_factory) -> Path:
    """A TF-slim .npy folder of the whole backbone, every value zero, with its SHA256SUMS."""
    folder = tmp_path_factory.mktemp("tfslim")
    for unit in UNITS:
        np.save(folder / unit.tfslim_weight_file, np.zeros(unit.tf_weight_shape, np.float32))
        for stat in BN_STATS.values():
            np.save(folder / f"{unit.tfslim_scope}_BatchNorm_{stat}.npy", np.zeros(unit.out_channels, np.float32))
    rewrite_sha256sums(folder)
    return folder


def test_tfslim_folder_fuzz(zero_tfslim, tmp_path, capsys):
    folder = Path(shutil.copytree(zero_tfslim, tmp_path / "tfslim"))
    # the checksum list, a (3, 3, 3, 32) kernel, and a (32,) BatchNorm vector whose header is half the file
    originals = {folder / name: (folder / name).read_bytes()
                 for name in ("SHA256SUMS", "Conv_weights.npy", "Conv_BatchNorm_gamma.npy")}
    outcomes = Counter()
    cases = st.sampled_from(sorted(originals)).flatmap(
        lambda path: st.tuples(st.just(path.name), damages(len(originals[path]), range(NPY_HEADER_BYTES)))
    )

    @FUZZ
    @given(cases)
    def fuzz(case):
        name, damage = case
        restore(originals)
        (folder / name).write_bytes(damage(originals[folder / name]))
        if name != "SHA256SUMS":
            rewrite_sha256sums(folder)  # so that the .npy reader, not the checksum, meets the damage
        read_damaged(lambda: import_tfslim_npy(folder), name, outcomes)

    run_cases(fuzz, capsys, "TF-slim .npy folder", outcomes)


def test_tfslim_npy_with_an_unparsable_header_names_the_file(zero_tfslim, tmp_path):
    """NumPy re-tokenizes a header it cannot parse as a Python 2 one, and an unclosed bracket raises TokenError."""
    folder = Path(shutil.copytree(zero_tfslim, tmp_path / "tfslim"))
    path = folder / "Conv_weights.npy"
    path.write_bytes(path.read_bytes().replace(b"32), }", b"32 , }"))
    rewrite_sha256sums(folder)
    with pytest.raises(WeightsFormatError, match=r"Conv_weights\.npy: not a readable \.npy file.*TokenError"):
        import_tfslim_npy(folder)


def fuzz_one_file(path: Path, read: Callable[[Path], object], hot_spots: Sequence[int], capsys, reader: str) -> None:
    """Damage the file at `path` CASES ways, each read by `read`."""
    original = path.read_bytes()
    outcomes = Counter()

    @FUZZ
    @given(damages(len(original), hot_spots))
    def fuzz(damage):
        path.write_bytes(damage(original))
        read_damaged(lambda: read(path), path.name, outcomes)

    run_cases(fuzz, capsys, reader, outcomes)


def test_keras_h5_fuzz(zero_tfslim, tmp_path, capsys):
    path = write_keras_h5(tmp_path / KERAS_FILE, zero_tfslim)
    fuzz_one_file(path, import_keras_h5, hdf5_structure(path), capsys, "Keras .h5")


def test_canonical_weights_fuzz(zero_tfslim, tmp_path, capsys):
    path = tmp_path / "canonical.h5"
    save_canonical(import_tfslim_npy(zero_tfslim), path)
    fuzz_one_file(path, load_canonical, hdf5_structure(path), capsys, "canonical weights .h5")


HDF5_WEIGHT_READERS = {"keras": import_keras_h5, "canonical": load_canonical}
# A variable-length string's datatype in an attribute message: version 1 and class 9 (variable-length), then the class
# bits (a string, in ASCII or UTF-8), then the size of its heap reference, 16 bytes.
VLEN_STRING_TYPE = re.compile(rb"\x19\x01[\x00\x01]\x00\x10\x00\x00\x00")


def write_weights_h5(path: Path, reader: str, zero_tfslim: Path) -> Path:
    if reader == "keras":
        return write_keras_h5(path, zero_tfslim)
    save_canonical(import_tfslim_npy(zero_tfslim), path)
    return path


@pytest.mark.parametrize("reader", sorted(HDF5_WEIGHT_READERS))
def test_global_heap_that_would_hang_hdf5_is_refused(zero_tfslim, tmp_path, reader):
    """HDF5 steps through a global heap collection by each object's size: a free-space object (index 0) of size 0
    makes it loop forever inside one h5py call. Both readers must refuse the file before h5py opens it."""
    path = write_weights_h5(tmp_path / f"{reader}.h5", reader, zero_tfslim)
    data = bytearray(path.read_bytes())
    collection = data.find(b"GCOL")
    data[collection + 16 : collection + 18] = bytes(2)  # the first object's index: 0, the free space ...
    data[collection + 24 : collection + 32] = bytes(8)  # ... and its size: 0
    path.write_bytes(bytes(data))
    with hang_guard(), pytest.raises(WeightsFormatError, match=f"{path.name}: .*damaged global heap"):
        HDF5_WEIGHT_READERS[reader](path)


@pytest.mark.parametrize("reader", sorted(HDF5_WEIGHT_READERS))
def test_string_attribute_whose_type_would_crash_h5py_is_refused(zero_tfslim, tmp_path, reader):
    """One damaged byte in a variable-length string's class bits leaves a variable-length type of no valid kind, and
    h5py segfaults reading it: the readers check each attribute's type class first."""
    path = write_weights_h5(tmp_path / f"{reader}.h5", reader, zero_tfslim)
    data = bytearray(path.read_bytes())
    data[VLEN_STRING_TYPE.search(data).start() + 1] ^= 0xFF  # the first one: "backend" or "format", both read
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsFormatError, match=f"{path.name}: .*type class"):
        HDF5_WEIGHT_READERS[reader](path)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torchvision_pth_fuzz(tmp_path, capsys, fmt):
    import torch

    # One zero storage that every tensor views, as a state dict's tensors view their own: a small file, full shapes.
    storage = torch.zeros(max(np.prod(shape) for shape in expected_shapes().values()))
    state = {key: storage[: np.prod(shape)].view(shape) for key, shape in expected_shapes().items()}
    path = save_torch(state, tmp_path / TORCHVISION_FILE, fmt)
    original = path.read_bytes()
    marker = tmp_path / "ran"
    outcomes = Counter()
    if fmt == "legacy":  # five pickles back to back, then the storage
        cases = st.tuples(st.just("file"), pickle_damages(original, list(TORCH_GLOBALS), marker, pickles=5))
    else:  # the pickle is the archive's data.pkl
        with zipfile.ZipFile(path) as archive:
            (pickle_name,) = (name for name in archive.namelist() if name.endswith("/data.pkl"))
            members = {info: archive.read(info) for info in archive.infolist()}
        data_pkl = next(data for info, data in members.items() if info.filename == pickle_name)
        cases = st.one_of(
            st.tuples(st.just("file"), damages(len(original), zip_structure(original))),
            st.tuples(st.just("data.pkl"), pickle_damages(data_pkl, list(TORCH_GLOBALS), marker)),
        )

    def rezipped(damaged_pkl: bytes) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for info, data in members.items():
                archive.writestr(info, damaged_pkl if info.filename == pickle_name else data)
        return buffer.getvalue()

    @FUZZ
    @given(cases)
    def fuzz(case):
        part, damage = case
        path.write_bytes(damage(original) if part == "file" else rezipped(damage(data_pkl)))
        with nothing_runs(marker):
            read_damaged(lambda: import_torchvision_pth(path), path.name, outcomes)

    run_cases(fuzz, capsys, f"torchvision .pth ({fmt})", outcomes)


# ---------------------------------------------------------------- data ---------------------------------------------


def test_python_batches_fuzz(tmp_path, monkeypatch, capsys):
    rows, labels = random_split_data()
    folder = tmp_path / cifar10.BATCHES_FOLDER
    write_batches(folder, rows, labels, meta_pickle())
    archive = tmp_path / cifar10.ARCHIVE
    make_tar_gz(archive, folder, cifar10.BATCHES_FOLDER)
    files = {path.name: path for path in (folder / cifar10.META, folder / "test_batch", archive)}
    originals = {path: path.read_bytes() for path in files.values()}
    marker = tmp_path / "ran"
    outcomes = Counter()
    cases = st.one_of(
        *(
            st.tuples(st.just(name), pickle_damages(originals[files[name]], list(cifar10.ALLOWED_GLOBALS), marker))
            for name in (cifar10.META, "test_batch")
        ),
        st.tuples(st.just(archive.name), damages(len(originals[archive]))),
    )

    @FUZZ
    @given(cases)
    def fuzz(case):
        name, damage = case
        restore(originals)
        files[name].write_bytes(damage(originals[files[name]]))
        trust(monkeypatch, folder, archive)  # so that the unpickler or tar reader, not the md5 check, meets the damage
        source = archive if name == archive.name else folder
        with nothing_runs(marker):
            read_damaged(lambda: read_python_batches(source, "test"), name, outcomes)

    run_cases(fuzz, capsys, "CIFAR-10 python batches", outcomes)


def test_image_folder_fuzz(tmp_path, capsys):
    root, cache = tmp_path / "data", tmp_path / "cache"
    labels = np.random.default_rng(0).integers(0, len(LABEL_NAMES), 12, dtype=np.uint8)
    jpeg_archive = root / "cifar10" / cifar10.JPEG_ARCHIVE
    write_image_folder(jpeg_archive, {"test": labels})
    np.savez(root / "cifar10" / cifar10.ORDER_LABELS, test_labels=labels)
    load_cifar10("test", data_dir=root, cache_dir=cache, allow_download=False, progress=False)
    (cache_file,) = (cache / "data").glob("*.npz")
    plain_tar = tmp_path / "images.tar"  # no gzip layer, so that the damage reaches tar headers and JPEG bytes
    plain_tar.write_bytes(gzip.decompress(jpeg_archive.read_bytes()))
    files = {path.name: path for path in (jpeg_archive, root / "cifar10" / cifar10.ORDER_LABELS, cache_file, plain_tar)}
    originals = {path: path.read_bytes() for path in files.values()}
    hot_spots = {path: zip_structure(data) if path.suffix == ".npz" else () for path, data in originals.items()}
    outcomes = Counter()
    cases = st.sampled_from(sorted(files)).flatmap(
        lambda name: st.tuples(st.just(name), damages(len(originals[files[name]]), hot_spots[files[name]]))
    )

    def read(path: Path) -> None:
        if path == plain_tar:
            load_image_folder(plain_tar, "test", LABEL_NAMES, progress=False)
        else:
            load_cifar10("test", data_dir=root, cache_dir=cache, allow_download=False, progress=False)

    @FUZZ
    @given(cases)
    def fuzz(case):
        name, damage = case
        restore(originals)
        files[name].write_bytes(damage(originals[files[name]]))
        read_damaged(lambda: read(files[name]), name, outcomes)

    run_cases(fuzz, capsys, "image folder (archive, order labels, decoded cache)", outcomes)


# ---------------------------------------------------------------- training checkpoints -----------------------------


def test_checkpoint_fuzz(tmp_path, capsys):
    graph = build_mobilenetv2(num_classes=10, resolution=32, width_mult=0.35)
    head = graph.weighted_layers[-1]
    state = TrainingState(
        step=7,
        history=[{"epoch": 1, "train_loss": 2.1, "train_accuracy": 0.2}],
        momentum={f"{head.name}.weight": np.zeros_like(head.weight)},
        coverage={head.name: np.zeros(head.weight.shape[:2], dtype=bool)},
        config={"resolution": 32, "lr": 0.01},
        class_names=[f"class {label}" for label in range(10)],
    )
    path = tmp_path / "checkpoint.h5"
    save_checkpoint(path, graph, state)

    def read(path: Path) -> None:
        read_progress(path)  # what a resume checks before any work
        load_checkpoint(path, graph)
        load_trained_model(path)  # the model alone, as predictions read it

    fuzz_one_file(path, read, hdf5_structure(path), capsys, "checkpoint .h5")


def test_a_checkpoint_whose_global_heap_would_hang_hdf5_is_refused(tmp_path):
    graph = build_mobilenetv2(num_classes=10, resolution=32, width_mult=0.35)
    path = tmp_path / "checkpoint.h5"
    save_checkpoint(path, graph, TrainingState(step=7, history=[], momentum={}, coverage={}, config={"lr": 0.01}))
    data = bytearray(path.read_bytes())
    collection = data.find(b"GCOL")  # its str attributes (history, config) live in a global heap
    data[collection + 16 : collection + 18] = bytes(2)  # the first object becomes the free space ...
    data[collection + 24 : collection + 32] = bytes(8)  # ... of size 0, on which HDF5 would loop forever
    path.write_bytes(bytes(data))
    for read in (read_progress, lambda path: load_checkpoint(path, graph)):
        with hang_guard(), pytest.raises(CheckpointError, match="damaged global heap"):
            read(path)


def test_a_checkpoint_whose_string_attribute_type_would_crash_h5py_is_refused(tmp_path):
    graph = build_mobilenetv2(num_classes=10, resolution=32, width_mult=0.35)
    path = tmp_path / "checkpoint.h5"
    save_checkpoint(path, graph, TrainingState(step=7, history=[], momentum={}, coverage={}, config={"lr": 0.01}))
    data = bytearray(path.read_bytes())
    data[VLEN_STRING_TYPE.search(data).start() + 1] ^= 0xFF  # h5py segfaults reading a vlen type of no valid kind
    path.write_bytes(bytes(data))
    for read in (read_progress, lambda path: load_checkpoint(path, graph)):
        with pytest.raises(CheckpointError, match="type class"):
            read(path)


@pytest.mark.parametrize("reader", sorted(HDF5_WEIGHT_READERS))
def test_a_global_heap_object_whose_step_wraps_to_zero_is_refused(zero_tfslim, tmp_path, reader):
    """HDF5 adds each object's header and padded size to its position as a size_t: a size of 2**64 - 16 is a step
    of 0, and the loop never advances. The check follows the wrapped step past such sizes, as HDF5 does."""
    path = write_weights_h5(tmp_path / f"{reader}.h5", reader, zero_tfslim)
    data = bytearray(path.read_bytes())
    collection = data.find(b"GCOL")
    first_object = collection + 16
    data[first_object + 8 : first_object + 16] = (2**64 - 16).to_bytes(8, "little")  # padded + header: 2**64
    path.write_bytes(bytes(data))
    with hang_guard(), pytest.raises(WeightsFormatError, match=f"{path.name}: .*damaged global heap"):
        HDF5_WEIGHT_READERS[reader](path)


# ---------------------------------------------------------------- pickle memo -------------------------------------


def memo_index_near_two_to_the_32(raw: bytes) -> bytes:
    """The first BINPUT becomes LONG_BINPUT of index 0xFFFFFFF0: one byte changed and three overwritten, as a
    damaged file can have them. An unpickler would size its memo to 2**32 entries, 32 GB."""
    stream = io.BytesIO(raw)
    while True:  # pickle after pickle, as a legacy torch file holds them
        for opcode, _, position in pickletools.genops(stream):
            if opcode.name == "BINPUT":
                return raw[:position] + b"r" + (0xFFFFFFF0).to_bytes(4, "little") + raw[position + 5:]


def test_a_pickle_whose_memo_index_would_take_gigabytes_is_refused_at_once(tmp_path, monkeypatch):
    import torch

    pth = save_torch({"features.0.0.weight": torch.zeros(2)}, tmp_path / TORCHVISION_FILE, "legacy")
    pth.write_bytes(memo_index_near_two_to_the_32(pth.read_bytes()))
    with hang_guard(), pytest.raises(WeightsFormatError, match=f"{pth.name}: .*memo index 4294967280"):
        import_torchvision_pth(pth)
    raw = pickle.dumps({b"batch_label": b"x", b"labels": [1, 2], b"data": b"ab"}, protocol=2)
    with hang_guard(), pytest.raises(DataFormatError, match="memo index 4294967280"):
        cifar10._unpickle(memo_index_near_two_to_the_32(raw), "data_batch_1")
