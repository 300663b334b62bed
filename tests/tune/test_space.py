"""Search spaces: shipped files load, define-by-run walk and replay, one clear error per kind of mistake."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autoside.cli.main import main
from autoside.errors import ConfigError
from autoside.recipe import recipe_from_dict
from autoside.sidenets import list_families
from autoside.tune.space import load_space, space_from_dict

SPACES = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))
assert SPACES, "no shipped search spaces found"
TEST_SPACE = {
    "name": "t",
    "families": {"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}}, "full": {}},
}


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_spaces_load_and_replay(path: Path) -> None:
    space = load_space(path)
    assert space.family_names and set(space.family_names) <= set(list_families())
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        config = space.suggest(trial)
        assert trial.params["family"] == config.family
        assert all(k == "family" or k.startswith(f"{config.family}/") for k in trial.params)
        assert space.config_from_params(trial.params) == config  # replay through the same function
        study.tell(trial, [0.5, 1.0])
    assert space_from_dict(space.to_dict()) == space


def test_conditional_names_nest_with_slash() -> None:
    space = space_from_dict(TEST_SPACE)
    config = space.suggest(optuna.trial.FixedTrial({"family": "linear", "linear/dropout": 0.3}))
    assert config.family == "linear" and config.dropout == pytest.approx(0.3)
    assert space.config_from_params({"family": "full"}).family == "full"


def test_stepped_float_is_put_on_its_grid() -> None:
    space = space_from_dict(TEST_SPACE)
    for sampled, grid in ((0.19999999999999996, 0.2), (6.938893903907228e-18, 0.0), (0.30000000000000004, 0.3)):
        config = space.config_from_params({"family": "linear", "linear/dropout": sampled})
        assert config.dropout == grid  # exactly: one configuration, and its file and the console show the grid value
        params = {"family": "linear", "linear/dropout": sampled}
        assert space.on_grid(params) == {"family": "linear", "linear/dropout": grid}  # a repeat's console line


def test_fixed_knob_is_not_searched() -> None:
    space = space_from_dict({"families": {"linear": {"dropout": 0.25}}})
    trial = optuna.trial.FixedTrial({"family": "linear"})
    assert space.suggest(trial).dropout == 0.25


def test_list_knob_searches_each_element() -> None:
    """CST's pruning ratio per stage: one Optuna parameter per searched element, fixed elements kept, replayed and
    written back the same; a bad element is named by its index; the length is checked against the backbone."""
    from autoside.backbones import create_backbone
    from autoside.sidenets import create_sidenet

    ratio = {"type": "float", "low": 0.0, "high": 0.75, "step": 0.25}
    space = space_from_dict({"families": {"cst": {"stage_prune_ratios": [0.25, ratio, {"choices": [0.0, 0.5]}, 0.5]}}})
    assert space.size() == 4 * 2
    params = {"family": "cst", "cst/stage_prune_ratios/1": 0.75, "cst/stage_prune_ratios/2": 0.5}
    assert space.config_from_params(params).stage_prune_ratios == (0.25, 0.75, 0.5, 0.5)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    config = space.suggest(trial)
    assert set(trial.params) == {"family", "cst/stage_prune_ratios/1", "cst/stage_prune_ratios/2"}
    assert space.config_from_params(trial.params) == config
    assert space_from_dict(space.to_dict()) == space
    assert "stage_prune_ratios[1].type: expected one of" in _error(
        {"families": {"cst": {"stage_prune_ratios": [0.5, {"type": "flot"}, 0.5, 0.5]}}}
    )
    assert "stage_prune_ratios[1]: must be in [0, 1), got 1.0" in _error(
        {"families": {"cst": {"stage_prune_ratios": [0.5, {**ratio, "high": 1.0}, 0.5, 0.5]}}}
    )
    lite0 = create_backbone("tf_efficientnet_lite0", weights="random", image_size=32)  # 7 stages
    with pytest.raises(ConfigError, match=r"stage_prune_ratios: must list one ratio per stage \(7 for"):
        create_sidenet(space.config_from_params(params), lite0, 3)


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        space_from_dict(data, source="s.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("families", "expected"),
    [
        ({"lora": {}}, "families.lora: unknown family 'lora' (allowed:"),
        ({"linear": {"width": {"type": "int", "low": 1, "high": 2}}}, "family 'linear' has no parameter 'width'"),
        ({"linear": {"dropout": {"type": "float", "low": 0.5, "high": 0.1}}}, "low (0.5) is greater than high (0.1)"),
        ({"linear": {"dropout": {"type": "categorical", "choices": []}}}, "choices: expected a non-empty list"),
        ({"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "log": True}}}, "log scale needs low > 0"),
        (
            {"linear": {"dropout": {"type": "float", "low": 0.1, "high": 0.5, "log": True, "step": 0.1}}},
            "log and step cannot be combined",
        ),
        ({"linear": {"dropout": {"type": "normal", "low": 0, "high": 1}}}, "type: expected one of float, int"),
        ({"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "hi": 1}}}, "dropout.hi: unknown key"),
        ({"linear": {"dropout": {"type": "float", "low": "a", "high": 0.5}}}, "low: expected a number"),
        ({"linear": {"dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": -1}}}, "step: expected a positive"),
        ({"linear": "dropout"}, "families.linear: expected a mapping of knobs"),
    ],
)
def test_one_clear_error_per_mistake(families: dict, expected: str) -> None:
    message = _error({"families": families})
    assert message.startswith("s.yaml: ") and expected in message
    assert "\n" not in message


def test_family_rejects_a_corner_of_the_range() -> None:
    message = _error({"families": {"dtl": {"kernel_size": {"type": "categorical", "choices": [0, -1]}}}})
    assert "kernel_size" in message and "must be 0 (DTL) or a kernel size" in message and "kernel_size=-1" in message
    message = _error({"families": {"linear": {"dropout": {"type": "float", "low": 0.0, "high": 1.5}}}})
    assert "dropout" in message and "must be in [0, 1), got 1.5" in message  # refused before any trial starts


def test_unknown_top_level_key_and_missing_families() -> None:
    assert "famlies: unknown key" in _error({"famlies": {"linear": {}}, "families": {"linear": {}}})
    assert "families: expected a mapping" in _error({"name": "x"})


def test_every_problem_is_listed() -> None:
    message = _error({"families": {"lora": {}, "linear": {"dropout": {"type": "float", "low": 1, "high": 0}}}})
    assert message.startswith("s.yaml: 2 problems:")
    assert "unknown family 'lora'" in message and "low (1) is greater than high (0)" in message


def test_space_checked_against_the_backbone() -> None:
    from autoside.backbones import create_backbone

    spec = create_backbone("vit_tiny_patch16_224", weights="random", image_size=32).spec
    space = space_from_dict({"families": {"dtl": {"rank": {"type": "int", "low": 1, "high": 4096}}}})
    with pytest.raises(ConfigError, match="rank"):
        space.check_backbone(spec)


def test_malformed_yaml_reports_the_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("families:\n  linear:\n    dropout: {type: float, low: 0.0\n  full: {}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: malformed YAML"):
        load_space(bad)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\n")
    assert main(["search", str(bad), str(recipe), "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoside: error:") and "malformed YAML" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"epochs": 0}, "epochs: must be at least 1"),
        ({"epocs": 3}, "epocs: unknown key"),
        ({"memory_budget": "4 parsecs"}, "memory_budget: cannot read"),
        ({"dataset": {"name": "imagenet-21k"}}, "dataset.name: unknown dataset"),
        ({"lr": -1.0}, "lr: must be positive"),
        ({"device": "tpu"}, "device: 'tpu' is not one of"),
    ],
)
def test_recipe_errors(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        recipe_from_dict(data)


def test_recipe_file_mistakes_and_override_mistakes_are_named(tmp_path: Path) -> None:
    from autoside.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 2\nlr: 0.1\nepochs: 3\n")
    with pytest.raises(ConfigError, match="r.yaml:3:1: malformed YAML \\(key 'epochs' appears twice"):
        load_recipe(recipe)  # not silently the last one
    recipe.write_text("  \n")
    with pytest.raises(ConfigError, match="r.yaml: is empty; a trial recipe is a YAML mapping"):
        load_recipe(recipe)
    with pytest.raises(ConfigError, match="is a folder; give the trial recipe file"):
        load_recipe(tmp_path)
    recipe.write_text("epochs: 2\n")
    # A typo on the command line is the command line's, not the file's.
    with pytest.raises(ConfigError, match="^--set epochz: unknown key"):
        load_recipe(recipe, ["epochz=3"])
    with pytest.raises(ConfigError, match="^--set epochs: expected an integer, got 'abc'"):
        load_recipe(recipe, ["epochs=abc"])
    with pytest.raises(ConfigError, match="the key before '=' is empty"):
        load_recipe(recipe, ["=3"])


def test_cli_reports_recipe_error_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    space = tmp_path / "s.yaml"
    space.write_text("families:\n  linear: {}\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 0\n")
    assert main(["search", str(space), str(recipe), "--root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "autoside: error: " + f"{recipe}: epochs: must be at least 1, got 0"
    assert not (tmp_path / "runs").exists()
