"""Caption data: scenes and their captions, the held-out split, the builder's COCO output, the COCO importer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.captioner import coco, data
from training.captioner.scenes import Group, ScenePlanner, SceneSpec, combo_split, draw_scene, scene_captions
from training.captioner.sources import Background, Picture, backgrounds, colourise, load_emoji, load_stamps, scene_name

WHITE = Background("plain white", "on", "a white background", None, (255, 255, 255))


def _square(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGBA", (20, 20), (*colour, 255))


def test_scene_names_come_from_short_captions() -> None:
    assert scene_name("A badger.") == "badger"
    assert scene_name("An ostrich.") == "ostrich"
    assert scene_name("A US 1 cent piece ($.01) called a penny.") is None
    assert scene_name("Roast turkey is traditionally eaten on Thanksgiving in the United States.") is None


def test_real_sources_load_with_captions() -> None:
    stamps, emoji = load_stamps(), load_emoji()
    assert len(stamps) > 700 and len(emoji) > 1000
    badger = next(p for p in stamps if p.key == "stamp:animals/mammals/badger")
    assert badger.caption == "A badger." and badger.name == "badger"
    cat = next(p for p in emoji if p.key == "emoji:1F431")
    assert cat.name == "cat face" and not any("skin tone" in p.caption for p in emoji)
    img = cat.load(Path("/nonexistent"))
    assert img.mode == "RGBA" and img.getchannel("A").getextrema()[1] == 255


def test_group_phrases_count_and_colour() -> None:
    assert Group("k", "cat", 1, None).phrase() == "a cat"
    assert Group("k", "umbrella", 1, None).phrase() == "an umbrella"
    assert Group("k", "bus", 2, "red").phrase() == "two red buses"
    assert Group("k", "mouse", 3, None).phrase() == "three mice"
    assert Group("k", "bus", 1, "orange").phrase() == "an orange bus"


def test_captions_name_everything_in_both_orders() -> None:
    spec = SceneSpec("grass", (Group("a", "cat", 2, None), Group("b", "bus", 1, "red")), "left of", seed=0)
    grass = next(b for b in backgrounds() if b.name == "grass")
    caps = scene_captions(spec, grass, np.random.default_rng(0))
    assert len(caps) == len(set(caps)) == 5
    assert caps[0] == "two cats to the left of a red bus on grass"
    assert caps[1] == "a red bus to the right of two cats on grass"
    assert all("cats" in c and "bus" in c for c in caps)


def test_drawn_relation_and_colour_are_true() -> None:
    pics = {"r": _square((200, 200, 200)), "b": _square((200, 200, 200))}
    for relation in ("left of", "right of", "above", "below"):
        spec = SceneSpec(WHITE.name, (Group("r", "box", 2, "red"), Group("b", "box", 1, "blue")), relation, seed=3)
        img = np.asarray(draw_scene(spec, WHITE, pics.__getitem__, 96)).astype(int)
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        red = np.argwhere((r > g + 60) & (r > b + 60))
        blue = np.argwhere((b > r + 60) & (b > g + 40))
        assert len(red) and len(blue)
        axis = 1 if relation in ("left of", "right of") else 0  # columns or rows
        if relation in ("left of", "above"):
            assert red[:, axis].max() < blue[:, axis].min(), relation
        else:
            assert red[:, axis].min() > blue[:, axis].max(), relation


def test_colourise_keeps_alpha_and_hue() -> None:
    src = Image.new("RGBA", (10, 10), (30, 200, 90, 255))
    src.putpixel((0, 0), (0, 0, 0, 0))
    out = np.asarray(colourise(src, "blue"))
    assert out[0, 0, 3] == 0 and out[5, 5, 3] == 255
    r, g, b = out[5, 5, :3].astype(int)
    assert b > r and b > g


def test_held_out_split_never_shows_training_combinations() -> None:
    names = [f"object{i}" for i in range(30)]
    bgs = backgrounds()
    planner = ScenePlanner(names, {n: (n,) for n in names}, bgs, heldout_fraction=0.15)
    seen_pairs, seen_bg = set(), set()
    for seed in range(300):
        s = planner.draw("train", seed)
        seen_bg.update((g.name, s.background) for g in s.groups)
        if len(s.groups) == 2:
            seen_pairs.add(frozenset(g.name for g in s.groups))
    test_objects = set()
    for seed in range(100):
        s = planner.draw("test", seed)
        assert all((g.name, s.background) not in seen_bg for g in s.groups)
        assert all(combo_split("background", g.name, s.background, 0.15) == "test" for g in s.groups)
        if len(s.groups) == 2:
            assert frozenset(g.name for g in s.groups) not in seen_pairs
            assert combo_split("pair", s.groups[0].name, s.groups[1].name, 0.15) == "test"
        test_objects.update(g.name for g in s.groups)
    # objects of held-out scenes are still seen in training, just not in these combinations
    assert test_objects <= {n for n, _ in seen_bg}
    assert combo_split("pair", "a", "b", 0.15) == combo_split("pair", "b", "a", 0.15)


def test_builder_writes_coco_captions_and_images(tmp_path: Path) -> None:
    out = tmp_path / "captions"
    summary = data.build(out, train_scenes=6, val_scenes=3, test_scenes=3, scene_objects=20, heldout_fraction=0.2,
                         plain_copies=0, image_size_px=48, seed=5, workers=1, progress=False)
    assert summary["splits"]["train"] == {"images": 6, "captions": 30}
    for split in ("train", "val", "test"):
        items = coco.read_coco(out / f"captions_{split}.json")
        assert len(items) == summary["splits"][split]["images"]
        for it in items:
            assert len(it.captions) == 5 and Image.open(it.path).size == (48, 48)
    raw = json.loads((out / "captions_test.json").read_text())
    assert {"images", "annotations", "info"} <= set(raw) and raw["images"][0]["nui"]["kind"] == "scene"
    again = tmp_path / "again"
    data.build(again, train_scenes=6, val_scenes=3, test_scenes=3, scene_objects=20, heldout_fraction=0.2,
               plain_copies=0, image_size_px=48, seed=5, workers=1, progress=False)
    assert (again / "captions_val.json").read_text() == (out / "captions_val.json").read_text()
    assert (again / "images/val/000001.jpg").read_bytes() == (out / "images/val/000001.jpg").read_bytes()


def test_plain_pictures_keep_their_own_caption() -> None:
    from training.captioner.scenes import plain_captions

    p = Picture("stamp:x", "A badger.", "badger", "stamp", "x.png")
    assert plain_captions(p) == ("A badger.", "a badger on a white background", "a picture of a badger")


def test_coco_importer_checks_images_and_captions(tmp_path: Path) -> None:
    images = tmp_path / "train2017"
    images.mkdir()
    for i in (1, 2):
        Image.new("RGB", (40, 30), (i * 60, 10, 10)).save(images / f"{i:012d}.jpg")
    listed = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 40, "height": 30} for i in (1, 2, 3)]
    ann = {"info": {}, "images": listed,
           "annotations": [{"id": 1, "image_id": 1, "caption": "A man riding a horse."},
                           {"id": 2, "image_id": 1, "caption": "  ...  "},
                           {"id": 3, "image_id": 2, "caption": "Two dogs."},
                           {"id": 4, "image_id": 3, "caption": "An image that is missing."}]}
    src = tmp_path / "captions_train2017.json"
    src.write_text(json.dumps(ann))
    out = tmp_path / "coco"
    assert coco.main(["--annotations", str(src), "--images", str(images), "--out", str(out), "--split", "train"]) == 0
    items = coco.read_coco(out / "captions_train.json")
    assert [(it.image_id, it.captions) for it in items] == [(1, ("A man riding a horse.",)), (2, ("Two dogs.",))]
    assert all(it.path.is_file() for it in items)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="not a COCO captions file"):
        coco.read_coco(bad)
