"""data.decode = "device": the imagenet loader hands over files' bytes and their geometry; the batch is decoded in
one torchvision.io.decode_jpeg call where it is built (issue 18, part 4). Checked on the CPU against the PIL path."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import sslbench.cli  # noqa: F401  (registers the data sets)
from sslbench.config import DataConfig
from sslbench.data.build import build_dataset
from sslbench.data.datasets import collate_skip_corrupt, decode_deferred
from sslbench.data.decode import Encoded, EncodedBatch, resized_size
from sslbench.data.layouts.imagenet import write_imagenet
from sslbench.errors import UserError
from sslbench.runtime import Dist
from sslbench.training import Unreadable, epoch_loader

CROPS = [("center", {}), ("random_resized", {}), ("random", {"load_size": 52}),
         ("random_area", {"load_area": (1800, 3000)})]


def _pair(root: Path, crop: str, extra: dict, size: int = 32) -> tuple:
    cfg = DataConfig(dataset="imagenet", root=str(root), train_split="train", image_size=size, train_crop=crop,
                     **extra)
    return build_dataset(cfg, "train"), build_dataset(dataclasses.replace(cfg, decode="device"), "train")


@pytest.mark.parametrize(("crop", "extra"), CROPS, ids=[c for c, _ in CROPS])
def test_the_deferred_decode_draws_the_same_crops_and_gives_the_pil_paths_pixels_within_a_level(
        crop: str, extra: dict, tmp_path: Path) -> None:
    write_imagenet(tmp_path, 8, 2, 40, 0)
    pil, deferred = _pair(tmp_path, crop, extra)
    items = [deferred.draw(i, torch.Generator().manual_seed(i)) for i in range(8)]
    assert all(isinstance(img, Encoded) for img, _ in items)
    indices, (images, target) = decode_deferred(torch.arange(8), collate_skip_corrupt(items), torch.device("cpu"))
    want, want_target = collate_skip_corrupt([pil.draw(i, torch.Generator().manual_seed(i)) for i in range(8)])
    assert images.dtype == torch.uint8 and images.shape == want.shape == (8, 3, 32, 32)
    assert torch.equal(indices, torch.arange(8)) and torch.equal(target["label"], want_target["label"])
    diff = (images.float() - want.float()).abs()
    # libjpeg-turbo decodes alike; torch's antialiased resize and PIL's differ by rounding: at most a level or two
    assert diff.max() <= 2 and diff.mean() < 0.5, (float(diff.max()), float(diff.mean()))
    shifted = (images[:, :, 1:].float() - want[:, :, :-1].float()).abs().mean()
    assert shifted > 4 * diff.mean()  # another crop is far further away: the geometry is the same


@pytest.mark.parametrize(("width", "height", "size"), [(40, 30, 24), (30, 40, 24), (37, 91, 50), (91, 37, 50),
                                                      (40, 30, [17, 29])])
def test_resized_size_is_what_torchvision_resizes_a_pil_image_to(width: int, height: int, size) -> None:
    img = Image.new("RGB", (width, height))
    assert resized_size(width, height, size) == TF.resize(img, size).size


def test_a_damaged_file_is_dropped_with_its_target_and_counted_and_a_png_falls_back_to_pil(tmp_path: Path) -> None:
    root = write_imagenet(tmp_path, 6, 2, 40, 0)
    pil, deferred = _pair(tmp_path, "center", {})
    damaged, png = deferred.samples[1][0], deferred.samples[4][0]
    data = Path(damaged).read_bytes()
    Path(damaged).write_bytes(data[: len(data) // 2])  # a truncated JPEG: its header still reads
    arr = np.array(Image.open(png).convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")  # ImageNet's one PNG behind a .JPEG name
    Path(png).write_bytes(buf.getvalue())
    unreadable = Unreadable()
    with pytest.warns(UserWarning, match="unreadable image .*" + Path(damaged).name):
        batches = list(epoch_loader(deferred, 6, 0, 0, Dist(), collate_skip_corrupt, unreadable=unreadable))
    (indices, (images, target)), = batches
    assert sorted(indices.tolist()) == [0, 2, 3, 4, 5] and images.shape == (5, 3, 32, 32)
    for row, i in enumerate(indices.tolist()):
        assert int(target["label"][row]) == int(pil[i][1]["label"])  # each target still beside its image
        if i == 4:
            assert torch.equal(images[row], TF.center_crop(TF.resize(torch.from_numpy(arr).permute(2, 0, 1), 32),
                                                           [32, 32]))
    assert unreadable.counts(Dist()) == {"train": (1, 6)}
    assert root.is_dir()  # the layout's root, as written


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_jpegs_decode_to_the_pil_paths_rgb(mode: str, tmp_path: Path) -> None:
    write_imagenet(tmp_path, 4, 2, 32, 0)
    pil, deferred = _pair(tmp_path, "center", {})
    path = deferred.samples[2][0]
    Image.open(path).convert(mode).save(path, "JPEG", quality=95)  # ImageNet holds both kinds
    items = [deferred.draw(i, torch.Generator().manual_seed(i)) for i in range(4)]
    _, (images, _) = decode_deferred(torch.arange(4), collate_skip_corrupt(items), torch.device("cpu"))
    want = torch.stack([pil[i][0] for i in range(4)])
    assert images.shape == want.shape and (images.float() - want.float()).abs().max() <= 2


def test_deferred_items_cross_loader_workers_as_bytes(tmp_path: Path) -> None:
    """With workers each item's bytes come back pickled inline (no shared-memory file per image) and decode alike."""
    write_imagenet(tmp_path, 8, 2, 40, 0)
    _, deferred = _pair(tmp_path, "random_resized", {})
    assert isinstance(deferred.draw(0, torch.Generator().manual_seed(0))[0].data, bytes)
    one = [(i.tolist(), b[0]) for i, b in epoch_loader(deferred, 4, 0, 0, Dist(), collate_skip_corrupt)]
    two = [(i.tolist(), b[0]) for i, b in epoch_loader(deferred, 4, 0, 0, Dist(), collate_skip_corrupt, workers=2)]
    assert [i for i, _ in one] == [i for i, _ in two]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(one, two))


