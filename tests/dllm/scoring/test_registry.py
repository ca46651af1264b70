"""The scorer registry: `auto` picks per record from its own fields; a scorer that does not fit is a one-line error."""

import pytest

from t3d.dllm.errors import UserError
from t3d.dllm.prompt_files import PromptRecord
from t3d.dllm.scoring import SCORER_NAMES, choose_scorer, text_scorer

ANSWERED = [PromptRecord("q1", "3", where="p.jsonl line 1"), PromptRecord("q2", None, where="p.jsonl line 2")]
CODED = [PromptRecord("write f", tests=("assert f() == 1",), where="c.jsonl line 1"), PromptRecord("q", "2", where="c.jsonl line 2")]
BARE = [PromptRecord("q1", where="b.jsonl line 1")]


def test_auto_picks_per_record_from_its_fields():
    assert choose_scorer("auto", None, "builtin:test").name == "builtin"
    answered = choose_scorer("auto", ANSWERED, "p.jsonl")
    assert answered.judges == ("math", None) and answered.name == "math" and answered.metric == "accuracy"
    assert answered.unjudged == ["p.jsonl line 2"]
    assert answered.describe() == "graded per record: 1 math; 1 record had nothing to grade it by (no answer, no tests): p.jsonl line 2"
    mixed = choose_scorer("auto", CODED, "c.jsonl")
    assert mixed.judges == ("code", "math") and mixed.name == "auto" and not mixed.unjudged  # each row by its own reference
    assert choose_scorer("auto", CODED[:1], "c.jsonl").metric == "pass@1"
    bare = choose_scorer("auto", BARE, "b.jsonl")
    assert bare.name is None and bare.metric is None and bare.unjudged == ["b.jsonl line 1"]  # nothing to judge by


def test_every_name_but_auto_and_builtin_builds_a_text_scorer():
    assert set(SCORER_NAMES) == {"auto", "builtin", "math", "code", "exact"}
    for name in ("math", "exact", "code"):
        assert text_scorer(name).name == name


@pytest.mark.parametrize(
    "name, records, message",
    [
        ("exact", ANSWERED, "p.jsonl line 2: --scorer exact needs an 'answer' in every record"),
        ("math", BARE, "b.jsonl line 1: --scorer math needs an 'answer'"),
        ("code", ANSWERED, "p.jsonl line 1: --scorer code needs 'tests' or 'test' + 'entry_point'"),
        ("builtin", ANSWERED, "--scorer builtin judges only the built-in task's prompts, not p.jsonl"),
        ("math", None, "--scorer math needs a prompt file"),
        ("regex", ANSWERED, "--scorer must be one of auto, builtin, math"),
    ],
)
def test_a_scorer_that_does_not_fit_names_the_record(name, records, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace("+", r"\+")):
        choose_scorer(name, records, "p.jsonl" if records is not None else "builtin:test")
