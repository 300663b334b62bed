"""What the feature cache saves: the same trials with the backbone run in every trial vs read from the cache.

Trials run one after another in this process (``build_model`` + ``train_model``, as a search's trial does, without
Ray and MLflow, whose overhead ``search_overhead.py`` measures). Two sets of trials:

* ``losa``: ``--trials`` LoSA designs (ranks, stride and pooling vary; every design reads a subset of the 12 block
  outputs, so later designs reuse what earlier ones stored and build only what is new);
* ``mixed``: linear, LoSA and DTL at their defaults (DTL reads the stored blocks before its merge block M and runs
  blocks M+1..L itself);
* with ``--demo``: linear, LoSA and DTL on the demo recipe (``trials/demo.yaml``: Animal-MNIST on the shipped
  pretrained ``vit12_fmnist``), uncached vs cached, and the test accuracy of each with an fp16 vs an fp32 cache.

Each set runs uncached, then cached into a fresh cache folder (the first trial builds, the rest read). Also reported:
the per-epoch training time of one cached trial (as trained, and with the memory tracker off) vs the *ideal*, the
same side network trained on the same features held in RAM as float32 tensors with no memory tracking; the cache's
build time and disk size per 1000 images; and the fp16-cache accuracy against the fp32 one on the same trial.

    python benchmarks/cache_speedup.py --image-size 112 --trials 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace

LOSA_DESIGNS = [
    {"channel_rank": 8, "token_rank": 4, "layer_stride": 3, "pool": "cls"},
    {"channel_rank": 16, "token_rank": 8, "layer_stride": 2, "pool": "mean"},
    {"channel_rank": 32, "token_rank": 4, "layer_stride": 1, "pool": "cls"},
    {"channel_rank": 4, "token_rank": 2, "layer_stride": 3, "pool": "mean"},
    {"channel_rank": 8, "token_rank": 8, "layer_stride": 1, "pool": "mean"},
    {"channel_rank": 16, "token_rank": 2, "layer_stride": 2, "pool": "cls"},
]


def run(recipe, designs, *, cached: bool, cache_dir: str) -> dict:  # noqa: ANN001
    """Trials one after another; returns wall times and what the cache did."""
    import torch

    from autoside.cache import use_cache
    from autoside.data import load_task
    from autoside.sidenets import resolve
    from autoside.train import build_model, train_model

    recipe = replace(recipe, feature_cache=cached, cache_dir=cache_dir)
    task = load_task(recipe.dataset, image_size=recipe.image_size)
    tic, trials = time.perf_counter(), []
    for name, options in designs:
        t0 = time.perf_counter()
        net = build_model(recipe, task.num_classes, resolve(name, **options))
        model, inputs, preprocess, info = use_cache(net, task, recipe, device=torch.device("cpu"))
        result = train_model(model, inputs, recipe, device=torch.device("cpu"), preprocess=preprocess)
        trials.append(
            {
                "family": name,
                "wall_s": round(time.perf_counter() - t0, 2),
                "epoch_s": round(len(task.train) / result.train_images_per_s, 3),
                "test_accuracy": result.test_accuracy,
                "cache": info.status,
                "built": info.built,
                "build_s": round(info.build_seconds, 2),
                "bytes": info.bytes,
            }
        )
    return {"wall_s": round(time.perf_counter() - tic, 2), "trials": trials, "images": _images(task)}


def _images(task) -> int:  # noqa: ANN001
    return len(task.train) + len(task.val) + len(task.test)


def epoch_seconds(recipe, name: str, options: dict, cache_dir: str, *, ideal: bool) -> float:  # noqa: ANN001
    """One epoch of a cached trial with the memory tracker off; ``ideal``: on features already in RAM as float32
    tensors (the side network's work alone: no file reads, no conversions, no memory tracking)."""
    import torch

    from autoside.cache import use_cache
    from autoside.cache.features import FeatureSplit
    from autoside.data import Task, load_task
    from autoside.memory.meter import MemoryMeter
    from autoside.sidenets import resolve
    from autoside.train import build_model, train_model

    recipe = replace(recipe, cache_dir=cache_dir)
    task = load_task(recipe.dataset, image_size=recipe.image_size)
    net = build_model(recipe, task.num_classes, resolve(name, **options))
    model, inputs, preprocess, _ = use_cache(net, task, recipe, device=torch.device("cpu"))
    if ideal:

        def in_ram(split: FeatureSplit) -> FeatureSplit:
            return FeatureSplit({k: torch.as_tensor(v).float() for k, v in split.feats.items()}, split.labels)

        inputs = Task(task.name, task.classes, in_ram(inputs.train), in_ram(inputs.val), in_ram(inputs.test))
    meter = MemoryMeter("cpu", tracking="off")
    result = train_model(model, inputs, recipe, device=torch.device("cpu"), preprocess=preprocess, meter=meter)
    return len(task.train) / result.train_images_per_s


def demo(cache_dir: str) -> dict:
    """The demo recipe's three families: uncached vs cached wall time, and fp16 vs fp32 cache accuracy."""
    from autoside.recipe import load_recipe

    recipe = replace(load_recipe("trials/demo.yaml"), memory_budget=None)
    designs = [("linear", {}), ("losa", {}), ("dtl", {})]
    plain = run(recipe, designs, cached=False, cache_dir=cache_dir)
    fp16 = run(recipe, designs, cached=True, cache_dir=cache_dir)
    fp32 = run(replace(recipe, cache_dtype="float32"), designs, cached=True, cache_dir=cache_dir)
    out = {"uncached": plain, "fp16": fp16, "fp32": fp32, "speedup": round(plain["wall_s"] / fp16["wall_s"], 2)}
    print(
        f"demo: 3 trials uncached {plain['wall_s']:.1f} s, cached fp16 {fp16['wall_s']:.1f} s (x{out['speedup']:.2f})"
    )
    for a, b, c in zip(plain["trials"], fp16["trials"], fp32["trials"], strict=True):
        print(
            f"  {a['family']:6} test acc uncached {a['test_accuracy']:.4f}, fp16 cache {b['test_accuracy']:.4f}, "
            f"fp32 cache {c['test_accuracy']:.4f}; wall {a['wall_s']:.1f} s -> {b['wall_s']:.1f} s ({b['cache']})"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_small_patch16_224")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--eval", type=int, default=50, help="validation and test images each")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--trials", type=int, default=4, help=f"LoSA designs (at most {len(LOSA_DESIGNS)})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--demo", action="store_true", help="also the demo recipe's families, fp16 vs fp32 accuracy")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    from autoside.recipe import recipe_from_dict

    torch.set_num_threads(args.threads)
    recipe = recipe_from_dict(
        {
            "name": "cache_speedup",
            "dataset": {
                "name": "animal_mnist",
                "train_size": args.train,
                "val_size": args.eval,
                "test_size": args.eval,
            },
            "backbone": {"name": args.backbone, "weights": "random"},
            "image_size": args.image_size,
            "epochs": args.epochs,
            "batch_size": 32,
            "eval_batch_size": 50,
            "lr": 0.001,
            "warmup_epochs": 0.5,
            "device": "cpu",
            "threads": args.threads,
        }
    )
    sets = {
        "losa": [("losa", d) for d in LOSA_DESIGNS[: args.trials]],
        "mixed": [("linear", {}), ("losa", {}), ("dtl", {})],
    }
    out = {"args": vars(args), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="autoside-cache-bench-") as tmp:
        for set_name, designs in sets.items():
            cache_dir = f"{tmp}/{set_name}"
            plain = run(recipe, designs, cached=False, cache_dir=cache_dir)
            cached = run(recipe, designs, cached=True, cache_dir=cache_dir)
            out[set_name] = {
                "uncached": plain,
                "cached": cached,
                "speedup": round(plain["wall_s"] / cached["wall_s"], 2),
            }
            print(
                f"{set_name}: {len(designs)} trials uncached {plain['wall_s']:.1f} s, cached {cached['wall_s']:.1f} s "
                f"(x{out[set_name]['speedup']:.2f})"
            )
            for a, b in zip(plain["trials"], cached["trials"], strict=True):
                print(
                    f"  {a['family']:6} uncached {a['wall_s']:6.1f} s  cached {b['wall_s']:6.1f} s ({b['cache']}, "
                    f"{b['built']} built in {b['build_s']:.1f} s)  test acc {a['test_accuracy']:.3f} / "
                    f"{b['test_accuracy']:.3f}"
                )
        # Per-epoch time of a cached trial (a cache hit) vs the ideal, on the first LoSA design.
        name, options = sets["losa"][0]
        hit = run(recipe, [(name, options)], cached=True, cache_dir=f"{tmp}/losa")["trials"][0]
        untracked = epoch_seconds(recipe, name, options, f"{tmp}/losa", ideal=False)
        ideal = epoch_seconds(recipe, name, options, f"{tmp}/losa", ideal=True)
        out["epoch"] = {
            "cached_s": hit["epoch_s"],
            "cached_untracked_s": round(untracked, 3),
            "ideal_s": round(ideal, 3),
            "ratio": round(hit["epoch_s"] / ideal, 3),
            "ratio_untracked": round(untracked / ideal, 3),
        }
        print(
            f"per-epoch: cached trial {hit['epoch_s']:.3f} s (memory tracker off: {untracked:.3f} s) vs ideal "
            f"{ideal:.3f} s (x{hit['epoch_s'] / ideal:.2f}, untracked x{untracked / ideal:.2f})"
        )
        # Build time and size per 1000 images: every LoSA tap (12 block outputs) of every split, fp16.
        built = [t for t in out["losa"]["cached"]["trials"] if t["built"]]
        images = out["losa"]["cached"]["images"]
        from autoside.cache import FeatureStore

        rows = FeatureStore(f"{tmp}/losa").entries()
        taps = len({r["key"]["tap"] for r in rows})
        size = sum(r["bytes"] for r in rows)
        build_s = sum(t["build_s"] for t in built)
        out["build"] = {
            "taps": taps,
            "images": images,
            "build_s_per_1000_images": round(build_s / images * 1000, 2),
            "mib_per_1000_images": round(size / images * 1000 / 2**20, 1),
            "mib_per_1000_images_per_tap": round(size / images * 1000 / 2**20 / taps, 2),
        }
        print(f"build: {out['build']}")
        # fp16 vs fp32 cache: the same trial's test accuracy.
        fp32 = run(replace(recipe, cache_dtype="float32"), [(name, options)], cached=True, cache_dir=f"{tmp}/fp32")
        out["fp16_vs_fp32"] = {"fp16": hit["test_accuracy"], "fp32": fp32["trials"][0]["test_accuracy"]}
        print(
            f"test accuracy: fp16 cache {out['fp16_vs_fp32']['fp16']:.4f}, fp32 cache {out['fp16_vs_fp32']['fp32']:.4f}"
        )
        if args.demo:
            out["demo"] = demo(f"{tmp}/demo")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
