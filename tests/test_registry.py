import os

import pytest
import torch

from harness.errors import HarnessError
from harness.protocol import registry
from harness.protocol.tasks import resolve_task

SMOKE_ENV = resolve_task("cifar10", "smoke").width_env
CPU = torch.device("cpu")


def _load(path):
    return registry.load(str(path), SMOKE_ENV, CPU, seed=0)


def test_full_attn_and_full_dash_attn_name_the_same_file():
    assert registry.find_architecture("full-attn") == registry.find_architecture("full_attn")


def test_unknown_arch_suggests_close_name_and_lists_what_exists():
    with pytest.raises(HarnessError) as err:
        registry.find_architecture("standrd")
    assert "Did you mean 'standard'?" in str(err.value)
    assert "full_attn" in str(err.value) and "no_attn" in str(err.value)


def test_width_env_is_set_during_build_and_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCK_OUT_CHANNELS", "1,2")
    monkeypatch.delenv("LAYERS_PER_BLOCK", raising=False)
    path = tmp_path / "reads_widths.py"  # reads the widths at import time and in build_model
    path.write_text("import os\nimport torch\n\nAT_IMPORT = os.environ['BLOCK_OUT_CHANNELS']\n\n\n"
                    "def build_model(device):\n    model = torch.nn.Linear(1, 1)\n"
                    "    model.seen = (AT_IMPORT, os.environ['BLOCK_OUT_CHANNELS'], os.environ['LAYERS_PER_BLOCK'])\n"
                    "    return model\n")
    widths = {"BLOCK_OUT_CHANNELS": "8,8", "LAYERS_PER_BLOCK": "3"}
    model = registry.build(registry.find_architecture(str(path)), widths, CPU)
    assert model.seen == ("8,8", "8,8", "3")
    assert os.environ["BLOCK_OUT_CHANNELS"] == "1,2" and "LAYERS_PER_BLOCK" not in os.environ


def test_baselines_have_the_published_sizes():
    # "about 9M / 36M / 140M parameters at small / medium / large" for standard
    for tier, published in {"small": 9e6, "medium": 36e6, "large": 140e6}.items():
        count = registry.parameter_count(registry.find_architecture("standard"),
                                         resolve_task("cifar10", tier).width_env)
        assert isinstance(count, int) and abs(count - published) / published < 0.05
    # attention adds parameters: full_attn > standard > no_attn at every tier
    env = resolve_task("cifar10", "small").width_env
    sizes = {n: registry.parameter_count(registry.find_architecture(n), env)
             for n in ("full_attn", "standard", "no_attn")}
    assert sizes["full_attn"] > sizes["standard"] > sizes["no_attn"]


def test_meta_count_equals_real_count():
    arch = registry.find_architecture("standard")
    real = registry.count_parameters(registry.build(arch, SMOKE_ENV, CPU))
    assert registry.parameter_count(arch, SMOKE_ENV) == real


def test_mls_bench_style_file_runs_unchanged(write_arch):
    # Reads the widths at import time, as some MLS-Bench submissions do, and builds a UNet2DModel.
    path = write_arch("mls_style", '''
        import os
        from diffusers import UNet2DModel
        CHANNELS = tuple(int(c) for c in os.environ.get("BLOCK_OUT_CHANNELS", "128,256,256,256").split(","))
        def build_model(device):
            return UNet2DModel(sample_size=32, in_channels=3, out_channels=3,
                               layers_per_block=int(os.environ.get("LAYERS_PER_BLOCK", 2)),
                               block_out_channels=CHANNELS,
                               down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                               up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")).to(device)
    ''')
    _, model = _load(path)
    assert model.config.block_out_channels == (32, 64, 64, 64) and model.config.layers_per_block == 1


def test_syntax_error_names_file_and_line(write_arch):
    path = write_arch("broken", "import torch\n\ndef build_model(device)\n    return None\n")
    with pytest.raises(HarnessError, match=r"broken.py could not be imported \(line 3\): SyntaxError"):
        _load(path)


def test_import_error_names_the_line(write_arch):
    path = write_arch("missing_dep", "import os\nimport not_a_real_package_xyz\n")
    with pytest.raises(HarnessError, match=r"\(line 2\): ModuleNotFoundError"):
        _load(path)


