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


class _FakeWandb:
    """A stand-in for ``wandb`` with the signatures of its documented API (docs.wandb.ai,
    ``wandb.init`` and ``Run.log``/``Run.finish``): a call the real module would reject
    raises TypeError here too. Records every call."""

    def __init__(self):
        self.calls = []
        fake = self

        class Run:
            def log(self, data, step=None, commit=None):
                fake.calls.append(("log", data, step))

            def finish(self, exit_code=None, quiet=None):
                fake.calls.append(("finish",))

        self._run = Run

    def init(self, entity=None, project=None, dir=None, id=None, name=None, notes=None,
             tags=None, config=None, group=None, job_type=None, mode=None, settings=None):  # fmt: skip
        self.calls.append(("init", project, name, config))
        return self._run()


def test_the_wandb_backend_makes_only_the_shared_calls(monkeypatch):
    """The chapter's claim: the calls that log a run are wandb's. The wandb path itself is not
    run here (it needs an account and the network)."""
    from helpers import tracking

    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    t = tracking.Tracker("course-08", "run", {"lr": 0.1}, backend="wandb")
    t.log({"train/loss": 0.5}, 3)
    t.finish()
    assert fake.calls == [
        ("init", "course-08", "run", {"lr": 0.1}),
        ("log", {"train/loss": 0.5}, 3),
        ("finish",),
    ]
    assert tracking.BACKEND_OPTIONS["wandb"] == {}
    with pytest.raises(ValueError, match="wandb.Api"):
        t.history()


def test_trackio_gets_the_same_calls_plus_its_options(monkeypatch, tmp_path):
    """trackio's init receives the shared keywords and only the options listed as its own."""
    import trackio

    from helpers import tracking

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path))
    seen = {}
    real_init = trackio.init

    def spy(**kwargs):
        seen.update(kwargs)
        return real_init(**kwargs)

    monkeypatch.setattr(trackio, "init", spy)
    monkeypatch.setattr(tracking.Tracker, "_delete_existing", lambda self: None)
    t = tracking.Tracker("course-test", "spy", {"lr": 0.1})
    t.finish()
    shared = {"project": "course-test", "name": "spy", "config": {"lr": 0.1}}
    assert seen == shared | tracking.BACKEND_OPTIONS["trackio"]
    assert trackio.context_vars.current_run.get() is None  # finished as trackio.finish() does


def test_unknown_backend_is_named():
    from helpers.tracking import Tracker

    with pytest.raises(ValueError, match="backend='mlflow'"):
        Tracker("p", "r", backend="mlflow")


def test_verdicts_carry_wilson_intervals():
    from helpers.evaluation.stats import wilson_interval

    hits = [True] * 17 + [False] * 33  # 0.34 of 50
    chance = byod.against(hits, 0.3413)
    assert chance["verdict"] == "not distinguishable from"
    assert (chance["low"], chance["high"]) == wilson_interval(17, 50)
    assert byod.against([True] * 44 + [False] * 6, 0.2)["verdict"] == "above"
    assert byod.against([True] * 2 + [False] * 48, 0.34)["verdict"] == "below"
    refs = ['{"a": "x"}', '{"a": "y"}']
    assert byod.outcomes(['{"a": "x"}', "no"], refs) == {
        "exact_match": [True, False], "valid_rate": [True, False], "a_accuracy": [True, False]
    }  # fmt: skip
