"""The projection head from the encoder width to the recommender's embedding size."""
from __future__ import annotations

from torch import nn

from REC.config import ConfigError

HEAD_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leakyrelu": nn.LeakyReLU,  # slope 0.01, as the original's activation_layer
    "none": nn.Identity,
}


def projection_head(d_in: int, hidden: list[int], d_out: int, activation: str, xavier: bool) -> nn.Sequential:
    """``Linear(d_in, d_out)`` + activation, or with hidden widths an MLP d_in -> hidden... -> d_out with the
    activation after every layer and no BatchNorm or dropout (the original's ``MLPLayers(bn=False)``).

    ``xavier``: xavier-normal weights and zero biases, as the original's Cls/Mean/Pool/CLIP item encoders; the
    torchvision and CLIP-``cls`` heads kept PyTorch's Linear initialisation.
    """
    try:
        act = HEAD_ACTIVATIONS[activation.lower()]
    except KeyError:
        raise ConfigError(f"unknown head activation {activation!r}; known: {sorted(HEAD_ACTIVATIONS)}") from None
    sizes = [int(d_in), *(int(h) for h in hidden), int(d_out)]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        linear = nn.Linear(a, b)
        if xavier:
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)
        layers += [linear, act()]
    return nn.Sequential(*layers)
