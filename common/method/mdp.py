"""The episodic MDP of section 3.1 as plain tensor functions.

x_1 is fixed, x_{h+1} = x_h + alpha_h y_h for h = 1..H, and the only loss is the Gaussian
log-likelihood of the goal at the last step (or, as an extension, the Laplace one). Kept apart from the
networks so the step rule and the loss can be checked against hand-computed numbers.
"""

from __future__ import annotations

import torch

from common.method.config import MDPConfig


def step_rates(mdp: MDPConfig, device=None) -> torch.Tensor:
    """alpha_1..alpha_H as a tensor [H], so rollouts index it by step without Python floats."""
    return torch.tensor(mdp.rates(), dtype=torch.float32, device=device)


def initial_state(mdp: MDPConfig, image_shape: tuple[int, int, int], data_mean: torch.Tensor | None) -> torch.Tensor:
    """x_1 [C, H, W]: zeros (the paper's experiments) or the training-set mean (section 3.1)."""
    if mdp.initial_state == "zeros":
        return torch.zeros(image_shape)
    if data_mean is None or tuple(data_mean.shape) != tuple(image_shape):
        raise ValueError(f"initial_state 'data_mean' needs a mean image of shape {image_shape}")
    return data_mean.detach().clone().float()


def transition(state: torch.Tensor, action: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """Eq. (5): x_{h+1} = x_h + alpha_h y_h (the mean of the Gaussian last step at h = H).

    state, action: [B, C, H, W]; alpha: a float or [B] (one rate per row, for mixed steps).
    """
    if isinstance(alpha, torch.Tensor) and alpha.dim() == 1:
        alpha = alpha.view(-1, 1, 1, 1)
    return state + alpha * action


def pixel_error(difference: torch.Tensor, likelihood: str = "gaussian") -> torch.Tensor:
    """The last step's per-pixel error, elementwise: d^2 (the paper's Gaussian) or |d| (the Laplace extension).

    One definition for the goal loss, the candidate scorers' distance and the unfolded update, so the E-step and
    the M-step always optimise the same likelihood."""
    return difference.abs() if likelihood == "laplace" else difference.pow(2)


def likelihood_scale(sigma: float, likelihood: str = "gaussian") -> float:
    """The negative log-likelihood's divisor of the summed pixel error: 2 sigma^2 (Gaussian) or sigma (Laplace)."""
    return sigma if likelihood == "laplace" else 2.0 * sigma * sigma


def goal_loss(final_state: torch.Tensor, goal: torch.Tensor, sigma: float, reduction: str = "mean",
              likelihood: str = "gaussian") -> torch.Tensor:
    """Loss of the last step, ||x_{H+1} - goal||^2 / (2 sigma^2), summed or averaged over pixels: -> [B].

    final_state, goal: [B, C, H, W]. "sum" is the paper's Gaussian negative log-likelihood (up to a
    constant); "mean" divides it by the pixel count d, which makes kappa d times stronger (see MDPConfig).
    likelihood "laplace" (extension) is the Laplace negative log-likelihood |x_{H+1} - goal| / sigma instead.
    """
    error = pixel_error(final_state - goal, likelihood).flatten(1)
    error = error.sum(dim=1) if reduction == "sum" else error.mean(dim=1)
    return error / likelihood_scale(sigma, likelihood)
