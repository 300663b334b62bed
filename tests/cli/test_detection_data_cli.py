"""Detection datasets at the command line: listed by ``autoside datasets``; a bad COCO folder stops ``autoside train``
while loading (before any model is built) with one line and a non-zero exit."""

import json
import subprocess
import sys

import yaml

from autoside.testing import tiny_coco_annotations, write_tiny_coco


def test_datasets_lists_the_detection_datasets(capsys):
    from autoside.cli.main import main

    assert main(["datasets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "COCO format" in listed["coco"] and "scikit-image" in listed["pasted_objects"]


def test_bad_coco_folder_is_one_line_and_a_non_zero_exit(tmp_path, tiny_recipe_dict):
    data = tiny_coco_annotations()
    data["annotations"][1]["category_id"] = 99
    write_tiny_coco(tmp_path / "coco", data)
    recipe = {
        **tiny_recipe_dict,
        "dataset": {"name": "coco", "root": str(tmp_path / "coco"), "train_size": 1, "val_size": 1},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    proc = subprocess.run(
        [sys.executable, "-m", "autoside.cli", "train", str(tmp_path / "r.yaml"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("autoside: error: ") and "annotation id 12: unknown category_id 99" in proc.stderr
