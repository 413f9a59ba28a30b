"""The EMA's three starts: checked against diffusers' EMAModel and against the weighted mean they define."""
import pytest
import torch
from diffusers.training_utils import EMAModel

from harness.protocol.trainer import ema_weight


def _follow(schedule, decay, values):
    """The EMA of a parameter that takes ``values`` in turn, updated as the trainer updates it."""
    ema = torch.tensor(0.5)  # the initial weight
    for k, v in enumerate(values, start=1):
        ema = torch.lerp(ema, torch.tensor(v), ema_weight(schedule, decay, k))
    return float(ema)


def test_warmup_is_diffusers_ema_model_step_for_step():
    param = torch.nn.Parameter(torch.tensor([0.5]))
    reference = EMAModel([param], decay=0.999)  # its default: decay (1+s)/(10+s), capped at 0.999
    values = [float(v) for v in torch.linspace(-1, 2, 40)]
    ours = torch.tensor(0.5)
    for k, v in enumerate(values, start=1):
        with torch.no_grad():
            param.fill_(v)
        reference.step([param])
        ours = torch.lerp(ours, torch.tensor(v), ema_weight("warmup", 0.999, k))
        assert float(ours) == pytest.approx(float(reference.shadow_params[0]), abs=1e-6), k


def test_debiased_is_the_weighted_mean_of_the_trained_weights_alone():
    decay, values = 0.9, [1.0, 3.0, -2.0, 0.5, 4.0]
    weights = [(1 - decay) * decay ** (len(values) - j) for j in range(1, len(values) + 1)]
    expected = sum(w * v for w, v in zip(weights, values)) / sum(weights)
    assert _follow("debiased", decay, values) == pytest.approx(expected, rel=1e-6)
    assert _follow("debiased", decay, values[:1]) == pytest.approx(values[0])  # the initial weight has no part


def test_constant_keeps_decay_to_the_k_of_the_initial_weights():
    decay = 0.9
    assert _follow("constant", decay, [0.0] * 10) == pytest.approx(0.5 * decay**10)
    # and the debiased EMA meets it once decay^k is negligible
    assert _follow("constant", decay, [1.0] * 300) == pytest.approx(_follow("debiased", decay, [1.0] * 300), abs=1e-6)
