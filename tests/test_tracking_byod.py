"""trackio stores a run offline and gives it back; the own-data scores and baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.sft import byod

TRACK = """
from helpers.tracking import Tracker
t = Tracker("course-test", "run", {"lr": 0.1})
for step in (1, 2):
    t.log({"train/loss": 1.0 / step}, step)
t.finish()
t = Tracker("course-test", "run", {"lr": 0.1})  # the same name replaces the run
t.log({"train/loss": 0.5}, 1)
t.log({"eval/loss": 0.25}, 1)
t.finish()
import json; print(json.dumps(t.history()))
"""


def test_tracker_round_trip_offline(tmp_path):
    env = dict(os.environ, TRACKIO_DIR=str(tmp_path), HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-c", TRACK], env=env, capture_output=True, text=True, check=True
    )
    history = json.loads(out.stdout.strip().splitlines()[-1])
    assert history == {"train/loss": [[1], [0.5]], "eval/loss": [[1], [0.25]]}
    assert list(tmp_path.glob("*.db")), "no local SQLite file"


def test_tracker_refuses_empty_names():
    from helpers.tracking import Tracker

    with pytest.raises(ValueError, match="non-empty"):
        Tracker(" ", "run")


def test_scores_per_field_and_exact():
    refs = ['{"a": "x", "n": 1}', '{"a": "y", "n": 2}']
    preds = ['{"a":"x","n":1}', 'words {"a": "y", "n": 3}']
    result = byod.score(preds, refs)
    assert result["exact_match"] == 0.5 and result["valid_rate"] == 1.0
    assert result["a_accuracy"] == 1.0 and result["n_accuracy"] == 0.5
    assert byod.score(["hi", "yo "], ["hi", "yo"]) == {"exact_match": 1.0}
    with pytest.raises(ValueError, match="1 predictions for 2 references"):
        byod.score(["x"], refs)


def test_majority_baseline_and_split():
    train = [{"prompt": "p", "completion": c} for c in ('{"a": "x"}', '{"a": "x"}', '{"a": "y"}')]
    assert byod.majority_answers(train, 2) == ['{"a": "x"}'] * 2
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert byod.split_record(chat) == ([{"role": "user", "content": "q"}], "a")
    assert byod.majority_answers([chat, chat], 1) == ["a"]
