"""``autoside cache ls|rm`` and the ``--cache-dir`` / ``--no-cache`` flags of ``autoside train``."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from autoside.cache import FeatureStore, use_cache
from autoside.recipe import Recipe
from autoside.sidenets import create_sidenet
from autoside.testing import random_task, tiny_backbone


def test_cache_cli_lists_and_removes(tmp_path, capsys):
    from autoside.cli.main import main

    torch.manual_seed(0)
    net = create_sidenet("linear", tiny_backbone("vit"), num_classes=3)
    recipe = Recipe(cache_dir=str(tmp_path / "cache"), eval_batch_size=6)
    use_cache(net, random_task(32), recipe, device=torch.device("cpu"))  # stores the pooled features of 3 splits
    assert main(["cache", "ls", "--cache-dir", recipe.cache_dir]) == 0
    out = capsys.readouterr().out
    assert "3 entries" in out and "pooled float16" in out
    digest = FeatureStore(recipe.cache_dir).entries()[0]["digest"]
    assert main(["cache", "rm", "--cache-dir", recipe.cache_dir, digest]) == 0  # digests may follow an option
    assert len(FeatureStore(recipe.cache_dir).entries()) == 2
    assert main(["cache", "rm", "--all", digest, "--cache-dir", recipe.cache_dir]) == 2
    assert "give the DIGESTs to delete, or --all (not both)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # other commands still refuse words they do not take
        main(["datasets", "extra"])
    assert "unrecognized arguments: extra" in capsys.readouterr().err
    assert main(["cache", "rm", "nope", "--cache-dir", recipe.cache_dir]) == 2
    assert "no entry 'nope'" in capsys.readouterr().err
    assert main(["cache", "rm", "--all", "--cache-dir", recipe.cache_dir]) == 0
    assert FeatureStore(recipe.cache_dir).entries() == []


def test_files_of_killed_builds_are_listed_and_cleaned(tmp_path, capsys):
    """A build killed mid-write (SIGTERM, SIGKILL) leaves its temporary file: ls shows it, the next build deletes it;
    a live builder's file is left alone."""
    import subprocess
    import sys

    from autoside.cli.main import main

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store = FeatureStore(tmp_path / "cache")
    store.root.mkdir()
    stale = store.root / f".{'a' * 32}.{int(dead.stdout)}.tmp"
    stale.write_bytes(b"x" * 4096)
    live = store.root / f".{'b' * 32}.{os.getpid()}.safetensors.tmp"
    live.write_bytes(b"y")
    assert store.leftovers() == [stale]
    assert main(["cache", "ls", "--cache-dir", str(store.root)]) == 0
    assert "1 file(s) of interrupted builds, 4 KiB" in capsys.readouterr().out
    with store.locked():
        pass
    assert not stale.exists() and live.exists()
    stale.write_bytes(b"x")
    assert main(["cache", "rm", "--all", "--cache-dir", str(store.root)]) == 0
    assert "removed 0 entries and 1 file(s) of interrupted builds" in capsys.readouterr().out


def test_cache_dir_typos_are_noticed(tmp_path, capsys):
    from autoside.cli.main import main

    (tmp_path / "afile").write_text("x")
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "afile")]) == 2
    assert "is a file, not a cache folder" in capsys.readouterr().err
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "missing")]) == 0
    assert "no such folder" in capsys.readouterr().out
    assert main(["cache", "ls", "abc", "--cache-dir", str(tmp_path)]) == 2
    assert "cache ls: takes no DIGEST" in capsys.readouterr().err


@pytest.mark.slow
def test_train_flags_choose_the_cache_folder_or_none(tmp_path, tiny_recipe_dict, capsys):
    from autoside.cli.main import main

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**tiny_recipe_dict, "epochs": 1}))
    cache = tmp_path / "features"
    assert main(["train", str(path), "--json", "--cache-dir", str(cache)]) == 0
    assert json.loads(capsys.readouterr().out)["feature_cache"]["status"] == "built"
    rows = FeatureStore(cache).entries()
    # The pooled features of 3 splits, and the weights record a later trial builds its side network from.
    assert len(rows) == 4 and sum(bool(r["key"].get("record")) for r in rows) == 1
    assert main(["cache", "ls", "--cache-dir", str(cache)]) == 0
    assert "tf_efficientnet_lite0 weights record" in capsys.readouterr().out
    assert main(["train", str(path), "--json", "--cache-dir", str(cache)]) == 0
    cached = json.loads(capsys.readouterr().out)["feature_cache"]
    assert cached["status"] == "hit" and not cached["backbone_loaded"]
    assert main(["train", str(path), "--json", "--no-cache"]) == 0
    assert json.loads(capsys.readouterr().out)["feature_cache"]["reason"].startswith("turned off")
