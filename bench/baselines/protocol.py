"""One evaluation protocol for every model of Table 1: the same FID code, Inception file and reference
statistics as `launch.py evaluate`, the same test images, the same sample count.

- Reconstruction MSE: per pixel on the [-1, 1] scale, over the first `num_test` test images (models
  that reconstruct: the GCRL model through its GC-agent, the VAE through its posterior mean).
- Reconstruction FID: those reconstructions against the first `reference` test images.
- Sample FID: `samples` draws against the first `reference` training images.
- Same-N floors: what real images score at that N (training images against the test reference;
  test images against the training reference), the best a model could show at this sample count.
- Sampling cost: network passes per image (the U-Net for GCRL and DDPM, the decoder for the VAE) and
  images per second, timed over the FID draws (batches of `batch_size`, the same autocast for all).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bench.baselines.train import autocast
from common.storage.data import GoalSet
from common.method.pixels import to_uint8
from common.device import cpu_has_native_bf16
from evaluation.inference import encoder_of, reconstruct, s_agent_cross_entropy, sample, sampling_of
from evaluation.model import load_model
from evaluation.fid import FidScorer, ReferenceCache, load_inception, reference_stats


SCORED_RECONSTRUCTIONS = "_reconstructions"  # the row key of the scored reconstructions (uint8 tensor)


@dataclass
class Protocol:
    """The data, scorer and reference statistics every model is measured with."""

    test: torch.Tensor  # [N, C, H, W] uint8, the reconstructed test images
    scorer: FidScorer
    test_reference: object  # FeatureStats of the first `reference` test images
    train_reference: object  # FeatureStats of the first `reference` training images
    samples: int
    batch_size: int
    bf16: bool
    floors: dict


def build_protocol(train: GoalSet, test: GoalSet, num_test: int, reference: int, samples: int,
                   batch_size: int = 250, inception=None, bf16: bool | None = None) -> Protocol:
    """Reference statistics (cached as `launch.py evaluate` caches them) and the same-N floors."""
    scorer = FidScorer(load_inception(inception))
    cache = ReferenceCache()
    test_ref = reference_stats(scorer, test, reference, cache)
    train_ref = reference_stats(scorer, train, reference, cache)
    floors = {"reconstruction": scorer.distance(test_ref, reference_stats(scorer, train, num_test, cache)),
              "samples": scorer.distance(train_ref, reference_stats(scorer, test, samples, cache))}  # cached too
    bf16 = cpu_has_native_bf16() if bf16 is None else bf16
    return Protocol(test.images[:num_test], scorer, test_ref, train_ref, samples, batch_size, bf16, floors)


def _autocast(protocol: Protocol):
    return autocast(torch.device("cpu"), protocol.bf16)


def timed(draw) -> tuple[torch.Tensor, float]:
    """(images, seconds) of one call."""
    started = time.monotonic()
    images = draw()
    return images, time.monotonic() - started


def scores(protocol: Protocol, samples: torch.Tensor, seconds: float, passes: int, network: str,
           reconstructions: torch.Tensor | None = None, mse: float | None = None) -> dict:
    """A table row's measured figures; reconstructions and samples uint8 [N, C, H, W]."""
    row = {"recon_mse": mse, "recon_fid": None, "passes_per_image": passes, "network": network,
           "images_per_second": samples.shape[0] / seconds, "sampling_seconds": round(seconds, 2)}
    if reconstructions is not None:
        row["recon_fid"] = protocol.scorer.score(reconstructions, protocol.test_reference, "reconstruction FID")
        row[SCORED_RECONSTRUCTIONS] = reconstructions  # not JSON: table1.py saves it as .npy and drops it
    row["sample_fid"] = protocol.scorer.score(samples, protocol.train_reference, "sample FID")
    return row


def batched(draw, count: int, batch_size: int) -> torch.Tensor:
    """draw(n) -> [n, C, H, W] float in [-1, 1], called batch by batch; the result uint8."""
    return torch.cat([to_uint8(draw(min(batch_size, count - start))) for start in range(0, count, batch_size)])


def evaluate_gcrl(checkpoint, protocol: Protocol, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """The GCRL model: GC-agent reconstructions (its training behaviour), S-agent samples (Algorithm 3)."""
    model = load_model(checkpoint, "cpu")
    with _autocast(protocol):
        recon = reconstruct(model.agent, model.x1, model.rates, protocol.test, protocol.batch_size,
                            keep_states=True, **encoder_of(model.config))
        drawn, seconds = timed(lambda: sample(model.agent, model.x1, model.rates, protocol.samples,
                                              protocol.batch_size, seed, keep_trajectories=0,
                                              **sampling_of(model.config)).images)
        cross_entropy = s_agent_cross_entropy(model.agent, recon.states, recon.codes)
    passes = model.config.mdp.horizon  # H U-Net passes, each after one pass of the small S-select-net
    row = scores(protocol, drawn, seconds, passes, "U-Net + S-select", recon.images, recon.mse)
    row.update(updates=model.updates, encoder=encoder_of(model.config)["encoder"],
               horizon=passes, num_proposals=model.config.mdp.num_proposals, sampling=sampling_of(model.config),
               s_agent_cross_entropy=sum(cross_entropy) / len(cross_entropy),
               s_agent_cross_entropy_per_step=[round(v, 4) for v in cross_entropy])
    return row, drawn


def evaluate_vae(model, protocol: Protocol, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """The VAE: decode the posterior mean of each test image; decode prior draws for samples."""
    generator = torch.Generator().manual_seed(seed)
    with _autocast(protocol), torch.no_grad():
        recons = [model.reconstruct(protocol.test[s:s + protocol.batch_size].float() / 127.5 - 1.0)
                  for s in range(0, protocol.test.shape[0], protocol.batch_size)]
        drawn, seconds = timed(lambda: batched(lambda n: model.sample(n, generator), protocol.samples,
                                               protocol.batch_size))
    recon = torch.cat(recons).float()
    mse = float((recon.double() - (protocol.test.double() / 127.5 - 1.0)).pow(2).mean())
    return scores(protocol, drawn, seconds, 1, "decoder", to_uint8(recon), mse), drawn


def evaluate_diffusion(model, protocol: Protocol, sampler: str, seed: int = 0,
                       eta: float = 0.0) -> tuple[dict, torch.Tensor]:
    """The DDPM sampled by `sampler`: "ddpm" (1000 ancestral steps) or "ddim" (config.sample_steps, `eta`)."""
    generator = torch.Generator().manual_seed(seed)
    with _autocast(protocol):
        drawn, seconds = timed(lambda: batched(lambda n: model.sample(n, generator, sampler, eta), protocol.samples,
                                               protocol.batch_size))
    return scores(protocol, drawn, seconds, model.evaluations_per_image(sampler), "U-Net"), drawn


def mean_image_mse(train: GoalSet, protocol: Protocol) -> float:
    """The reconstruction MSE of always answering the training mean: the bar every encoder must clear."""
    test = protocol.test.double() / 127.5 - 1.0
    return float((test - train.mean_image().double()).pow(2).mean())
