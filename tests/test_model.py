"""The network is the lab's: 5 -> 10 -> 10 -> 3 with biases, ReLU, log-softmax."""

import torch

from penguin_lab.model import PenguinNet


def test_layer_shapes_are_the_labs():
    shapes = {name: tuple(t.shape) for name, t in PenguinNet().state_dict().items()}
    assert shapes == {"fc1.weight": (10, 5), "fc1.bias": (10,), "fc2.weight": (10, 10), "fc2.bias": (10,),
                      "fc3.weight": (3, 10), "fc3.bias": (3,)}


def test_forward_returns_log_probabilities():
    out = PenguinNet()(torch.randn(7, 5))
    assert out.shape == (7, 3)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(7), atol=1e-6)
    assert (out <= 0).all()
