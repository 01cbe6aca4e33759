"""Every task's make_batch is device-agnostic torch code (issue 18, part 1): each tensor it creates is placed on the
images' device or, for random draws, on the generator's, never on the default device. Checked on the CPU by making
the default device 'meta' (which holds no data): a tensor created without a device lands there and the first op
mixing it with real data fails. The outputs must be the very tensors of a normal call. On CUDA, where present, the
batch built from images and a generator on the GPU has the CPU batch's keys, shapes, dtypes and label ranges."""

from __future__ import annotations

import pytest
import torch

from sslbench.backbones.base import build_backbone
from sslbench.config import build
from sslbench.registry import BACKBONES, TASKS

# Options whose make_batch takes another path than the tiny set-up's (task name, task options)
VARIANTS = [
    ("context", {"aberration": "projection"}), ("context", {"aberration": "none"}),
    ("context", {"drop_noise": "uniform"}), ("jigsaw", {"tile_norm": False, "random_offsets": False}),
    ("jigsaw", {"channel_jitter": 2, "tile_norm_per_channel": False}), ("inpainting", {"mask": "central"}),
    ("inpainting", {"mask": "random-blocks"}), ("inpainting", {"regions": "blobs"}), ("rotation", {"crop_pad": 0}),
    ("rotation", {"normalize": "cifar"}), ("colorization", {"target_stride": 0, "gray_threshold": 0.0}),
]
CASES = [pytest.param(n, {}, id=n) for n in TASKS.names()] + [
    pytest.param(n, o, id=f"{n}-" + "-".join(f"{k}={v}" for k, v in o.items())) for n, o in VARIANTS]


def tiny(name: str, device: str = "cpu", options: dict | None = None):  # noqa: ANN201
    cls = TASKS.get(name)
    setup = cls.tiny()
    cfg = build(BACKBONES.entry(setup.backbone).config, dict(setup.backbone_cfg), "test")
    task_cfg = build(TASKS.entry(name).config, {**setup.cfg, **(options or {})}, "test")
    task = cls(task_cfg, build_backbone(setup.backbone, cfg))
    images = torch.randint(0, 256, (4, 3, setup.image_size, setup.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    task.restore(task.setup(torch.utils.data.TensorDataset(images), torch.Generator().manual_seed(0)))
    targets = {"index": torch.arange(4), **setup.targets}
    return task.to(device), images.to(device), {k: v.to(device) for k, v in targets.items()}


@pytest.mark.parametrize(("name", "options"), CASES)
def test_make_batch_creates_every_tensor_on_the_images_or_the_generators_device(name: str, options: dict) -> None:
    task, images, targets = tiny(name, options=options)
    want = task.make_batch(images, targets, torch.Generator().manual_seed(3))
    torch.set_default_device("meta")
    try:
        got = task.make_batch(images, targets, torch.Generator().manual_seed(3))
    finally:
        torch.set_default_device(None)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].device.type == "cpu" and torch.equal(got[key], want[key]), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("name", "options"), CASES)
def test_make_batch_on_cuda_has_the_cpu_batchs_layout(name: str, options: dict) -> None:
    """Other random streams on the GPU, so not the same values: the same keys, shapes, dtypes; labels and indices
    non-negative where the CPU's are; float tensors finite and of a similar mean."""
    task, images, targets = tiny(name, options=options)
    want = task.make_batch(images, targets, torch.Generator().manual_seed(3))
    task, images, targets = tiny(name, "cuda", options)
    got = task.make_batch(images, targets, torch.Generator("cuda").manual_seed(3))
    assert sorted(got) == sorted(want)
    for key in want:
        a, b = want[key], got[key]
        assert b.device.type == "cuda" and b.shape == a.shape and b.dtype == a.dtype, key
        if a.dtype == torch.bool or not a.is_floating_point():
            assert int(a.min()) < 0 or int(b.min()) >= 0, key
        else:
            assert torch.isfinite(b).all(), key
            assert abs(float(b.float().mean()) - float(a.float().mean())) <= 0.5 * float(a.float().std()) + 1e-3, key


@pytest.mark.parametrize("augment", ["voc-cls rescale_crop_flip", "probe random_crop_flip"])
def test_the_protocols_train_time_augmentations_create_no_tensor_on_the_default_device(augment: str) -> None:
    from sslbench.protocols.voc_cls import rescale_crop_flip
    from sslbench.transforms import random_crop_flip

    images = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    run = {"voc-cls rescale_crop_flip": lambda g: rescale_crop_flip(images, 20, 0.5, 1.5, True, g),
           "probe random_crop_flip": lambda g: random_crop_flip(images, 4, True, g)}[augment]
    want = run(torch.Generator().manual_seed(2))
    torch.set_default_device("meta")
    try:
        got = run(torch.Generator().manual_seed(2))
    finally:
        torch.set_default_device(None)
    assert got.device.type == "cpu" and torch.equal(got, want)


PROTOCOL_BATCHES = {  # protocol -> the tiny recipe's options under which its fit loop builds batches from images
    "voc-cls": ["protocol.test_crops=2"],
    "linear": ["protocol.taps=['conv1']", "protocol.cache_features=false", "protocol.crop_pad=2"],
    "nyu-depth": ["data.num_images=8", "data.num_test=4", "data.batch_size=4", "data.image_size=48",
                  "backbone.depth=50", "backbone.width=0.0625"],
    "voc-seg": ["protocol.pad=10"],
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOL_BATCHES))
def test_the_protocols_build_their_batches_where_engine_batch_on_says(protocol: str, tmp_path, monkeypatch) -> None:
    """engine.batch_on = device: each protocol's fit loop moves the loader's images to the training device before
    its augmentation and input transform (Fit.on_batch_device, its draws from Fit.generator there); on the CPU that
    is where they already are, so the same metrics as the default."""
    from sslbench.protocols.base import evaluate
    from sslbench.training import Fit
    from tests.conftest import tiny_alexnet, tiny_protocol

    moved, drawn, real, real_generator = [], [], Fit.on_batch_device, Fit.generator

    def spy(self, tensor):  # noqa: ANN001, ANN202
        moved.append((self.batch_device.type, tensor.dtype))
        return real(self, tensor)

    def generator_spy(self, step):  # noqa: ANN001, ANN202
        g = real_generator(self, step)
        drawn.append(g.device == self.batch_device)
        return g

    monkeypatch.setattr(Fit, "on_batch_device", spy)
    monkeypatch.setattr(Fit, "generator", generator_spy)
    runs = {}
    for where in ("loader", "device"):
        moved.clear()
        drawn.clear()
        options = [*PROTOCOL_BATCHES[protocol], f"engine.batch_on={where}"]
        recipe = tiny_protocol(protocol, options if protocol == "nyu-depth" else tiny_alexnet(options))
        runs[where] = evaluate(recipe, "random", tmp_path / where, "cpu", progress=False, argv=["test"]).metrics
        assert moved and {device for device, _ in moved} == {"cpu"}, where
        assert {dtype for _, dtype in moved} >= {torch.uint8}, where  # the loader's images, before any transform
        if protocol in ("voc-cls", "linear"):  # the protocols that draw an augmentation per step
            assert drawn and all(drawn), where
    assert runs["device"] == runs["loader"]
