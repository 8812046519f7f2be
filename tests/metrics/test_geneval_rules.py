"""GenEval's rules on planted detections: every task's known answer, thresholds, and the overall score."""

from __future__ import annotations

import pytest

from suite.metrics.geneval_rules import (
    Detection,
    GenevalSettings,
    box_iou,
    judge,
    overall_score,
    relative_position,
    select,
)

SETTINGS = GenevalSettings()


def box(x, y, size=20):
    return (x, y, x + size, y + size)


def score(detections, metadata, colours=None):
    found = select(detections, metadata["tag"], SETTINGS)
    colours = colours or {}
    return judge(found, metadata, lambda objects, name: [colours.get(o.box, "red") for o in objects], SETTINGS)[0]


def test_single_object_and_threshold():
    metadata = {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}
    assert score([Detection("cat", 0.31, box(0, 0))], metadata)
    assert not score([Detection("cat", 0.29, box(0, 0))], metadata)  # below 0.3: not seen
    assert not score([Detection("dog", 0.99, box(0, 0))], metadata)


def test_two_objects_need_both():
    metadata = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
    assert score([Detection("cat", 0.9, box(0, 0)), Detection("dog", 0.9, box(50, 0))], metadata)
    assert not score([Detection("cat", 0.9, box(0, 0)), Detection("cat", 0.9, box(50, 0))], metadata)


def test_counting_uses_the_strict_threshold_and_excludes_more():
    metadata = {
        "tag": "counting",
        "include": [{"class": "apple", "count": 3}],
        "exclude": [{"class": "apple", "count": 4}],
    }
    three = [Detection("apple", 0.95, box(30 * i, 0)) for i in range(3)]
    assert score(three, metadata)
    assert not score([*three[:2], Detection("apple", 0.85, box(90, 0))], metadata)  # 0.85 < 0.9: two apples
    assert not score([*three, Detection("apple", 0.95, box(120, 0))], metadata)  # four: excluded


def test_colours_are_checked_on_the_most_confident_objects():
    metadata = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "blue"}]}
    blue, red = Detection("car", 0.9, box(0, 0)), Detection("car", 0.6, box(50, 0))
    assert score([blue, red], metadata, {blue.box: "blue", red.box: "red"})
    assert not score([blue, red], metadata, {blue.box: "red", red.box: "blue"})  # the blue one is less confident


def test_colour_attribution_binds_each_colour_to_its_object():
    metadata = {
        "tag": "color_attr",
        "include": [{"class": "cup", "count": 1, "color": "green"}, {"class": "vase", "count": 1, "color": "pink"}],
    }
    cup, vase = Detection("cup", 0.9, box(0, 0)), Detection("vase", 0.9, box(50, 0))
    assert score([cup, vase], metadata, {cup.box: "green", vase.box: "pink"})
    assert not score([cup, vase], metadata, {cup.box: "pink", vase.box: "green"})  # swapped: a binding error


def test_position_with_the_margin():
    metadata = {
        "tag": "position",
        "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["right of", 0]}],
    }
    dog = Detection("dog", 0.9, box(0, 0))
    assert score([dog, Detection("cat", 0.9, box(60, 0))], metadata)
    assert not score([dog, Detection("cat", 0.9, box(0, 60))], metadata)  # below, not right of
    # the margin is 0.1 x (20 + 20) = 4 px per axis
    assert relative_position(Detection("a", 1, box(3, 0)), dog, 0.1) == set()  # 3 px < 4 px margin: no relation
    assert relative_position(Detection("a", 1, box(60, 60)), dog, 0.1) == {"right of", "below"}  # diagonal: both
    assert not score([Detection("cat", 0.9, box(60, 0))], metadata)  # no dog: no target


def test_box_iou_and_optional_nms():
    assert box_iou(box(0, 0), box(0, 0)) == 1.0 and box_iou(box(0, 0), box(100, 100)) == 0.0
    overlapping = [Detection("cat", 0.95, box(0, 0)), Detection("cat", 0.8, box(1, 1))]
    assert len(select(overlapping, "counting", SETTINGS)["cat"]) == 1  # 0.8 is below the counting threshold
    assert len(select(overlapping, "two_object", SETTINGS)["cat"]) == 2  # no NMS by default
    assert len(select(overlapping, "two_object", GenevalSettings(max_overlap=0.5))["cat"]) == 1


def test_overall_is_the_mean_of_task_accuracies():
    assert overall_score({"single_object": [1, 1, 1, 1], "position": [0, 1]}) == pytest.approx(0.75)