def test_missing_build_model(write_arch):
    with pytest.raises(HarnessError, match="has no build_model"):
        _load(write_arch("nothing", "X = 1\n"))


def test_build_model_raising_names_the_line(write_arch):
    path = write_arch("raises", "def build_model(device):\n    widths = [1]\n    return widths[5]\n")
    with pytest.raises(HarnessError, match=r"raised at line 3 .*IndexError"):
        _load(path)


CONV = '''
import torch
from diffusers.models.unets.unet_2d import UNet2DOutput
class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    def forward(self, x, timestep):
        return {out}
def build_model(device):
    return M().to(device)
'''


def test_output_without_sample_is_explained(write_arch):
    path = write_arch("tensor_out", CONV.format(out="self.conv(x)"))
    with pytest.raises(HarnessError, match=r"returned a Tensor, which has no .sample"):
        _load(path)


def test_wrong_shape_says_which_shape_came_back_and_which_was_expected(write_arch):
    path = write_arch("wrong_shape", CONV.format(out="UNet2DOutput(sample=self.conv(x)[:, :, :16, :16])"))
    with pytest.raises(HarnessError, match=r"shape \[2, 3, 16, 16\]; expected \[2, 3, 32, 32\]"):
        _load(path)


def test_non_finite_output_is_rejected(write_arch):
    path = write_arch("nan_out", CONV.format(out="UNet2DOutput(sample=self.conv(x) * float('nan'))"))
    with pytest.raises(HarnessError, match="non-finite"):
        _load(path)


def test_forward_crash_names_the_line(write_arch):
    path = write_arch("crash", CONV.format(out="UNet2DOutput(sample=self.conv(x.view(-1)))"))
    with pytest.raises(HarnessError, match=r"failed on a test input .* line 9"):
        _load(path)


def test_non_module_return(write_arch):
    with pytest.raises(HarnessError, match="not a torch.nn.Module"):
        _load(write_arch("not_module", "def build_model(device):\n    return 3\n"))


def test_validation_does_not_touch_the_global_rng():
    arch = registry.find_architecture("standard")
    torch.manual_seed(0)
    model = registry.build(arch, SMOKE_ENV, CPU)
    expected = torch.rand(3)
    torch.manual_seed(0)
    model = registry.build(arch, SMOKE_ENV, CPU)
    registry.validate(model, arch, CPU)
    assert torch.equal(torch.rand(3), expected)


def test_file_with_future_annotations_and_dataclasses_imports(write_arch):
    # dataclasses look their module up in sys.modules while the class is created, as in any import
    path = write_arch("dataclass_style", '''
        from __future__ import annotations
        from dataclasses import dataclass
        import torch

        @dataclass
        class Output:
            sample: torch.Tensor

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
            def forward(self, x, timestep) -> Output:
                return Output(self.conv(x))

        def build_model(device):
            return Net().to(device)
    ''')
    _, model = _load(path)
    assert isinstance(model, torch.nn.Module)


def test_file_that_cannot_build_on_meta_is_counted_on_the_cpu(write_arch):
    # .item() while initialising fails on the meta device; the count must still be exact
    path = write_arch("item_in_init", '''
        import torch
        from diffusers.models.unets.unet_2d import UNet2DOutput

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
                self.scale = float(torch.ones(1).sum().item())
            def forward(self, x, timestep):
                return UNet2DOutput(sample=self.conv(x) * self.scale)

        def build_model(device):
            return Net().to(device)
    ''')
    arch = registry.find_architecture(str(path))
    assert registry.parameter_count(arch, {"BLOCK_OUT_CHANNELS": "32,64,64,64",
                                           "LAYERS_PER_BLOCK": "1"}) == 3 * 3 * 9 + 3


def test_the_hash_is_of_the_source_that_built_the_model_not_of_the_file_later(tiny_arch):
    import hashlib

    original = tiny_arch.read_bytes()
    arch, _ = registry.load(str(tiny_arch), {"BLOCK_OUT_CHANNELS": "8", "LAYERS_PER_BLOCK": "1"},
                            torch.device("cpu"), 0)
    tiny_arch.write_text(tiny_arch.read_text() + "\n# edited while the run trains\n")
    assert arch.sha256 == hashlib.sha256(original).hexdigest()
    assert registry.find_architecture(str(tiny_arch)).sha256 != arch.sha256  # the file as it is now
