"""The Table 1 baselines (bench/baselines): each learns, DDIM with eta = 1 over every step is the DDPM
sampler, checkpoints round-trip through torch.load(weights_only=True), bad input costs one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.baselines import train as trainer
from bench.baselines.diffusion import (Diffusion, DiffusionConfig, Schedule, ddim_step_moments, ddim_steps,
                                       ddpm_step_moments)
from bench.baselines.vae import VAE, VAEConfig
from common.storage.checkpoint import file_digest
from common.storage.data import load_goals
from common.errors import CheckpointError, ConfigError

TINY = {"vae": {"latent_dim": 4, "widths": [8, 16], "groups": 4},
        "ddpm": {"steps": 50, "widths": [8, 8, 16, 16], "groups": 4, "sample_steps": 5}}


@pytest.fixture(scope="module")
def goals(data_dir):
    """256 MNIST training images: enough for a loss to fall in a few dozen updates."""
    return load_goals("mnist", data_dir).subset(256)


@pytest.mark.parametrize("kind", ["vae", "ddpm"])
def test_each_baseline_learns(kind, goals):
    model = trainer.build(kind, TINY[kind], goals.image_shape)
    batch = goals.goals(torch.arange(64))
    before = _fixed_loss(model, batch)
    settings = trainer.TrainSettings(updates=150, batch_size=32, lr=3e-3, seed=0, progress_every=0)
    _, summary = trainer.train(model, goals, settings, torch.device("cpu"), log=lambda _line: None)
    after = _fixed_loss(model, batch)
    assert summary.updates == 150 and len(summary.losses) == 150
    assert after < before - 0.3 * abs(before), (kind, before, after)


def _fixed_loss(model, batch) -> float:
    """The loss on one batch with the same noise each time, so two calls differ only by the weights."""
    with torch.no_grad():
        return float(model.loss(batch, torch.Generator().manual_seed(1)))


def test_ddim_with_eta_one_over_all_steps_is_the_ddpm_step():
    schedule = Schedule(DiffusionConfig())  # Ho et al.'s 1000 steps
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn((4, 1, 6, 6), generator=generator, dtype=torch.float64)
    eps = torch.randn((4, 1, 6, 6), generator=generator, dtype=torch.float64)
    for t in range(1000):
        ddpm_mean, ddpm_var = ddpm_step_moments(schedule, x_t, t, eps)
        ddim_mean, ddim_var = ddim_step_moments(schedule, x_t, t, t - 1, eps, eta=1.0)
        torch.testing.assert_close(ddim_mean, ddpm_mean, rtol=1e-9, atol=1e-9, msg=f"mean at t={t}")
        torch.testing.assert_close(ddim_var, ddpm_var, rtol=1e-9, atol=1e-12, msg=f"variance at t={t}")
    assert float(schedule.posterior_variance(0)) == 0.0  # the last step adds no noise


def test_the_two_samplers_draw_the_same_images_when_ddim_takes_every_step_with_eta_one():
    config = DiffusionConfig(**{**TINY["ddpm"], "sample_steps": TINY["ddpm"]["steps"]})
    model = Diffusion(config, (1, 12, 12)).eval()
    assert ddim_steps(config) == list(range(config.steps - 1, -1, -1))
    ancestral = model.sample(3, torch.Generator().manual_seed(5), "ddpm")
    implicit = model.sample(3, torch.Generator().manual_seed(5), "ddim", eta=1.0)
    torch.testing.assert_close(implicit, ancestral, rtol=1e-5, atol=1e-5)
    deterministic = model.sample(3, torch.Generator().manual_seed(5), "ddim", eta=0.0)
    assert not torch.allclose(deterministic, ancestral, atol=1e-3)  # eta 0 is another sampler


def test_ddim_subsequence_starts_at_the_noisiest_step():
    steps = ddim_steps(DiffusionConfig(sample_steps=16))
    assert len(steps) == 16 and steps[0] == 999 and steps[-1] == 0 and steps == sorted(steps, reverse=True)


def test_vae_fits_other_image_shapes():
    model = VAE(VAEConfig(latent_dim=3, widths=(8, 16, 16), groups=4), (3, 20, 18))
    assert model.reconstruct(torch.zeros(2, 3, 20, 18)).shape == (2, 3, 20, 18)
    assert model.sample(5).shape == (5, 3, 20, 18)


@pytest.mark.parametrize("kind", ["vae", "ddpm"])
def test_checkpoint_round_trips_and_an_older_one_survives_a_new_save(kind, goals, tmp_path):
    model = trainer.build(kind, TINY[kind], goals.image_shape)
    settings = trainer.TrainSettings(updates=2)
    trainer.save_baseline(tmp_path, kind, model, goals, settings, trainer.TrainSummary(updates=2))
    loaded_kind, loaded, manifest = trainer.load_baseline(tmp_path)
    assert loaded_kind == kind and manifest["updates"] == 2
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(loaded.sample(2, torch.Generator().manual_seed(3)),
                                   model.sample(2, torch.Generator().manual_seed(3)))
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    trainer.save_baseline(tmp_path, kind, model, goals, settings, trainer.TrainSummary(updates=3))
    assert len(list(tmp_path.glob("weights-*.pt"))) == 1 and trainer.load_baseline(tmp_path)[2]["updates"] == 3


def test_corrupt_or_pickled_weights_are_refused_in_one_line(goals, tmp_path):
    model = trainer.build("vae", TINY["vae"], goals.image_shape)
    trainer.save_baseline(tmp_path, "vae", model, goals, trainer.TrainSettings(updates=1), trainer.TrainSummary())
    manifest = json.loads((tmp_path / "baseline.json").read_text())
    weights = tmp_path / manifest["weights"]
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="does not match the digest"):
        trainer.load_baseline(tmp_path)
    torch.save({"payload": Exploit()}, weights)  # a pickle that would run code if unpickled
    manifest["weights_sha256"] = file_digest(weights)
    (tmp_path / "baseline.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as refused:
        trainer.load_baseline(tmp_path)
    assert "\n" not in str(refused.value)
    (tmp_path / "baseline.json").write_text(json.dumps({**manifest, "weights": "../elsewhere.pt"}))
    with pytest.raises(CheckpointError, match="names weights file"):
        trainer.load_baseline(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        trainer.load_baseline(tmp_path / "nowhere")


class Exploit:
    """Unpickling this would call print; weights_only loading must refuse the class instead."""

    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("argv, named", [
    (["--model", "gan", "--minutes", "1", "--output", "x"], "--model"),
    (["--model", "vae", "--output", "x"], "--minutes M or --updates N"),
    (["--model", "vae", "--minutes", "-1", "--output", "x"], "--minutes"),
    (["--model", "ddpm", "--updates", "0", "--output", "x"], "--updates"),
    (["--model", "vae", "--updates", "5", "--output", "x", "--set", "latent_dim=0"], "vae.latent_dim"),
    (["--model", "vae", "--updates", "5", "--output", "x", "--set", "depth=3"], "depth"),
    (["--model", "ddpm", "--updates", "5", "--output", "x", "--set", "sample_steps=2000"], "sample_steps"),
    (["--model", "vae", "--updates", "5", "--output", "x", "--ema", "1.5"], "--ema"),
])
def test_training_flags_get_one_line(argv, named, data_dir, tmp_path, capsys):
    argv = [*argv, "--data-dir", str(data_dir)]
    argv[argv.index("--output") + 1] = str(tmp_path / "out")
    assert trainer.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and named in err, err
    assert not (tmp_path / "out").exists()


def test_bad_data_dir_gets_one_line(tmp_path, capsys):
    assert trainer.main(["--model", "vae", "--updates", "1", "--output", str(tmp_path / "o"),
                         "--data-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing" in err


@pytest.mark.parametrize("argv, named", [(["--minutes", "0"], "--minutes"), (["--fid-samples", "1"], "--fid-samples"),
                                         (["--models", "gan"], "--models"), (["--updates", "-3"], "--updates")])
def test_table1_flags_get_one_line(argv, named, tmp_path, capsys):
    from bench import table1

    with pytest.raises(SystemExit) as exited:
        table1.parse_args([*argv, "--output", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "\n" not in err and named in err, err


def test_table1_refuses_to_train_over_an_earlier_table(tmp_path, capsys):
    from bench import table1

    (tmp_path / "vae").mkdir()
    with pytest.raises(SystemExit):
        table1.parse_args(["--output", str(tmp_path)])
    assert "already holds trained models" in capsys.readouterr().err
    assert table1.parse_args(["--output", str(tmp_path), "--evaluate-only"]).evaluate_only


def test_diffusion_settings_are_checked():
    with pytest.raises(ConfigError, match="beta"):
        DiffusionConfig(beta_start=0.1, beta_end=0.01)
    with pytest.raises(ConfigError, match="groups"):
        DiffusionConfig(widths=(6, 8), groups=4)
    with pytest.raises(ConfigError, match="'ddpn'"):
        Diffusion(DiffusionConfig(**TINY["ddpm"]), (1, 8, 8)).sample(1, sampler="ddpn")


# Three trainings in subprocesses, a 1000-step DDPM sampler and Inception: 533 s on a Zen 3 (AVX2, float32) beside
# another job, past the suite's 600 s guard for stuck tests when the machine is busier; it is slow, not stuck.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_table1_trains_every_model_and_writes_the_table(data_dir, tmp_path):
    """End to end on a tiny budget: three trainings, one protocol, the printed layout, JSON and PNG."""
    from PIL import Image

    from bench import table1

    out = tmp_path / "table"
    argv = ["--updates", "3", "--num-test", "8", "--fid-samples", "8", "--fid-reference", "16", "--batch-size", "8",
            "--data-dir", str(data_dir), "--output", str(out)]
    assert table1.main(argv) == 0
    report = json.loads((out / "table1.json").read_text())
    rows = {r["model"]: r for r in report["rows"]}
    assert set(rows) == {"gcrl", "vae", "ddpm", "ddim"}
    assert rows["ddpm"]["passes_per_image"] == 1000 and rows["ddim"]["passes_per_image"] == 16
    assert rows["gcrl"]["passes_per_image"] == rows["gcrl"]["horizon"] and rows["gcrl"]["updates"] >= 3
    for name in ("gcrl", "vae"):
        assert 0 < rows[name]["recon_mse"] < 4 and rows[name]["recon_fid"] > 0
    assert all(r["sample_fid"] > 0 and r["images_per_second"] > 0 for r in rows.values())
    assert rows["vae"]["paper"]["sample_fid"] == 27.96 and "DDIM 16 steps" in report["table"]
    assert report["complete"] and len(rows["gcrl"]["s_agent_cross_entropy_per_step"]) == rows["gcrl"]["horizon"]
    assert Image.open(out / "table1.png").size[0] > 4 * 8 * 28
    for name in ("gcrl", "vae"):  # the images FID scored, for outside tools
        assert np.load(out / f"{name}-reconstructions.npy").shape == (8, 1, 28, 28)
    assert np.load(out / "ddim-samples.npy").dtype == np.uint8
