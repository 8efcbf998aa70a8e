"""Evaluation: reconstruction MSE, codes, the evaluate/sample/encode/decode commands and their errors.

The model is a 20-update `tiny` checkpoint made once per module; quality is not the point, the
plumbing and the exactness of the round trip are.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import launch
from common.device import resolve_bf16
from common.storage.checkpoint import LEARNER_FILE, complete_checkpoints
from common.storage.data import load_goals
from evaluation.figures import grid_size
from evaluation.files import load_codes, save_codes
from evaluation.inference import decode, reconstruct
from evaluation.model import load_model
from evaluation.periodic import EvalOptions, TrainingEvaluation
from common.method.rollout import greedy_reconstruction

SIDE = 28  # MNIST


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """A run folder holding one tiny single-process checkpoint (H = 3, A = 4)."""
    path = tmp_path_factory.mktemp("run")
    assert launch.main(["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(data_dir),
                        "--num-goals", "256", "--total-updates", "20", "--checkpoint-dir", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def model(run_dir):
    return load_model(run_dir, "cpu")


@pytest.fixture(scope="module")
def test_images(data_dir):
    return load_goals("mnist", data_dir, "test").images


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def one_error_line(capsys, argv: list[str]) -> str:
    code = launch.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


class TableProposal(nn.Module):
    """y = table[a] whatever the state: with x_1 = 0 and alpha = 1, x_2 is exactly the chosen row."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, state, step, selection):
        return self.table[selection]


class DistanceQ(nn.Module):
    """Q_a = ||goal - table[a]||^2 (sign = +1: the argmin picks the matching row; -1: the farthest)."""

    def __init__(self, table, sign=1.0):
        super().__init__()
        self.table, self.sign = table, sign

    def forward(self, state, step, goal):
        return self.sign * (goal[:, None] - self.table[None]).pow(2).flatten(2).sum(dim=2)


class HandBuiltAgent(nn.Module):
    def __init__(self, table, sign=1.0):
        super().__init__()
        self.proposal, self.goal_q, self.selection = TableProposal(table), DistanceQ(table, sign), None


def test_reconstruction_mse_is_zero_for_an_agent_that_reaches_its_goals():
    generator = torch.Generator().manual_seed(0)
    table = torch.rand(5, 1, 6, 6, generator=generator) * 2 - 1  # A = 5 reachable images
    goals = table[torch.tensor([3, 0, 4, 4, 1, 2])]
    x1, rates = torch.zeros(1, 6, 6), torch.tensor([1.0])  # H = 1, alpha_1 = 1
    exact = reconstruct(HandBuiltAgent(table), x1, rates, goals, batch_size=4, keep_float=True)
    assert exact.mse == 0.0
    assert exact.codes[:, 0].tolist() == [3, 0, 4, 4, 1, 2]
    assert torch.equal(exact.finals, goals)
    assert torch.equal(decode(HandBuiltAgent(table), x1, rates, exact.codes), goals)
    wrong = reconstruct(HandBuiltAgent(table, sign=-1.0), x1, rates, goals)  # the test can fail
    assert wrong.mse > 0.1


def test_encode_decode_reproduces_the_greedy_reconstruction_exactly(model, test_images, tmp_path):
    images = test_images[:40]
    goals = images.float().div(127.5).sub(1.0)
    direct = greedy_reconstruction(model.agent, model.x1, goals, model.rates, sigma=1.0)
    recon = reconstruct(model.agent, model.x1, model.rates, images, batch_size=64, keep_float=True)
    assert torch.equal(recon.finals, direct.states[:, -1]) and torch.equal(recon.codes, direct.selections)
    assert recon.mse == pytest.approx(float((direct.states[:, -1] - goals).pow(2).mean()), rel=1e-6)
    path = save_codes(tmp_path / "codes.npz", recon.codes, model)
    stored = np.load(path, allow_pickle=False)
    assert stored["codes"].dtype == np.uint8 and stored["codes"].shape == (40, 3)
    assert float(stored["bits_per_image"]) == 3 * math.log2(4)
    codes = load_codes(path, model)
    assert torch.equal(codes, recon.codes)
    assert torch.equal(decode(model.agent, model.x1, model.rates, codes, batch_size=64), direct.states[:, -1])