def test_single_items_stay_decoded_by_pil_for_the_callers_that_read_them_one_by_one(tmp_path: Path) -> None:
    """A task's set-up, `sslbench show` and the test passes index the data set: they get tensors either way."""
    write_imagenet(tmp_path, 4, 2, 40, 0)
    pil, deferred = _pair(tmp_path, "random_resized", {})
    assert torch.equal(deferred[1][0], pil[1][0])
    with pytest.raises(UserError, match="data.decode = 'device' needs a fixed data.image_size"):
        _pair(tmp_path, "center", {}, size=0)


def test_a_batch_no_decoder_can_read_is_empty_and_its_loader_says_so(tmp_path: Path) -> None:
    write_imagenet(tmp_path, 2, 2, 40, 0)
    _, deferred = _pair(tmp_path, "center", {})
    for path, _ in deferred.samples:  # truncated: each header still reads, no decoder gets the pixels
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="unreadable image"), pytest.raises(UserError, match="none of the 2 items"):
        list(epoch_loader(deferred, 2, 0, 0, Dist(), collate_skip_corrupt))
    batch = EncodedBatch([deferred.draw(0, torch.Generator())[0]])
    with pytest.warns(UserWarning):
        _, (images, target) = decode_deferred(torch.tensor([0]), (batch, {"label": torch.tensor([3])}),
                                              torch.device("cpu"))
    assert images.shape[0] == 0 and target["label"].shape == (0,)


def test_decoding_on_the_device_is_refused_for_a_loader_that_decodes_in_its_workers_only() -> None:
    cfg = DataConfig(dataset="voc2007", train_split="trainval", image_size=32, decode="device")
    with pytest.raises(UserError, match="data.decode = 'device': the voc2007 loader decodes in its workers only"):
        build_dataset(cfg, "trainval")


def test_a_pretraining_decodes_its_jpegs_where_it_builds_the_batch(tmp_path: Path, monkeypatch) -> None:
    """data.decode = device end to end (the embedded imagenet layout, RandomResizedCrop as RotNet's recipe): every
    training batch reaches make_batch as a decoded uint8 tensor, the run finishes, and the option is in the recipe
    key (other pixels than PIL's), its default not."""
    import sslbench.data.datasets as datasets
    from sslbench.config import recipe_key
    from sslbench.engine import pretrain
    from tests.conftest import tiny_alexnet, tiny_pretrain

    decoded, real = [], datasets.decode_batch

    def spy(batch, device):  # noqa: ANN001, ANN202
        images, kept = real(batch, device)
        decoded.append(tuple(images.shape))
        return images, kept

    monkeypatch.setattr(datasets, "decode_batch", spy)
    extra = ["schedule.epochs=1", "data.dataset=imagenet", "data.train_split=train", "data.num_images=32",
             "data.train_crop=random_resized"]
    recipe = tiny_pretrain("rotation", tiny_alexnet([*extra, "data.decode=device", "engine.batch_on=device"]),
                           flavour="alexnet")
    out = pretrain(recipe, tmp_path, "cpu", progress=False)
    assert out.steps == len(decoded) and decoded[0][1:] == (3, 32, 32)
    default = tiny_pretrain("rotation", tiny_alexnet([*extra, "data.decode=loader"]), flavour="alexnet")
    assert recipe_key(default) == recipe_key(tiny_pretrain("rotation", tiny_alexnet(extra), flavour="alexnet"))
    assert recipe_key(recipe) != recipe_key(
        tiny_pretrain("rotation", tiny_alexnet([*extra, "engine.batch_on=device"]), flavour="alexnet"))
