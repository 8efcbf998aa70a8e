"""bench/legibility.py: a digit classifier reads real digits with confidence and blends of two digits (what a
malformed sample looks like) without; the scores are counted right; labels are read with one-line errors; the
benchmark scores a real checkpoint from a cached classifier."""

from __future__ import annotations

import gzip
import json
import math
import shutil

import pytest
import torch

import launch
from bench import legibility as lg
from common.errors import DataError
from common.storage.data import load_goals, load_labels


@pytest.fixture(scope="module")
def mnist(data_dir):
    """(train images, train labels, test images, test labels) of MNIST."""
    return (load_goals("mnist", data_dir).images, load_labels("mnist", data_dir),
            load_goals("mnist", data_dir, "test").images, load_labels("mnist", data_dir, "test"))


@pytest.fixture(scope="module")
def classifier(mnist):
    """A classifier trained for one epoch on the first 20,000 training digits (seconds on 2 cores)."""
    images, labels, _, _ = mnist
    return lg.train_classifier(images[:20000], labels[:20000], epochs=1)


def blends(images: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """The pixel mean of digit i and the next digit of another class: two strokes fused, as in a malformed sample."""
    other = [next(j for j in range(i + 1, images.shape[0]) if labels[j] != labels[i]) for i in range(count)]
    return ((images[:count].float() + images[other].float()) / 2).round().to(torch.uint8)


def test_real_digits_are_legible_and_blends_of_two_are_not(classifier, mnist):
    _, _, test, test_labels = mnist
    real = lg.legibility(lg.probabilities(classifier, test[:1000]))
    fused = lg.legibility(lg.probabilities(classifier, blends(test, test_labels, 1000)))
    accuracy = float((lg.probabilities(classifier, test[:1000]).argmax(-1) == test_labels[:1000]).float().mean())
    print(f"\naccuracy {accuracy:.3f}; legible: real {real['legible_share']:.3f}, blends {fused['legible_share']:.3f}")
    assert accuracy > 0.9 and real["legible_share"] > 0.7 and real["classes_covered"] == 10
    assert real["class_entropy"] > 0.95  # the test split's classes are near balanced
    assert fused["legible_share"] < 0.5 * real["legible_share"]  # measured: 0.13 against 0.84


def test_the_scores_count_confident_images_and_their_classes():
    probs = torch.full((40, 10), 0.01)
    probs[:20, 3] = 0.91  # 20 confident threes
    probs[20:30, 7] = 0.95  # 10 confident sevens
    probs[30:, 5] = 0.5  # 10 unsure
    scores = lg.legibility(probs, threshold=0.9, class_share=0.4)
    assert scores["legible_share"] == 0.75 and scores["class_counts"][3] == 20 and scores["class_counts"][7] == 10
    assert scores["classes_covered"] == 1  # sevens are 1/3 of the legible, under 0.4
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(10)
    assert scores["class_entropy"] == pytest.approx(expected)
    assert lg.legibility(torch.full((5, 10), 0.1))["legible_share"] == 0.0


def test_labels_are_one_per_image_and_a_truncated_file_is_one_line(data_dir, tmp_path, mnist):
    assert load_labels("mnist", data_dir).shape[0] == mnist[0].shape[0] and int(mnist[1].max()) == 9
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz", raw)
    with gzip.open(data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz") as handle:
        (raw / "t10k-labels-idx1-ubyte").write_bytes(handle.read()[:-5])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte is truncated or corrupt: 10003 bytes, expected 10008"):
        load_labels("mnist", tmp_path, "test")
    with pytest.raises(DataError, match="dataset 'folder' has no labels"):
        load_labels("folder", tmp_path)


def test_the_benchmark_scores_a_checkpoint_with_a_cached_classifier(classifier, data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert launch.main(["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(data_dir),
                        "--num-goals", "256", "--total-updates", "3", "--checkpoint-dir", str(run)]) == 0
    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save(classifier.state_dict(), cache / "mnist-classifier-e1.pt")  # read back, not retrained
    output = tmp_path / "out"
    assert lg.main(["--checkpoint", str(run), "--samples", "50", "--epochs", "1", "--cache", str(cache),
                    "--data-dir", str(data_dir), "--output", str(output), "--temperatures", "1", "0.5"]) == 0
    report = json.loads((output / "legibility.json").read_text())
    real = lg.legibility(lg.probabilities(classifier, load_goals("mnist", data_dir, "test").images[:50]))
    assert report["rows"][0]["legible_share"] == real["legible_share"]  # the cached weights, not new ones
    assert [row.get("temperature") for row in report["rows"]] == [None, 1.0, 0.5] and report["updates"] == 3
    assert all(0 <= row["legible_share"] <= 1 for row in report["rows"]) and (output / "samples-t0.5-k0.png").exists()
    assert "legible" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        lg.main(["--checkpoint", str(run), "--threshold", "1.5"])
    assert "--threshold must be in (0, 1)" in capsys.readouterr().err
