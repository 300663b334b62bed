from pathlib import Path

import pytest
import yaml

from autoside.errors import ConfigError
from autoside.recipe import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("path", sorted((REPO / "trials").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.epochs >= 1


def test_overrides_apply_before_validation(tmp_path, tiny_recipe_dict):
    recipe = load_recipe(_write(tmp_path, tiny_recipe_dict), ["epochs=3", "dataset.seed=5", "lr=1e-4"])
    assert (recipe.epochs, recipe.dataset.seed, recipe.lr) == (3, 5, 1e-4)


def test_round_trip(tiny_recipe_dict):
    recipe = recipe_from_dict(tiny_recipe_dict)
    assert recipe_from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"datset": {}}, r"datset: unknown key .*allowed: name, dataset"),
        ({"epochs": "ten"}, r"epochs: expected an integer, got 'ten'"),
        ({"epochs": 0}, r"epochs: must be at least 1"),
        ({"memory_budget": "4 gigs"}, r"memory_budget: cannot read '4 gigs' as a size"),
        ({"dataset": {"name": "mnist_of_cats"}}, r"dataset.name: unknown dataset 'mnist_of_cats' \(allowed: "),
        ({"dataset": {"name": "digits", "shuffle": True}}, r"dataset.shuffle: unknown key in dataset"),
        ({"backbone": {"name": "x", "weights": "imagenet"}}, r"backbone.weights: 'imagenet' is not one of"),
        ({"lr": -1}, r"lr: must be positive"),
        ({"device": "tpu"}, r"device: 'tpu' is not one of"),
        ({"warmup_epochs": 5}, r"warmup_epochs: must be between 0 and epochs"),
    ],
)
def test_recipe_errors_name_the_field(tmp_path, tiny_recipe_dict, change, message):
    path = _write(tmp_path, {**tiny_recipe_dict, **change})
    with pytest.raises(ConfigError, match=message) as info:
        load_recipe(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_malformed_yaml_reports_line(tmp_path):
    path = _write(tmp_path, "name: x\nepochs: [1, 2\nlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:\d+:\d+: malformed YAML"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="trial recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
