"""One smoke test over every architecture file (a new file is tested the moment it exists)."""
import pytest
import torch

from harness.protocol import registry
from harness.protocol.tasks import resolve_task

SPEC = resolve_task("shapes", "smoke")


@pytest.mark.parametrize("name", registry.architecture_names())
def test_architecture_trains_one_step_at_smoke_width(name):
    arch, model = registry.load(name, SPEC.width_env, torch.device("cpu"), seed=0)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    t = torch.randint(0, 1000, (4,))
    out = model(x, t).sample
    assert out.shape == (4, 3, 32, 32) and torch.isfinite(out).all()
    loss = torch.nn.functional.mse_loss(out, torch.randn_like(out))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "every parameter gets a finite gradient"
    assert registry.count_parameters(model) == registry.parameter_count(arch, SPEC.width_env)


@pytest.mark.parametrize("name", registry.architecture_names())
def test_architecture_file_imports_nothing_from_the_harness(name):
    source = registry.find_architecture(name).path.read_text()
    assert "import harness" not in source and "from harness" not in source
