import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.protocol import data


def _write_cifar_folder(folder, per_batch=3):
    """Tiny CIFAR-10 batches in the real format: pickled dicts with bytes keys, data [N,3072] uint8
    laid out as 1024 red, 1024 green, 1024 blue values, each row-major."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(1, 6):
        batch_images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)  # HWC, as people think of them
        images.append(batch_images)
        flat = batch_images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)
        content = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": [0] * per_batch,
                   b"data": flat, b"filenames": [b"x.png"] * per_batch}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(content, protocol=2))
    return np.concatenate(images)


def test_cifar_folder_in_the_real_pickle_format(tmp_path):
    expected = _write_cifar_folder(tmp_path / "cifar-10-batches-py")
    images = data.load_cifar10(tmp_path, download=False)
    assert images.shape == (15, 3, 32, 32) and images.dtype == np.uint8
    # channel-first layout: pixel (row 5, col 7) of image 4 keeps its RGB
    assert np.array_equal(images[4, :, 5, 7], expected[4, 5, 7])
    assert np.array_equal(images.transpose(0, 2, 3, 1), expected)


def test_cifar_tarball_is_read_without_extracting(tmp_path):
    expected = _write_cifar_folder(tmp_path / "src" / "cifar-10-batches-py")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    images = data.load_cifar10(tmp_path, download=False)
    assert np.array_equal(images.transpose(0, 2, 3, 1), expected)


def test_cifar_data_dir_from_environment(tmp_path, monkeypatch):
    _write_cifar_folder(tmp_path / "cifar-10-batches-py")
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    assert data.load_cifar10(download=False).shape == (15, 3, 32, 32)


def test_cifar_missing_offline_says_how_to_provide_it(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(HarnessError, match=r"could not be downloaded.*--data-dir.*HARNESS_DATA_DIR.*shapes"):
        data.load_cifar10()


def test_cifar_wrong_data_dir_is_reported(tmp_path):
    with pytest.raises(HarnessError, match="No CIFAR-10 found in --data-dir"):
        data.load_cifar10(tmp_path)


def test_shapes_are_deterministic_and_depend_on_the_seed():
    a, b, c = data.generate_shapes(300, seed=0), data.generate_shapes(300, seed=0), data.generate_shapes(300, seed=1)
    assert a.shape == (300, 3, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_shapes_look_like_images_not_noise():
    images = data.generate_shapes(200, seed=0).astype(np.float64)
    assert images.std() > 40  # varied colours
    # neighbouring pixels are mostly equal-ish: smooth backgrounds and solid shapes
    assert np.abs(np.diff(images, axis=3)).mean() < 10


def test_image_batches_scale_flip_and_resume():
    images = torch.from_numpy(data.generate_shapes(64, seed=0))
    batches = data.ImageBatches(images, 16, torch.device("cpu"), flip=True)
    gen = torch.Generator().manual_seed(0)
    first = batches.next(gen)
    assert first.shape == (16, 3, 32, 32) and first.min() >= -1 and first.max() <= 1
    # every image of the batch is one of the dataset's, possibly mirrored
    pool = images.float() / 127.5 - 1
    for x in first:
        assert any(torch.equal(x, p) or torch.equal(x, p.flip(2)) for p in pool)
    state, gen_state = batches.state_dict(), gen.get_state()
    expected = [batches.next(gen) for _ in range(6)]  # crosses an epoch boundary (64 / 16 = 4 per epoch)
    resumed = data.ImageBatches(images, 16, torch.device("cpu"))
    resumed.load_state_dict(state)
    gen.set_state(gen_state)
    assert all(torch.equal(a, resumed.next(gen)) for a in expected)


def test_epoch_visits_every_image_once():
    images = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 3, 32, 32).contiguous()
    batches = data.ImageBatches(images, 4, torch.device("cpu"), flip=False)
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([batches.next(gen)[:, 0, 0, 0] for _ in range(2)])
    assert sorted(((seen + 1) * 127.5).round().int().tolist()) == list(range(8))


def test_shape_variants_smaller_images_and_fewer_kinds():
    generate_shapes = data.generate_shapes
    full = generate_shapes(64, seed=0, max_shapes=1, radius=(7.0, 12.0)).astype(float)
    small = generate_shapes(64, seed=0, max_shapes=1, radius=(7.0, 12.0), size=16)
    assert small.shape == (64, 3, 16, 16) and small.dtype == np.uint8
    # each pixel is the mean of its 2x2 block of the 32x32 drawing (rounded once, so within 1 of
    # the mean of the rounded 32x32 pixels)
    blocks = full.reshape(64, 3, 16, 2, 16, 2).mean(axis=(3, 5))
    assert np.abs(small - blocks).max() <= 1.0
    three = generate_shapes(64, seed=0, max_shapes=1, radius=(7.0, 12.0), kinds=("square", "ring", "cross"))
    assert np.array_equal(three, generate_shapes(64, seed=0, max_shapes=1, radius=(7.0, 12.0),
                                                 kinds=("square", "ring", "cross")))
    assert not np.array_equal(three, full.astype(np.uint8))


def test_plain_backgrounds_keep_the_shapes_and_colours():
    kwargs = dict(num_images=32, seed=0, max_shapes=1, radius=(6.0, 6.0))
    plain = data.generate_shapes(**kwargs, background="plain").transpose(0, 2, 3, 1).reshape(32, -1, 3)
    gradient = data.generate_shapes(**kwargs).transpose(0, 2, 3, 1).reshape(32, -1, 3)
    for p, g in zip(plain, gradient):
        colours, counts = np.unique(p, axis=0, return_counts=True)
        assert counts.max() >= 0.8 * 32 * 32  # one background colour (a shape covers at most ~150 pixels)
        assert len(np.unique(g, axis=0)) > 50  # a gradient has many
        # the same shape in the same colour: inside it (away from its anti-aliased edge) both agree
        shape = (p != colours[counts.argmax()]).any(axis=1)
        assert shape.sum() >= 20 and (p[shape] == g[shape]).all(axis=1).mean() >= 0.4


def test_shape_variant_settings_are_checked_and_name_their_reference():
    from harness.protocol.reference import reference_key
    from harness.protocol.tasks import resolve_task

    default = resolve_task("shapes", "smoke")
    variant = resolve_task("shapes", "smoke", {"data.image_size": 16, "data.shape_kinds": ["ring", "cross"],
                                               "data.background": "plain"})
    key = reference_key(variant.data, variant.evaluation, "w")["data"]
    assert key["image_size"] == 16 and key["shape_kinds"] == ["ring", "cross"] and key["background"] == "plain"
    default_key = reference_key(default.data, default.evaluation, "w")["data"]
    assert "shape_kinds" not in default_key and "background" not in default_key  # earlier caches keep their names
    for overrides, words in [({"data.shape_kinds": ["ring", "star"]},
                              "data.shape_kinds must list values among 'circle', 'square'.*not \\['ring', 'star'\\]"),
                             ({"data.shape_kinds": []}, "data.shape_kinds must be distinct names"),
                             ({"data.image_size": 24}, "data.image_size must be 8 or 16 or 32"),
                             ({"data.background": "noise"},
                              "data.background must be 'gradient' or 'plain', not 'noise'")]:
        with pytest.raises(HarnessError, match=words):
            resolve_task("shapes", "smoke", overrides)
    with pytest.raises(HarnessError, match="data.image_size must be 32 for the cifar10 dataset"):
        resolve_task("cifar10", "smoke", {"data.image_size": 16})


class _TouchOnLoad:
    """Unpickling it calls Path.touch: what a crafted file could do instead."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


def test_a_cifar_batch_that_would_run_code_is_refused_unrun(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar_folder(folder)
    marker = tmp_path / "ran"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _TouchOnLoad(marker)}, protocol=2))
    refusal = r"data_batch_3 is not a CIFAR-10 batch: it names __builtin__.getattr.*could run code"
    with pytest.raises(HarnessError, match=refusal):
        data.load_cifar10(tmp_path, download=False)
    assert not marker.exists()
    pickle.loads((folder / "data_batch_3").read_bytes())  # the same bytes, unpickled plainly, do run it
    assert marker.exists()
