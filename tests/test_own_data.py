"""Fine-tuning on a folder of one's own images: both layouts, the seeded split, the cache, and each bad folder
refused in one line before training starts."""

import importlib.util
import io
import json
import re
import tarfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytrain.checkpoint import TrainingState, load_trained_model, save_checkpoint
from tinytrain.data import image_folder, read_image, scan_folder_dataset
from tinytrain.models.mobilenetv2 import build_mobilenetv2
from tinytrain.pruned_model import save_pruned
from tinytrain.train import ConfigError, TrainConfig, Trainer

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
COLORS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 200)}


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_bytes(color, size=(40, 30), suffix=".png", noise_seed=0) -> bytes:
    """A width x height image of one colour with a little noise, as PNG or JPEG."""
    width, height = size
    rng = np.random.default_rng(noise_seed)
    pixels = np.clip(np.array(color) + rng.integers(-20, 21, (height, width, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG" if suffix == ".png" else "JPEG")
    return out.getvalue()


def write_folder(root: Path, counts: dict[str, int], split: str = "") -> Path:
    """root/[split/]<class>/<i>.png|jpg, `counts[class]` images of the class's colour, sizes and formats mixed."""
    for class_name, count in counts.items():
        folder = root / split / class_name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            suffix = ".png" if index % 2 else ".jpg"
            size = (40 + 8 * index, 30 + 4 * index)
            (folder / f"{index}{suffix}").write_bytes(image_bytes(COLORS[class_name], size, suffix, index))
    return root


def run_cli(capsys, *argv):
    status = script("finetune_cifar").main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error_line(err: str) -> str:
    """The one error line a failed run ends stderr with (progress bars may come before it), without a traceback."""
    assert "Traceback" not in err and err.endswith("\n"), err
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("error")] == lines[-1:], err
    return lines[-1]


def test_class_folders_are_split_per_class_by_the_seed(tmp_path):
    root = write_folder(tmp_path / "pets", {"owl": 5, "cat": 5, "dog": 5})
    dataset = scan_folder_dataset(root, test_fraction=0.4, seed=0, progress=False)
    assert dataset.class_names == ("cat", "dog", "owl")  # sorted folder names
    assert not dataset.has_own_split
    for split, per_class in (("train", 3), ("test", 2)):
        labels = [label for _, label in dataset.files[split]]
        assert labels == [0] * per_class + [1] * per_class + [2] * per_class
        assert all(name.split("/")[0] == dataset.class_names[label] for name, label in dataset.files[split])
    train, test = (set(name for name, _ in dataset.files[split]) for split in ("train", "test"))
    assert not train & test and len(train | test) == 15
    again = scan_folder_dataset(root, test_fraction=0.4, seed=0, progress=False)
    other = scan_folder_dataset(root, test_fraction=0.4, seed=1, progress=False)
    assert again.files == dataset.files and other.files != dataset.files


def test_train_and_test_folders_in_an_archive_are_fitted_to_the_resolution_and_cached(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / "folder", {"cat": 2, "dog": 2}, "train")
    write_folder(folder, {"cat": 1, "dog": 1}, "test")
    # a wide test image: blue bands left and right of a red centre square, which is all that centre-cropping keeps
    wide = np.zeros((30, 50, 3), dtype=np.uint8)
    wide[:, :, 2] = 255
    wide[:, 10:40] = (255, 0, 0)
    Image.fromarray(wide).save(folder / "test" / "cat" / "wide.png")
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="pets")  # wrapped in one top-level folder, as archives often are
    dataset = scan_folder_dataset(archive, progress=False)
    assert dataset.has_own_split and dataset.class_names == ("cat", "dog")
    assert {split: len(files) for split, files in dataset.files.items()} == {"train": 4, "test": 3}
    cache = tmp_path / "cache"
    test = dataset.load("test", 32, cache, progress=False)
    assert test.images.shape == (3, 32, 32, 3) and test.labels.tolist() == [0, 0, 1]
    names = [name for name, _ in dataset.files["test"]]
    fitted = test.images[names.index("pets/test/cat/wide.png")]
    assert (fitted == (255, 0, 0)).all()
    np.testing.assert_array_equal(read_image(folder / "test" / "cat" / "wide.png", (32, 32)), fitted)

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache holds the images")

    monkeypatch.setattr(image_folder, "_decode", no_decoding)
    np.testing.assert_array_equal(dataset.load("test", 32, cache, progress=False).images, test.images)
    with pytest.raises(AssertionError, match="decoded again"):  # another resolution is another cache file
        dataset.load("test", 64, cache, progress=False)


def bad_folders():
    """(name, how to make it under a root, the error's start after '<root>: ')."""
    def empty_class(root):
        write_folder(root, {"cat": 3, "dog": 3})
        (root / "owl").mkdir()
        (root / "owl" / "notes.txt").write_text("no images here")

    def one_class(root):
        write_folder(root, {"cat": 4})

    def class_missing_from_a_split(root):
        write_folder(root, {"cat": 2, "dog": 2}, "train")
        write_folder(root, {"cat": 1}, "test")

    def empty_split(root):
        write_folder(root, {"cat": 2, "dog": 2}, "train")
        (root / "test").mkdir()

    def loose_image(root):
        write_folder(root, {"cat": 2, "dog": 2})
        (root / "stray.png").write_bytes(image_bytes(COLORS["cat"]))

    def too_few_to_split(root):
        write_folder(root, {"cat": 3, "dog": 1})

    return [
        ("empty class", empty_class, "class folder owl/ has no .jpg/.jpeg/.png images; add some, or remove"),
        ("one class", one_class, "only one class ('cat'); a classifier needs at least two"),
        ("class missing from a split", class_missing_from_a_split,
         "class 'dog' has images in train/ but none in test/; add some to test/dog/"),
        ("empty split", empty_split, "no images in test/: an empty split"),
        ("loose image", loose_image, "stray.png is not inside a class folder"),
        ("too few to split", too_few_to_split, "class 'dog' has only 1 image(s): too few"),
    ]


@pytest.mark.parametrize("name, make, message", bad_folders(), ids=[case[0] for case in bad_folders()])
def test_a_bad_folder_ends_the_cli_in_one_line_before_any_weights_are_read(tmp_path, capsys, monkeypatch, name,
                                                                           make, message):
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")  # no speed warning in the output
    root = tmp_path / "pets"
    make(root)
    status, _, err = run_cli(capsys, "--dataset", str(root), "--output-dir", str(tmp_path / "run"),
                             "--data-dir", str(tmp_path / "no-data"))  # reaching the weights would fail otherwise
    assert status == 1 and error_line(err).startswith(f"error: {root}: {message}"), err


@pytest.mark.parametrize("flags, message", [
    (("--test-fraction", "0.3"), "error: --test-fraction 0.3: .* has its own train/ and test/ folders"),
    (("--train-subset", "9"), r"error: --train-subset 9: must be in 1\.\.4 \(the train images of .*pets\)"),
    (("--micro-batch", "3", "--checkpoint-every", "3"), "error: --micro-batch 3: must be a divisor of the 4 training"),
])
def test_flags_that_do_not_fit_the_folder_are_refused_once_it_is_listed(tmp_path, capsys, monkeypatch, flags,
                                                                        message):
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    root = write_folder(tmp_path / "pets", {"cat": 2, "dog": 2}, "train")
    write_folder(root, {"cat": 1, "dog": 1}, "test")
    status, _, err = run_cli(capsys, "--dataset", str(root), *flags, "--output-dir", str(tmp_path / "run"),
                             "--data-dir", str(tmp_path / "no-data"))
    assert status == 1 and re.match(message, error_line(err)), err


def test_a_test_fraction_without_a_dataset_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    status, _, err = run_cli(capsys, "--test-fraction", "0.2", "--output-dir", str(tmp_path / "run"))
    assert status == 1 and error_line(err) == "error: --test-fraction 0.2: must be left out for CIFAR-10, which has " \
                                              "its own test split"


def test_fine_tune_on_a_folder_records_its_classes_and_refuses_an_unreadable_image(data_dir, tmp_path, capsys,
                                                                                    monkeypatch):
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    monkeypatch.setenv("TINYTRAIN_CACHE", str(tmp_path / "cache"))
    root = write_folder(tmp_path / "pets", {"cat": 4, "dog": 4, "owl": 4})
    run = tmp_path / "run"
    common = ("--resolution", "32", "--epochs", "1", "--warmup-steps", "2", "--test-fraction", "0.25",
              "--data-dir", str(data_dir))
    status, out, err = run_cli(capsys, "--dataset", str(root), *common, "--output-dir", str(run))
    assert status == 0, err
    assert ("dataset " + str(root) + ": 3 classes, 0.25 of each class held out for testing (seed 0); 9 training and "
            "3 test images; classes: cat, dog, owl") in out
    results = json.loads((run / "results.json").read_text())
    assert results["class_names"] == ["cat", "dog", "owl"] and results["steps"] == 9
    assert results["test_images"] == 3 and results["exact_subset"] is None
    assert results["config"]["dataset"] == str(root) and results["data"].startswith(f"image folder {root}")
    model = load_trained_model(run / "checkpoint.h5")
    assert model.class_names == ("cat", "dog", "owl") and model.graph.num_classes == 3 and model.step == 9
    assert model.graph.input_shape == (3, 32, 32)

    owl = root / "owl" / "3.png"
    assert script("predict").main(["--checkpoint", str(run / "checkpoint.h5"), "--json", str(owl)]) == 0
    document = json.loads(capsys.readouterr().out)
    (prediction,) = document["predictions"]
    assert prediction["image"] == str(owl) and {entry["class"] for entry in prediction["top"]} == set(COLORS)
    probabilities = [entry["probability"] for entry in prediction["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-9
    assert 0 < document["inference_peak_bytes"] <= document["arena_bytes"] == results["arena_bytes"]

    (root / "dog" / "2.jpg").write_bytes(b"not an image at all")
    status, _, err = run_cli(capsys, "--dataset", str(root), *common, "--output-dir", str(tmp_path / "again"))
    assert status == 1 and error_line(err).startswith(
        f"error: {root}: dog/2.jpg: corrupt or truncated image (not an image format Pillow knows)")


def test_more_classes_than_a_byte_holds_get_wider_labels(tmp_path):
    root = tmp_path / "many"
    for label in range(257):
        folder = root / f"class{label:03d}"
        folder.mkdir(parents=True)
        for index in range(2):
            Image.fromarray(np.full((4, 4, 3), label % 256, dtype=np.uint8)).save(folder / f"{index}.png")
    dataset = scan_folder_dataset(root, test_fraction=0.5, progress=False)
    assert len(dataset.class_names) == 257
    train = dataset.load("train", 32, progress=False)
    assert train.labels.dtype == np.uint16 and train.labels.tolist() == list(range(257))
    assert (train.images[256] == 0).all() and (train.images[255] == 255).all()


def test_resuming_on_a_folder_whose_classes_changed_is_refused_before_any_weights_are_read(tmp_path):
    root = write_folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    config = TrainConfig(dataset=str(root), resolution=32, epochs=1)
    save_checkpoint(tmp_path / "run" / "checkpoint.h5", build_mobilenetv2(num_classes=2, resolution=32),
                    TrainingState(2, [], {}, {}, asdict(config), class_names=["cat", "dog"]))
    write_folder(root, {"owl": 3})
    with pytest.raises(ConfigError, match="trained on the classes cat, dog; the data now has cat, dog, owl"):
        Trainer(config, tmp_path / "run", data_dir=tmp_path / "no-data", progress=False, resume=True)


def test_a_pruned_model_with_another_number_of_classes_is_refused(tmp_path):
    root = write_folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    pruned = tmp_path / "pruned.h5"
    save_pruned(pruned, build_mobilenetv2(num_classes=10, resolution=32), {}, {"ratio": 0.0})
    config = TrainConfig(dataset=str(root), model=str(pruned), resolution=32, epochs=1)
    with pytest.raises(ConfigError, match=f"--model {pruned}: its classifier has 10 classes, the data 2"):
        Trainer(config, tmp_path / "run", data_dir=tmp_path / "no-data", progress=False)
