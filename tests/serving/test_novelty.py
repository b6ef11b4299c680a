"""Tests for serving/novelty.py: the scores by hand, the threshold, AUROC, and what a model folder may hold."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from serving.novelty import FEATURES_FILE, NoveltyCheck, NoveltyError, Verdict, auroc, knn_distances, threshold_for


def test_the_score_is_the_cosine_distance_to_the_kth_nearest_training_image():
    bank = np.array([[1, 0], [0, 1], [math.sqrt(0.5), math.sqrt(0.5)]], dtype=np.float32)
    query = np.array([[3.0, 0.0]])  # length doesn't matter: along the first axis
    # cosine similarities 1, 0 and 0.7071: distances 0, 1 and 0.2929, so the 1st, 2nd and 3rd nearest are
    assert knn_distances(bank, query, 1) == pytest.approx([0.0], abs=1e-6)
    assert knn_distances(bank, query, 2) == pytest.approx([1 - math.sqrt(0.5)], abs=1e-6)
    assert knn_distances(bank, query, 3) == pytest.approx([1.0], abs=1e-6)
    assert knn_distances(bank, query, 9) == pytest.approx([1.0], abs=1e-6)  # k past the bank: its farthest


def test_the_threshold_lets_the_asked_share_pass():
    scores = np.arange(1, 21) / 20  # 0.05 .. 1.00
    assert threshold_for(scores, 0.95) == 0.95  # 19 of 20 at or under it
    assert np.mean(scores <= threshold_for(scores, 0.95)) == 0.95
    assert threshold_for(scores, 0.5) == 0.5
    assert threshold_for(scores, 1.0) == 1.0
    assert threshold_for(np.array([0.3]), 0.95) == 0.3


def test_auroc_by_hand():
    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    # pairs (in, other): (0.1, 0.15) yes, (0.1, 0.3) yes, (0.2, 0.15) no, (0.2, 0.3) yes: 3 of 4
    assert auroc(np.array([0.1, 0.2]), np.array([0.15, 0.3])) == 0.75
    assert auroc(np.array([0.2]), np.array([0.2])) == 0.5  # a tie counts half


def test_a_verdict_is_in_domain_at_or_under_the_threshold():
    assert Verdict({"a": 1.0}, 0.2, 0.2).in_domain is True
    assert Verdict({"a": 1.0}, 0.21, 0.2).in_domain is False
    assert Verdict({"a": 0.3, "b": 0.7}).in_domain is None
    assert Verdict({"a": 0.3, "b": 0.7}).label == "b"


def _folder(tmp_path, bank, **section):
    np.save(tmp_path / FEATURES_FILE, bank)
    config = {"novelty": {"method": "knn_cosine", "k": 2, "threshold": 0.5, **section}}
    return tmp_path, config


def test_a_folder_without_a_novelty_section_has_no_check(tmp_path):
    assert NoveltyCheck.from_folder(tmp_path, {"labels": ["a"]}) is None


def test_the_check_scores_raw_features_against_the_stored_ones(tmp_path):
    folder, config = _folder(tmp_path, np.eye(3, dtype=np.float16))
    check = NoveltyCheck.from_folder(folder, config)
    assert (check.k, check.threshold, check.dim) == (2, 0.5, 3)
    verdicts = check.verdicts([{"a": 1.0}, {"a": 1.0}], np.array([[5.0, 0, 0], [1.0, 1.0, 1.0]]))
    assert verdicts[0].novelty == pytest.approx(1.0)  # its 2nd nearest is orthogonal
    assert verdicts[1].novelty == pytest.approx(1 - 1 / math.sqrt(3), abs=1e-6)
    assert [v.in_domain for v in verdicts] == [False, True]


@pytest.mark.parametrize("bank, section, says", [
    (np.eye(3, dtype=np.float16), {"method": "mahalanobis"}, "method 'mahalanobis' is not 'knn_cosine'"),
    (np.eye(3, dtype=np.float16), {"k": 0}, "k=0"),
    (np.eye(3, dtype=np.float16), {"threshold": "nan"}, "threshold=nan"),
    (np.eye(3, dtype=np.int64), {}, "int64 features"),
    (np.zeros((2, 2, 2), dtype=np.float16), {}, "of shape (2, 2, 2)"),
])
def test_unusable_novelty_files_are_refused_with_the_fix(tmp_path, bank, section, says):
    folder, config = _folder(tmp_path, bank, **section)
    with pytest.raises(NoveltyError) as caught:
        NoveltyCheck.from_folder(folder, config)
    assert says in str(caught.value) and ("retrain" in str(caught.value))


def test_a_pickled_features_file_is_never_unpickled(tmp_path):
    """The folder may come from anyone's Hub repo: np.load with a pickle would run its code."""
    np.save(tmp_path / FEATURES_FILE, np.array([{"not": "numbers"}], dtype=object), allow_pickle=True)
    with pytest.raises(NoveltyError, match=r"can.t be used \(Array can.t be memory-mapped: Python objects in dtype"):
        NoveltyCheck.from_folder(tmp_path, {"novelty": {"method": "knn_cosine", "k": 1, "threshold": 0.5}})


def test_a_missing_features_file_is_named(tmp_path):
    config = json.loads('{"novelty": {"method": "knn_cosine", "k": 1, "threshold": 0.5}}')
    with pytest.raises(NoveltyError, match=rf"{FEATURES_FILE} can't be used .*No such file"):
        NoveltyCheck.from_folder(tmp_path, config)


def test_a_folder_whose_check_is_unusable_still_serves_and_warns(tiny_model, tmp_path, caplog):
    """The classifier is whole without it: a folder copied without its features file, or with another model's."""
    from serving.model import Classifier

    for name in ("model.onnx", "config.json"):
        shutil.copyfile(tiny_model.folder / name, tmp_path / name)
    example = sorted((tiny_model.folder / "examples").glob("*"))[0]
    clf = Classifier.from_folder(tmp_path)
    assert clf.novelty is None and clf.judge(example).in_domain is None
    assert "serving without the 'none of these' check" in caplog.text and "No such file" in caplog.text
    np.save(tmp_path / FEATURES_FILE, np.eye(3, 7, dtype=np.float16))  # 7 values, where the model has 512
    caplog.clear()
    assert Classifier.from_folder(tmp_path).novelty is None
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"serving without the 'none of these' check: {tmp_path / FEATURES_FILE} holds features of 7 values, but "
        "model.onnx outputs 512; the two come from different models (retrain, or delete config.json's `novelty` "
        "section)"]
    shutil.copyfile(tiny_model.folder / FEATURES_FILE, tmp_path / FEATURES_FILE)
    assert Classifier.from_folder(tmp_path).judge(example).in_domain is not None
