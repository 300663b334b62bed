"""The feature cache: exact where it applies, never reads a partial entry, shared by concurrent builders."""

from __future__ import annotations

import resource
import signal
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from autoside.cache import FeatureStore, use_cache
from autoside.cache.features import bypass_reason
from autoside.data import Task
from autoside.recipe import Recipe
from autoside.sidenets import create_sidenet
from autoside.testing import random_task, tiny_backbone
from autoside.train import train_model

CPU = torch.device("cpu")


def _task() -> Task:
    return random_task(32)


def _net(family: str, **kwargs):  # noqa: ANN202
    torch.manual_seed(0)
    return create_sidenet(family, tiny_backbone("vit"), num_classes=3, **kwargs)


def _recipe(tmp_path, **changes) -> Recipe:  # noqa: ANN001
    base = Recipe(epochs=2, batch_size=4, eval_batch_size=5, warmup_epochs=0.5, amp=False, lr=0.01)
    return replace(base, cache_dir=str(tmp_path / "cache"), **changes)


def _train(net, task, recipe):  # noqa: ANN001, ANN202
    model, inputs, preprocess, info = use_cache(net, task, recipe, device=CPU)
    return train_model(model, inputs, recipe, device=CPU, preprocess=preprocess), info


@pytest.mark.parametrize("family", ["linear", "losa", "dtl"])
def test_fp32_cache_gives_the_uncached_losses(tmp_path, family):
    recipe = _recipe(tmp_path, cache_dtype="float32")
    task = _task()
    plain, info = _train(_net(family, dropout=0.1), task, replace(recipe, feature_cache=False))
    assert info.status == "bypassed"
    built, info = _train(_net(family, dropout=0.1), task, recipe)
    assert info.status == "built" and info.built > 0 and info.hits == 0
    hit, info = _train(_net(family, dropout=0.1), task, recipe)
    assert info.status == "hit" and info.built == 0 and info.hits > 0
    for cached in (built, hit):
        for a, b in zip(plain.history, cached.history, strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
            assert a["val_accuracy"] == b["val_accuracy"]
        assert cached.test_accuracy == plain.test_accuracy
    # The frozen part a cached trial skips (all of the backbone, or DTL's blocks before M) is not in its measured peak.
    net = _net(family)
    side = {id(p) for m in net.side_modules().values() for p in m.parameters()}
    skipped = sum(p.numel() * p.element_size() for p in net.backbone.parameters() if id(p) not in side)
    assert skipped > 0 and hit.peak_memory_bytes <= plain.peak_memory_bytes - skipped


def test_fp16_is_the_default_and_half_the_size(tmp_path):
    task = _task()
    sizes = {}
    for dtype in ("float16", "float32"):
        recipe = _recipe(tmp_path, cache_dtype=dtype) if dtype == "float32" else _recipe(tmp_path)
        _, info = _train(_net("linear"), task, recipe)
        sizes[dtype] = info.bytes
    assert Recipe().cache_dtype == "float16" and sizes["float16"] * 2 == sizes["float32"]


def test_writing_families_and_augmentation_bypass_the_cache_with_a_reason(tmp_path):
    _, _, _, info = use_cache(_net("full"), _task(), _recipe(tmp_path), device=CPU)
    assert info.status == "bypassed" and info.reason == "'full' trains its backbone"
    _, _, _, info = use_cache(_net("linear"), _task(), _recipe(tmp_path, augment=True), device=CPU)
    assert info.status == "bypassed" and "augmentation" in info.reason


def test_unusable_cache_folder_falls_back_to_computing(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    recipe = replace(_recipe(tmp_path), cache_dir=str(tmp_path / "file" / "cache"))
    result, info = _train(_net("linear"), _task(), recipe)
    assert info.status == "bypassed" and "cannot be used" in info.reason
    assert len(result.history) == 2


def test_a_full_disk_falls_back_to_computing_and_leaves_nothing_half_written(tmp_path, caplog):
    recipe, task = _recipe(tmp_path), _task()
    # A file-size limit makes every write past 200 bytes fail as on a full disk (EFBIG instead of ENOSPC).
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, limit[1]))
    try:
        model, inputs, preprocess, info = use_cache(_net("linear"), task, recipe, device=CPU)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    assert info.status == "bypassed" and "writing failed (File too large)" in info.reason
    assert "computes its features itself" in caplog.text  # a warning, not only the trial's record
    result = train_model(model, inputs, recipe, device=CPU, preprocess=preprocess)
    assert len(result.history) == 2
    assert FeatureStore(recipe.cache_dir).entries() == [] and not list((tmp_path / "cache").glob(".*.tmp"))


