"""`scene_recall`: which of a scene's objects a caption names, overall and by kinds of object in the scene."""

import json
from pathlib import Path

import pytest

from training.captioner.coco import CaptionedImage
from training.captioner.evaluate import scene_recall


def _scene(image_id: int, background: str, *names: str) -> dict:
    objects = [{"name": n, "count": 1, "colour": None, "picture": f"stamp:{n}"} for n in names]
    return {"id": image_id, "file_name": f"images/test/{image_id:06d}.jpg", "width": 8, "height": 8,
            "nui": {"kind": "scene", "background": background, "relation": None, "objects": objects}}


def test_recall_counts_names_singular_or_plural_and_splits_by_kinds(tmp_path: Path) -> None:
    coco = tmp_path / "captions_test.json"
    images = [_scene(1, "grass", "rat"), _scene(2, "plain black", "ambulance", "wilted flower"),
              _scene(3, "gravel", "top hat", "rabbit"), {"id": 4, "file_name": "images/test/000004.jpg"}]
    coco.write_text(json.dumps({"images": images, "annotations": []}))
    items = [CaptionedImage(i, tmp_path / f"{i}.jpg", ("ref",)) for i in (1, 2, 3, 4)]
    hyps = ["two rats on grass", "a rat to the right of a wilted flower on a black background",
            "a top hat above a rabbit on gravel", "anything"]
    r = scene_recall(coco, items, hyps)
    assert r is not None and r["scenes"] == 3.0  # image 4 has no scene metadata
    assert r["object_recall"] == pytest.approx(4 / 5)
    assert r["object_recall_1_kinds"] == 1.0 and r["object_recall_2_kinds"] == pytest.approx(3 / 4)
    assert r["all_objects_named"] == pytest.approx(2 / 3)
    assert r["background_named"] == pytest.approx(3 / 3)