def test_evaluate_writes_results_and_figures(run_dir, model, data_dir, test_images, tmp_path, capsys):
    output, cache = tmp_path / "eval", tmp_path / "fid-cache"
    assert launch.main(["evaluate", "--checkpoint", str(run_dir), "--data-dir", str(data_dir), "--num-samples", "8",
                        "--num-test", "8", "--reference-count", "8", "--fid-cache", str(cache),
                        "--output", str(output), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    results = json.loads((output / "results.json").read_text())
    assert results["updates"] == 20 and results["dataset"] == "mnist" and results["num_test"] == 8
    assert "[-1, 1]" in results["reconstruction_mse_scale"] and "reconstruction MSE" in out
    bf16 = resolve_bf16(model.config.acting.bf16, torch.device("cpu"))  # evaluation acts at the acting precision
    expected = reconstruct(model.agent, model.x1, model.rates, test_images[:8], bf16=bf16).mse
    assert results["reconstruction_mse"] == pytest.approx(expected, rel=1e-9) and results["bf16"] == bf16
    assert results["num_samples"] == 8 and results["reference_count"] == {"test": 8, "train": 8}
    assert results["recon_fid"] > 0 and results["sample_fid"] > 0 and "default_1.pt" in results["fid_protocol"]
    assert results["bits_per_image"] == 6 and results["wall_time_s"] > 0
    assert len(list(cache.glob("mnist-*-8-*.pt"))) == 2  # test and train references, cached
    assert png_size(output / "samples.png") == grid_size(3, 3, SIDE, SIDE)  # 8 samples, 3 per row
    assert png_size(output / "reconstructions.png") == grid_size(1, 16, SIDE, SIDE)  # 8 goal|reconstruction pairs
    assert png_size(output / "trajectories.png") == grid_size(4, 4, SIDE, SIDE)  # 4 trajectories, x_1..x_4


def test_evaluate_without_fid_writes_beside_the_checkpoints(run_dir, data_dir, capsys):
    assert launch.main(["evaluate", "--checkpoint", str(run_dir), "--data-dir", str(data_dir), "--num-test", "5",
                        "--no-fid"]) == 0
    checkpoint = complete_checkpoints(run_dir)[-1]
    results = json.loads((run_dir / "eval" / checkpoint.name / "results.json").read_text())  # pruning keeps it
    assert not (checkpoint / "eval").exists()
    assert results["recon_fid"] is None and results["sample_fid"] is None and results["num_test"] == 5
    assert "skipped" in capsys.readouterr().out


def test_sample_writes_images_and_trajectories(run_dir, tmp_path):
    assert launch.main(["sample", "--checkpoint", str(run_dir), "--num-samples", "6", "--output", str(tmp_path)]) == 0
    samples = np.load(tmp_path / "samples.npy", allow_pickle=False)
    assert samples.dtype == np.uint8 and samples.shape == (6, 1, SIDE, SIDE)
    assert png_size(tmp_path / "samples.png") == grid_size(2, 3, SIDE, SIDE)
    assert png_size(tmp_path / "trajectories.png") == grid_size(4, 4, SIDE, SIDE)


def test_encode_then_decode_round_trip(run_dir, model, data_dir, test_images, tmp_path, capsys):
    codes = tmp_path / "codes.npz"
    assert launch.main(["encode", "--checkpoint", str(run_dir), "--data-dir", str(data_dir), "--start", "100",
                        "--count", "20", "--output", str(codes)]) == 0
    out = capsys.readouterr().out
    assert "6 bits per image" in out and "identical to the greedy reconstruction: yes" in out
    assert launch.main(["decode", "--checkpoint", str(run_dir), "--codes", str(codes), "--output",
                        str(tmp_path / "dec")]) == 0
    decoded = np.load(tmp_path / "dec" / "decoded.npy", allow_pickle=False)
    greedy = reconstruct(model.agent, model.x1, model.rates, test_images[100:120]).images
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, greedy.numpy())
    assert png_size(tmp_path / "dec" / "decoded.png") == grid_size(4, 5, SIDE, SIDE)
    assert launch.main(["encode", "--checkpoint", str(run_dir), "--images", str(tmp_path / "dec" / "decoded.npy"),
                        "--output", str(tmp_path / "again.npz")]) == 0  # decoded images encode again


def test_training_evaluation_writes_json_and_grid(model, test_images, data_dir, tmp_path, monkeypatch):
    goals = test_images[:16]  # uint8, as the test batch of a run
    train = load_goals("mnist", data_dir, "train")
    cheap = TrainingEvaluation(EvalOptions(every=0, test_goals=16, fid_samples=0), model.config, train, None, None,
                               tmp_path, torch.device("cpu"), goals)
    result = cheap.run(model.agent, model.x1, updates=20)
    assert result["sample_fid"] is None and result["reconstruction_mse"] == pytest.approx(
        reconstruct(model.agent, model.x1, model.rates, goals).mse)
    assert json.loads((tmp_path / "eval" / "eval-20.json").read_text())["reconstruction_mse"] == result[
        "reconstruction_mse"]
    assert png_size(tmp_path / "eval" / "samples-20.png") == grid_size(8, 8, SIDE, SIDE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the training reference, cached out of ~
    with_fid = TrainingEvaluation(EvalOptions(every=0, test_goals=16, fid_samples=4), model.config, train.subset(4),
                                  None, None, tmp_path, torch.device("cpu"), goals)
    assert math.isfinite(with_fid.run(model.agent, model.x1, updates=21)["sample_fid"])
    written = json.loads((tmp_path / "eval" / "eval-21.json").read_text())
    assert written["fid_samples"] == 4 and written["num_test"] == 16


@pytest.fixture
def copied_checkpoint(run_dir, tmp_path):
    """A copy of the checkpoint folder that a test may damage."""
    return shutil.copytree(complete_checkpoints(run_dir)[-1], tmp_path / "update-000000020")


def test_missing_checkpoint_is_one_line(capsys, tmp_path):
    assert str(tmp_path / "nope") in one_error_line(capsys, ["evaluate", "--checkpoint", str(tmp_path / "nope")])


@pytest.mark.parametrize("damage, needle", [("truncate", "truncated or replaced"), ("flip", "SHA-256")])
def test_damaged_learner_file_is_one_line(capsys, copied_checkpoint, damage, needle):
    path = copied_checkpoint / LEARNER_FILE
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2:]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    line = one_error_line(capsys, ["sample", "--checkpoint", str(copied_checkpoint)])
    assert str(path) in line and needle in line


def test_foreign_checkpoints_are_one_line(capsys, tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": "someone-else", "files": {}}))
    line = one_error_line(capsys, ["evaluate", "--checkpoint", str(folder), "--no-fid"])
    assert str(folder) in line and "not a gcrl checkpoint" in line
    plain = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    line = one_error_line(capsys, ["encode", "--checkpoint", str(plain)])
    assert str(plain) in line and "is a file" in line


def test_missing_inception_file_is_one_line(capsys, run_dir, data_dir, tmp_path):
    missing = tmp_path / "nope.pt"
    line = one_error_line(capsys, ["evaluate", "--checkpoint", str(run_dir), "--data-dir", str(data_dir),
                                   "--inception", str(missing)])
    assert str(missing) in line


def test_bad_codes_files_are_one_line(capsys, run_dir, model, tmp_path):
    cases = {"shape": np.zeros((3, 5), np.uint8), "range": np.full((3, 3), 4, np.uint8),
             "dtype": np.zeros((3, 3), np.float32)}
    for name, codes in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, codes=codes)
        line = one_error_line(capsys, ["decode", "--checkpoint", str(run_dir), "--codes", str(path)])
        assert str(path) in line, line
    other = tmp_path / "other.npz"
    np.savez(other, codes=np.zeros((2, 3), np.uint8), model=np.str_("0" * 64))
    assert "another model" in one_error_line(capsys, ["decode", "--checkpoint", str(run_dir), "--codes", str(other)])


def test_images_of_another_shape_are_one_line(capsys, run_dir, tmp_path):
    folder = tmp_path / "images" / "test"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    line = one_error_line(capsys, ["evaluate", "--checkpoint", str(run_dir), "--dataset", "folder", "--data-dir",
                                   str(tmp_path / "images"), "--no-fid"])
    assert "(1, 8, 8)" in line and "(1, 28, 28)" in line


@pytest.mark.parametrize("flags, needle", [(["--temperature", "0"], "--temperature must be a positive number, got 0.0"),
                                           (["--top-k", "99"], "--top-k must be in [0, A = 4] (0: all), got 99"),
                                           (["--top-k", "-1"], "--top-k must be in [0, A = 4] (0: all), got -1")])
def test_bad_sampling_flags_are_one_line(run_dir, tmp_path, capsys, flags, needle):
    code = launch.main(["sample", "--checkpoint", str(run_dir), "--output", str(tmp_path / "s"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_sample_draws_the_way_the_checkpoint_s_recipe_says_unless_a_flag_overrides_it(data_dir, tmp_path):
    run = tmp_path / "top1"
    assert launch.main(["--runtime", "single-process", "--preset", "tiny", "--data-dir", str(data_dir), "--num-goals",
                        "256", "--total-updates", "20", "--checkpoint-dir", str(run), "--set", "sampling.top_k=1"]) == 0
    drawn = {}
    for name, flags in {"recipe": [], "all": ["--top-k", "0"]}.items():
        assert launch.main(["sample", "--checkpoint", str(run), "--num-samples", "32", "--output", str(tmp_path / name),
                            *flags]) == 0
        drawn[name] = np.load(tmp_path / name / "samples.npy")
    assert (drawn["recipe"] == drawn["recipe"][:1]).all()  # top-1 every step: the one most likely code
    assert len({image.tobytes() for image in drawn["all"]}) > 1  # the paper's sampling over all A