def test_half_written_and_corrupt_entries_are_rebuilt_never_read(tmp_path):
    recipe, task = _recipe(tmp_path), _task()
    _train(_net("linear"), task, recipe)
    store = FeatureStore(recipe.cache_dir)
    rows = store.entries()
    assert len(rows) == 3 and all(not r.get("incomplete") for r in rows)  # train, val, test of one tap
    # A process killed between writing the array and its metadata leaves an array alone: not an entry.
    (store.root / f"{rows[0]['digest']}.json").unlink()
    # A flipped byte in another entry: the checksum catches it (checked once per process, so forget that it was).
    from autoside.cache import store as store_module

    store_module._VERIFIED.clear()
    data = store.root / f"{rows[1]['digest']}.npy"
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert any(r.get("incomplete") for r in store.entries())
    _, info = _train(_net("linear"), task, recipe)
    assert info.status == "built" and info.built == 2 and info.hits == 1
    rows = store.entries()
    assert len(rows) == 3 and all(not r.get("incomplete") for r in rows)
    assert np.isfinite(np.load(data, mmap_mode="r")).all()


def test_two_builders_at_once_compute_each_entry_once(tmp_path):
    recipe, task = _recipe(tmp_path), _task()
    infos = []
    nets = [_net("losa"), _net("losa")]
    threads = [
        threading.Thread(target=lambda net=net: infos.append(use_cache(net, task, recipe, device=CPU)[3]))
        for net in nets
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Each (split, tap) was computed by one of them (the 12 block outputs LoSA reads, plus the embedded tokens and the
    # pooled features of the same pass); the other waited on the lock and read the 12 it needs.
    assert sum(i.built for i in infos) == len(FeatureStore(recipe.cache_dir).entries()) == 3 * 14
    assert sum(i.hits for i in infos) == 3 * 12


@pytest.mark.parametrize(
    ("layout", "options"),
    [
        ("vit", {}),
        ("vit", {"merge_from": 1, "kernel_size": 3}),
        ("vit", {"merge_from": 12, "first_tap": 3}),
        ("swin", {}),  # M = 13, inside the third stage
        ("swin", {"merge_from": 2, "kernel_size": 3}),  # M ends the first stage: the second starts with a downsample
        ("swin", {"merge_from": 3, "first_tap": 2}),  # M is the first block of a stage
        ("swin", {"merge_from": 24}),
    ],
)
def test_dtl_on_stored_features_gives_the_uncached_logits(layout, options):
    torch.manual_seed(0)
    net = create_sidenet("dtl", tiny_backbone(layout), num_classes=3, **options).train()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats = net.backbone.taps(x, net.feature_taps())
    assert net.cacheable and net.merge_from
    torch.testing.assert_close(net.side(feats), net(x), rtol=1e-5, atol=1e-6)


def test_dtl_with_stochastic_depth_is_cached_only_where_exact():
    net = _net("dtl", drop_path=0.1, merge_from=7)
    assert not net.cacheable and net.feature_taps() is None
    assert "stochastic depth" in net.uncacheable_reason() and "block 8 differ every step" in net.uncacheable_reason()
    reason = bypass_reason(net, Recipe())
    assert reason == net.uncacheable_reason()
    # Merging from block 1: only block 1 (drop rate 0) is stored; the random blocks run in the side part, drawing the
    # same masks in the same order as the uncached forward.
    net = _net("dtl", drop_path=0.1, merge_from=1).train()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats = net.backbone.taps(x, net.feature_taps())
    torch.manual_seed(1)
    uncached = net(x)
    torch.manual_seed(1)
    torch.testing.assert_close(net.side(feats), uncached, rtol=1e-5, atol=1e-6)


def test_swin_dtl_trains_the_same_on_stored_features(tmp_path):
    recipe, task = _recipe(tmp_path, cache_dtype="float32"), _task()

    def net():  # noqa: ANN202
        torch.manual_seed(0)
        return create_sidenet("dtl", tiny_backbone("swin"), num_classes=3, merge_from=3, kernel_size=3)

    plain, _ = _train(net(), task, replace(recipe, feature_cache=False))
    cached, info = _train(net(), task, recipe)
    assert info.status == "built" and set(info.entries) == {"block_in:2", "block:2"}
    for a, b in zip(plain.history, cached.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
    assert cached.test_accuracy == plain.test_accuracy
