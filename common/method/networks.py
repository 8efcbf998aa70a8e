"""The three networks of Appendix B, for any image size and channel count.

- S-prop-net (ProposalUNet): the proposal y = S-prop-net(x, h, a), a 4-level U-Net whose step and
  selection enter as an embedding of the index A*h + a, image-sized, concatenated on the channels.
- S-select-net (SelectionNet): logits over the A selections from (x, h), three conv blocks.
- GC-select-Qnet (GoalQNet): the same trunk fed the goal too, with a dueling head (Wang et al.).

Steps h and selections a are 0-based here (h in [0, H), a in [0, A)).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from common.errors import ConfigError
from common.method.config import MDPConfig, NetworkConfig

ImageShape = tuple[int, int, int]  # (C, H, W)


def conv_block(in_channels: int, out_channels: int, groups: int, stride: int = 1) -> nn.Sequential:
    """Appendix B's unit: 3x3 convolution, GroupNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


def double_block(in_channels: int, out_channels: int, groups: int) -> nn.Sequential:
    """One U-Net level: two conv blocks, as in the milesial U-Net the paper uses."""
    return nn.Sequential(conv_block(in_channels, out_channels, groups), conv_block(out_channels, out_channels, groups))


class ImageEmbedding(nn.Module):
    """An embedding table whose rows are images [C, H, W], so a discrete index becomes extra channels."""

    def __init__(self, num_indices: int, image_shape: ImageShape):
        super().__init__()
        self.image_shape = tuple(image_shape)
        c, h, w = self.image_shape
        self.table = nn.Embedding(num_indices, c * h * w)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """index [B] long -> [B, C, H, W]."""
        return self.table(index).view(-1, *self.image_shape)


def smallest_image_side(levels: int) -> int:
    """The U-Net halves the image levels - 1 times (max-pooling floors), so each side needs 2^(levels - 1) pixels."""
    return 2 ** (levels - 1)


def check_image_size(image_shape: ImageShape, levels: int) -> None:
    """Refuse images the U-Net cannot pool down (they would fail deep inside a forward pass), in one line."""
    side = smallest_image_side(levels)
    if min(image_shape[1:]) < side:
        raise ConfigError(f"images of {image_shape[1]}x{image_shape[2]} pixels are too small for the proposal "
                          f"U-Net's {levels} levels: each side needs at least {side} pixels (2^(levels-1)); use "
                          "larger images or fewer network.proposal_widths")


