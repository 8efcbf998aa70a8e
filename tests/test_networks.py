import pytest
import torch

from common.method.config import MDPConfig, NetworkConfig
from common.errors import MessageError
from common.storage.messages import pack_weights
from common.method.networks import GoalQNet, ProposalUNet, SelectionNet, VAgent
from common.storage.messages import load_weights_message

MDP = MDPConfig(horizon=3, num_proposals=4)
NET = NetworkConfig(proposal_widths=(8, 8, 16, 16), selection_widths=(8, 8, 16), groups=4)
SHAPES = [(1, 28, 28), (3, 32, 32), (2, 30, 22)]


def _inputs(shape, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn((batch,) + shape, generator=gen)
    goal = torch.randn((batch,) + shape, generator=gen)
    step = torch.tensor([0, 2][:batch])
    selection = torch.tensor([3, 1][:batch])
    return state, step, selection, goal


def _all_params_get_grad(module, loss):
    loss.backward()
    for name, param in module.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("shape", SHAPES)
def test_proposal_shape(shape):
    torch.manual_seed(0)
    state, step, selection, _ = _inputs(shape)
    assert ProposalUNet(shape, MDP, NET)(state, step, selection).shape == (2,) + shape


@pytest.mark.parametrize("shape", SHAPES)
def test_selection_shape(shape):
    torch.manual_seed(0)
    state, step, _, _ = _inputs(shape)
    assert SelectionNet(shape, MDP, NET)(state, step).shape == (2, 4)


@pytest.mark.parametrize("shape", SHAPES)
def test_goal_q_shape(shape):
    torch.manual_seed(0)
    state, step, _, goal = _inputs(shape)
    assert GoalQNet(shape, MDP, NET)(state, step, goal).shape == (2, 4)


def test_vagent_holds_the_three_networks():
    agent = VAgent((1, 28, 28), MDP, NET)
    state, step, selection, goal = _inputs((1, 28, 28))
    assert agent.proposal(state, step, selection).shape == (2, 1, 28, 28)
    assert agent.selection(state, step).shape == (2, 4)
    assert agent.goal_q(state, step, goal).shape == (2, 4)
    assert agent.image_shape == (1, 28, 28)


def test_proposal_embedding_has_h_times_a_rows():
    assert ProposalUNet((1, 28, 28), MDP, NET).embedding.table.num_embeddings == 12


def test_proposal_depends_on_selection():
    torch.manual_seed(0)
    net = ProposalUNet((1, 28, 28), MDP, NET)
    state = torch.randn(1, 1, 28, 28).expand(4, 1, 28, 28)
    out = net(state, torch.ones(4, dtype=torch.long), torch.arange(4))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(out[i], out[j])


def test_proposal_depends_on_step():
    torch.manual_seed(0)
    net = ProposalUNet((1, 28, 28), MDP, NET)
    state = torch.randn(1, 1, 28, 28).expand(3, 1, 28, 28)
    out = net(state, torch.arange(3), torch.full((3,), 2))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


def test_proposal_uses_index_a_times_h_plus_a():
    torch.manual_seed(0)
    net = ProposalUNet((1, 28, 28), MDP, NET)
    with torch.no_grad():
        net.embedding.table.weight.zero_()
        net.embedding.table.weight[1 * 4 + 2] = 1.0  # only (h=1, a=2) has a non-zero embedding
    state = torch.zeros(3, 1, 28, 28)
    out = net(state, torch.tensor([1, 2, 0]), torch.tensor([2, 1, 2]))
    assert torch.allclose(out[1], out[2]) and not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("shape", [(1, 28, 28), (2, 30, 22)])
def test_proposal_gradients_reach_all_parameters(shape):
    torch.manual_seed(0)
    net = ProposalUNet(shape, MDP, NET)
    state, step, selection, _ = _inputs(shape)
    _all_params_get_grad(net, net(state, step, selection).pow(2).mean())


@pytest.mark.parametrize("shape", [(1, 28, 28), (2, 30, 22)])
def test_selection_gradients_reach_all_parameters(shape):
    torch.manual_seed(0)
    net = SelectionNet(shape, MDP, NET)
    state, step, _, _ = _inputs(shape)
    logits = net(state, step)
    _all_params_get_grad(net, torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3])))


@pytest.mark.parametrize("shape", [(1, 28, 28), (2, 30, 22)])
def test_goal_q_gradients_reach_all_parameters(shape):
    torch.manual_seed(0)
    net = GoalQNet(shape, MDP, NET)
    state, step, _, goal = _inputs(shape)
    q = net(state, step, goal)
    _all_params_get_grad(net, (q * torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.3, 1.0, -1.0, 2.0]])).sum())


def test_goal_q_depends_on_goal():
    torch.manual_seed(0)
    net = GoalQNet((1, 28, 28), MDP, NET)
    state, step, _, goal = _inputs((1, 28, 28), batch=1)
    assert not torch.allclose(net(state, step, goal), net(state, step, goal + 1.0))


def _weights_of(agent):
    return {k: v.detach().numpy() for k, v in agent.state_dict().items()}


def test_weights_message_carries_an_agent_into_another():
    torch.manual_seed(0)
    source, receiver = VAgent((1, 12, 12), MDP, NET), VAgent((1, 12, 12), MDP, NET)
    assert load_weights_message(receiver, pack_weights(_weights_of(source), 5)) == 5
    state, step, _, goal = _inputs((1, 12, 12))
    assert torch.equal(receiver.goal_q(state, step, goal), source.goal_q(state, step, goal))


OTHER_AGENTS = [VAgent((1, 16, 16), MDP, NET), VAgent((1, 12, 12), MDPConfig(horizon=3, num_proposals=5), NET)]


@pytest.mark.parametrize("other", OTHER_AGENTS)
def test_weights_message_for_another_architecture_is_refused_untouched(other):
    torch.manual_seed(0)
    receiver = VAgent((1, 12, 12), MDP, NET)
    before = {k: v.clone() for k, v in receiver.state_dict().items()}
    with pytest.raises(MessageError, match="weights message"):
        load_weights_message(receiver, pack_weights(_weights_of(other), 1))
    assert all(torch.equal(before[k], v) for k, v in receiver.state_dict().items())


def test_weights_message_with_a_bad_version_is_refused():
    agent = VAgent((1, 12, 12), MDP, NET)
    with pytest.raises(MessageError, match="version must be an int >= 0, got -1"):
        load_weights_message(agent, pack_weights(_weights_of(agent), -1))


@pytest.mark.parametrize("shape", [(1, 28, 28), (2, 30, 22)])
def test_channels_last_proposal_is_the_same_function_as_nchw(shape, monkeypatch):
    """The CPU float32 fast path (channels-last) changes the layout only: outputs and gradients agree."""
    torch.manual_seed(0)
    net = ProposalUNet(shape, MDP, NET)
    state, step, selection, _ = _inputs(shape, seed=3)
    results = {}
    for layout in (False, True):
        monkeypatch.setattr(ProposalUNet, "channels_last", layout)
        net.zero_grad()
        out = net(state, step, selection)
        out.pow(2).sum().backward()
        assert out.is_contiguous()  # callers get the usual layout either way
        results[layout] = (out.detach(), [p.grad.clone() for p in net.parameters()])
    (nchw, nchw_grads), (last, last_grads) = results[False], results[True]
    torch.testing.assert_close(last, nchw, rtol=1e-4, atol=1e-5)
    for a, b in zip(last_grads, nchw_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
