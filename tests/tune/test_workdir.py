from pathlib import Path

import pytest

from autoside.errors import ConfigError
from autoside.tune.workdir import default_working_dir, explain_upload_error, runtime_env


def test_the_current_folder_ships_only_to_a_running_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_working_dir(None) is None and default_working_dir("local") is None
    assert default_working_dir("auto") == str(tmp_path)
    assert "working_dir" not in runtime_env(None) and "working_dir" not in runtime_env("none")


def test_trial_workers_start_with_one_malloc_arena(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert runtime_env(None)["env_vars"] == {"MALLOC_ARENA_MAX": "1"}  # see autoside/memory/heap.py
    assert runtime_env(str(tmp_path))["env_vars"] == {"MALLOC_ARENA_MAX": "1"}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert runtime_env(None)["env_vars"] == {"MALLOC_ARENA_MAX": "4"}  # the user's choice goes to the workers


def test_the_search_folder_and_what_searches_write_stay_behind(tmp_path: Path) -> None:
    env = runtime_env(str(tmp_path), search_dir=tmp_path / "autoside_runs" / "s1")
    assert env["working_dir"] == str(tmp_path.resolve())
    assert {"autoside_runs/", "mlruns/", "mlflow.db", "/autoside_runs/s1/"} <= set(env["excludes"])
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", env["excludes"])
    assert spec.match_file("autoside_runs/s1/search.json") and spec.match_file("mlruns/0/meta.yaml")
    assert not spec.match_file("data/pets/cat/1.png") and not spec.match_file("trials/recipe.yaml")
    # A search folder outside the working directory is not listed.
    assert len(runtime_env(str(tmp_path / ".."), search_dir="/elsewhere/s1")["excludes"]) == len(env["excludes"]) - 1


def test_bad_working_dirs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--working-dir: .*missing is not a folder"):
        runtime_env(str(tmp_path / "missing"))
    too_big = ValueError("Package size (600.00MiB) exceeds the maximum size of 512.00MiB. To exclude large files, ...")
    clear = explain_upload_error(too_big, "/data/project")
    assert clear is not None and "/data/project is too large" in str(clear) and ".rayignore" in str(clear)
    assert explain_upload_error(ValueError("something else"), "/x") is None