class ProposalUNet(nn.Module):
    """S-prop-net: proposes the action y_h for selection a at step h; shared by both agents.

    In float32 on a CPU its activations are kept channels-last (NHWC): PyTorch's bilinear upsampling of NCHW
    tensors converts to NHWC and back on every call. Under bf16 autocast NHWC is slower, so it stays NCHW
    (bench/cpu_speed.py; docs/results.md, CPU speed).
    """

    channels_last = True  # on a CPU; a class attribute so benchmarks can compare both layouts

    def __init__(self, image_shape: ImageShape, mdp: MDPConfig, net: NetworkConfig):
        super().__init__()
        check_image_size(image_shape, len(net.proposal_widths))
        channels = image_shape[0]
        widths = net.proposal_widths
        self.num_proposals = mdp.num_proposals
        self.embedding = ImageEmbedding(mdp.horizon * mdp.num_proposals, image_shape)
        ins = (2 * channels,) + widths[:-1]
        self.down = nn.ModuleList(double_block(i, o, net.groups) for i, o in zip(ins, widths))
        self.up = nn.ModuleList(
            double_block(widths[k + 1] + widths[k], widths[k], net.groups) for k in reversed(range(len(widths) - 1)))
        self.out = nn.Conv2d(widths[0], channels, kernel_size=1)

    def forward(self, state: torch.Tensor, step: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
        """state [B, C, H, W], step [B], selection [B] -> proposal y [B, C, H, W]."""
        index = step * self.num_proposals + selection  # A*h + a, Appendix B eq. (6)
        features = torch.cat([state, self.embedding(index)], dim=1)  # [B, 2C, H, W]
        if self.channels_last and features.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
            # float32 on a CPU: the same values in another layout, faster (under bf16 autocast it is slower)
            features = features.contiguous(memory_format=torch.channels_last)
        skips = []
        for level, block in enumerate(self.down):
            if level:
                features = F.max_pool2d(features, 2)
            features = block(features)
            skips.append(features)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            features = F.interpolate(features, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            features = block(torch.cat([skip, features], dim=1))
        return self.out(features).contiguous()


class SelectionTrunk(nn.Module):
    """Three conv blocks, the first at full resolution, the others halving it, pooled to 4x4."""

    def __init__(self, in_channels: int, net: NetworkConfig):
        super().__init__()
        ins = (in_channels,) + net.selection_widths[:-1]
        strides = [1] + [2] * (len(net.selection_widths) - 1)
        self.blocks = nn.Sequential(
            *(conv_block(i, o, net.groups, s) for i, o, s in zip(ins, net.selection_widths, strides)))
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.out_features = net.selection_widths[-1] * 16

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """[B, in_channels, H, W] -> [B, out_features]."""
        return self.pool(self.blocks(inputs)).flatten(1)


class CodePrefixEncoder(nn.Module):
    """A small causal network over the code prefix a_<h (extension): a GRU over one learned vector per
    (step, selection) pair, read after h inputs, so the prior knows which branch of the code tree x_h is on
    rather than guessing it from a blurred image."""

    def __init__(self, mdp: MDPConfig, features: int = 128, embedding: int = 64):
        super().__init__()
        self.num_proposals, self.features = mdp.num_proposals, features
        self.pairs = nn.Embedding(mdp.horizon * mdp.num_proposals, embedding)
        self.gru = nn.GRU(embedding, features, batch_first=True)

    def forward(self, prefix: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """prefix [B, H] long (entries at positions >= step are ignored), step [B] -> features [B, F]."""
        positions = torch.arange(prefix.shape[1], device=prefix.device)
        outputs, _ = self.gru(self.pairs(positions * self.num_proposals + prefix).float())  # [B, H, F]
        before = torch.cat([outputs.new_zeros(prefix.shape[0], 1, self.features), outputs], dim=1)  # [B, H+1, F]
        return before[torch.arange(prefix.shape[0], device=prefix.device), step]  # after a_1..a_{h-1}


class SelectionNet(nn.Module):
    """S-select-net: the S-agent's goal-agnostic distribution over selections (as logits).

    With network.selection_prefix (extension) a residual term reads the code prefix too (CodePrefixEncoder);
    its last layer starts at zero, so the network starts as the paper's.
    """

    def __init__(self, image_shape: ImageShape, mdp: MDPConfig, net: NetworkConfig):
        super().__init__()
        self.embedding = ImageEmbedding(mdp.horizon, image_shape)
        self.trunk = SelectionTrunk(2 * image_shape[0], net)
        self.head = nn.Linear(self.trunk.out_features, mdp.num_proposals)
        self.prefix = CodePrefixEncoder(mdp) if net.selection_prefix else None
        if self.prefix is not None:
            self.mix = nn.Linear(self.trunk.out_features, self.prefix.features)
            self.prefix_head = nn.Linear(self.prefix.features, mdp.num_proposals)
            nn.init.zeros_(self.prefix_head.weight)
            nn.init.zeros_(self.prefix_head.bias)

    def forward(self, state: torch.Tensor, step: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """state [B, C, H, W], step [B], prefix [B, H] long (a_<h; read only by a prefix net) -> logits [B, A]."""
        features = self.trunk(torch.cat([state, self.embedding(step)], dim=1))
        logits = self.head(features)
        if self.prefix is None:
            return logits
        if prefix is None:
            raise ValueError("this S-select-net reads the code prefix (network.selection_prefix): pass prefix [B, H]")
        hidden = F.relu(self.mix(features).float() + self.prefix(prefix, step))
        return logits + self.prefix_head(hidden).to(logits.dtype)


def selection_logits(selection: nn.Module, state: torch.Tensor, step: torch.Tensor,
                     prefix: torch.Tensor) -> torch.Tensor:
    """S-select's logits [B, A], handing the code prefix [B, H] only to a network that reads it, so any
    (state, step) module still serves as S-select."""
    if getattr(selection, "prefix", None) is None:
        return selection(state, step)
    return selection(state, step, prefix.clone())  # a copy: callers fill the prefix in place step by step


class DuelingHead(nn.Module):
    """Q = V + (Adv - mean Adv): a state value plus zero-mean advantages (Wang et al., 2016)."""

    def __init__(self, in_features: int, num_actions: int):
        super().__init__()
        self.value = nn.Linear(in_features, 1)
        self.advantage = nn.Linear(in_features, num_actions)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, F] -> Q-values [B, A]."""
        advantage = self.advantage(features)
        return self.value(features) + advantage - advantage.mean(dim=1, keepdim=True)


class GoalQNet(nn.Module):
    """GC-select-Qnet: expected final loss of each selection given state, step and goal."""

    def __init__(self, image_shape: ImageShape, mdp: MDPConfig, net: NetworkConfig):
        super().__init__()
        self.embedding = ImageEmbedding(mdp.horizon, image_shape)
        self.trunk = SelectionTrunk(3 * image_shape[0], net)
        self.head = DuelingHead(self.trunk.out_features, mdp.num_proposals)

    def forward(self, state: torch.Tensor, step: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """state, goal [B, C, H, W], step [B] -> Q-values [B, A] (lower is better: they are losses)."""
        return self.head(self.trunk(torch.cat([state, goal, self.embedding(step)], dim=1)))


class GoalValueNet(nn.Module):
    """The afterstate GC-agent's value (an extension): V(x', h', goal), the per-pixel goal loss still expected
    from the state x' reached after h' steps, so that Q(x_h, a, goal) = V(x_h + alpha_h y_a(x_h), h + 1, goal).

    It sees what it values (the candidate state itself), unlike GC-select-Qnet, whose indexes mean whatever the
    proposal network currently makes of them. Parameterised as a correction to the distance: V = ||x' - goal||^2
    (per pixel) + f(x', h', goal) with f's last layer zero at the start, so the agent starts as the greedy
    lookahead and learns by Double-DQN what the remaining steps can still reach.
    """

    def __init__(self, image_shape: ImageShape, mdp: MDPConfig, net: NetworkConfig):
        super().__init__()
        self.embedding = ImageEmbedding(mdp.horizon, image_shape)
        self.trunk = SelectionTrunk(3 * image_shape[0], net)
        self.head = nn.Linear(self.trunk.out_features, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, state: torch.Tensor, step: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """state, goal [B, C, H, W], step [B] in [0, H) -> values [B] (lower is better: they are losses)."""
        distance = (state.float() - goal.float()).pow(2).flatten(1).mean(dim=1)
        correction = self.head(self.trunk(torch.cat([state, goal, self.embedding(step)], dim=1))).squeeze(1)
        return distance + correction.float()


class VAgent(nn.Module):
    """The paper's variational agent: S-agent (proposal + selection) and GC-agent (goal Q-network).

    Held together so weights, devices and checkpoints move as one; the Polyak targets of the Q-network
    (and of the afterstate value network, present only when `value` asks for it) live with the learner.
    """

    def __init__(self, image_shape: ImageShape, mdp: MDPConfig, net: NetworkConfig, value: bool = False):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.proposal = ProposalUNet(image_shape, mdp, net)
        self.selection = SelectionNet(image_shape, mdp, net)
        self.goal_q = GoalQNet(image_shape, mdp, net)
        self.goal_value = GoalValueNet(image_shape, mdp, net) if value else None
