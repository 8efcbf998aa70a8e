import math

import pytest
import torch
from torch import nn

from common.method.losses import (double_dqn_target, polyak_update, q_regression_loss, selection_cross_entropy,
                           unfolded_proposal_loss)
from common.method.networks import DuelingHead

ONLINE = torch.tensor([[1.0, 5.0, 0.5], [2.0, 0.1, 3.0]])  # argmin: 2, 1
TARGET = torch.tensor([[0.2, 9.0, 4.0], [7.0, 8.0, 0.3]])  # argmin: 0, 2 (plain DQN would take 0.2, 0.3)


def test_double_dqn_online_chooses_target_values():
    out = double_dqn_target(ONLINE, TARGET, torch.tensor([0.0, 1.5]), torch.tensor([False, False]))
    assert torch.allclose(out, torch.tensor([4.0, 9.5]))


def test_double_dqn_differs_from_plain_min():
    out = double_dqn_target(ONLINE, TARGET, torch.zeros(2), torch.tensor([False, False]))
    plain = torch.tensor([0.2, 0.3])
    assert not torch.allclose(out, plain)


def test_double_dqn_terminal_rows_ignore_bootstrap():
    out = double_dqn_target(ONLINE, TARGET, torch.tensor([0.0, 1.5]), torch.tensor([False, True]))
    assert torch.allclose(out, torch.tensor([4.0, 1.5]))


def test_double_dqn_all_terminal_is_loss():
    big = torch.full((2, 3), 1e6)
    out = double_dqn_target(big, big, torch.tensor([0.25, 2.0]), torch.tensor([True, True]))
    assert torch.equal(out, torch.tensor([0.25, 2.0]))


def test_q_regression_loss_hand_computed():
    q = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert q_regression_loss(q, torch.tensor([2, 0]), torch.tensor([1.0, 6.0])).item() == pytest.approx(4.0)
    assert q_regression_loss(q, torch.tensor([2, 0]), torch.tensor([2.5, 4.0])).item() == pytest.approx(0.125)


def test_q_regression_loss_gradient_only_on_chosen_and_not_targets():
    q = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    targets = torch.tensor([1.0, 6.0], requires_grad=True)
    q_regression_loss(q, torch.tensor([2, 0]), targets).backward()
    assert torch.allclose(q.grad, torch.tensor([[0.0, 0.0, 2.0], [-2.0, 0.0, 0.0]]))
    assert targets.grad is None


def _linear(weight, bias):
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.copy_(torch.tensor([bias]))
    return layer


def test_polyak_update_quarter():
    online, target = _linear([4.0, 8.0], 12.0), _linear([0.0, 4.0], -4.0)
    polyak_update(target, online, 0.25)
    assert torch.allclose(target.weight, torch.tensor([[1.0, 5.0]]))
    assert torch.allclose(target.bias, torch.tensor([0.0]))
    assert torch.equal(online.weight, torch.tensor([[4.0, 8.0]])) and online.bias.item() == 12.0


def test_polyak_update_twice():
    online, target = _linear([4.0, 8.0], 12.0), _linear([0.0, 4.0], -4.0)
    polyak_update(target, online, 0.25)
    polyak_update(target, online, 0.25)
    assert torch.allclose(target.weight, torch.tensor([[1.75, 5.75]]))
    assert torch.allclose(target.bias, torch.tensor([3.0]))


def test_polyak_update_rho_one_copies():
    online, target = _linear([4.0, 8.0], 12.0), _linear([0.0, 4.0], -4.0)
    polyak_update(target, online, 1.0)
    assert torch.equal(target.weight, online.weight) and torch.equal(target.bias, online.bias)


def test_polyak_update_copies_buffers():
    online, target = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    online.running_mean.fill_(3.0)
    polyak_update(target, online, 0.25)
    assert torch.equal(target.running_mean, torch.tensor([3.0, 3.0]))


def test_selection_cross_entropy_hand_computed():
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)], [0.0, 0.0, math.log(2.0)]])  # probs 1/4, 1/4, 1/2
    loss = selection_cross_entropy(logits, torch.tensor([2, 0]))
    assert loss.item() == pytest.approx((math.log(2.0) + math.log(4.0)) / 2)


def test_selection_cross_entropy_matches_manual_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    selections = torch.tensor([0, 3, 1, 1, 2])
    manual = -torch.stack([torch.log(torch.exp(row[a]) / torch.exp(row).sum()) for row, a in zip(logits, selections)])
    assert selection_cross_entropy(logits, selections).item() == pytest.approx(manual.mean().item(), rel=1e-5)


def test_unfolded_proposal_loss_is_pixel_mean():
    final = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert unfolded_proposal_loss(final, torch.zeros_like(final)).item() == pytest.approx(7.5)


def _dueling():
    head = DuelingHead(2, 3)
    with torch.no_grad():
        head.value.weight.copy_(torch.tensor([[1.0, 2.0]]))
        head.value.bias.copy_(torch.tensor([0.5]))
        head.advantage.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        head.advantage.bias.copy_(torch.tensor([0.0, 0.0, 3.0]))
    return head


def test_dueling_head_hand_set_weights():
    q = _dueling()(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
    # row 0: V = 5.5, A = [1, 2, 6] - 3; row 1: V = -1.5, A = [0, -1, 2] - 1/3
    expected = torch.tensor([[3.5, 4.5, 8.5], [-11.0 / 6.0, -17.0 / 6.0, 1.0 / 6.0]])
    assert torch.allclose(q, expected)


def test_dueling_head_mean_over_actions_is_value():
    q = _dueling()(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
    assert torch.allclose(q.mean(dim=1), torch.tensor([5.5, -1.5]))
