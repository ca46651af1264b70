"""Prompt files: three formats, `prompt` or `question`, answers, one-line errors with locations."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from t3d.dllm.errors import UserError
from t3d.dllm.tokenizer import load_tokenizer
from t3d.dllm.prompt_encoding import PromptEncoding, encode_prompt
from t3d.pipeline.prompts import PromptRecord, prepare_prompts, read_prompt_file

PLAIN, CHAT = PromptEncoding(chat_template=False), PromptEncoding(chat_template=True)

RECORDS = [{"prompt": "w1 w2", "answer": "a"}, {"question": "w3", "answer": 4}, {"prompt": [5, 6, 7]}]
EXPECTED = [PromptRecord("w1 w2", "a"), PromptRecord("w3", "4"), PromptRecord((5, 6, 7), None)]


@pytest.fixture(scope="module")
def tokenizer(teacher_dir):
    return load_tokenizer(teacher_dir)


def test_jsonl_json_and_parquet_read_the_same(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps(RECORDS))
    assert read_prompt_file(jsonl) == EXPECTED
    assert read_prompt_file(as_json) == EXPECTED
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"question": ["w1 w2", "w3"], "answer": ["a", "4"], "other": [1, 2]}), parquet)
    assert read_prompt_file(parquet) == EXPECTED[:2]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "", "prompts file is empty: {path}"),
        ("blank.jsonl", "\n\n", "prompts file holds no prompts: {path}"),
        ("bad.jsonl", '{"prompt": "w1"}\n{"prompt": "w2"}\n{"prompt": w3}\n', "{path} line 3: malformed JSON"),
        ("nofield.jsonl", '{"prompt": "w1"}\n{"txt": "w2"}\n', "{path} line 2: no known layout has these fields (txt); known: HumanEval"),
        ("nofield.json", '[{"prompt": "w1"}, {"txt": "w2"}]', "{path} record 1: no known layout has these fields (txt)"),
        ("badjson.json", '[{"prompt": "w1"},\n {"prompt": }]', "{path} line 2: malformed JSON"),
        ("notlist.json", '{"prompt": "w1"}', "must hold a JSON list"),
        ("emptyprompt.jsonl", '{"prompt": "  "}\n', "{path} line 1: 'prompt' must be non-empty text"),
        ("number.jsonl", "3\n", "{path} line 1: a record must be an object"),
        ("prompts.csv", "prompt\nw1\n", "must be .jsonl, .json, .parquet or a datasets save_to_disk folder: {path}"),
    ],
)
def test_bad_files_give_one_line_naming_path_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError) as err:
        read_prompt_file(path)
    assert message.format(path=path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_and_parquet_without_prompt_column(tmp_path):
    with pytest.raises(UserError, match=f"prompts file not found: {tmp_path / 'nope.jsonl'}"):
        read_prompt_file(tmp_path / "nope.jsonl")
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"txt": ["w1"]}), parquet)
    with pytest.raises(UserError, match=r"record 0: no known layout has these fields \(txt\)"):
        read_prompt_file(parquet)


def test_chat_template_is_applied_unless_disabled(tokenizer):
    plain = encode_prompt(tokenizer, "w1 w2", PLAIN)
    templated = encode_prompt(tokenizer, "w1 w2", CHAT)
    assert tokenizer.decode(plain) == "w1 w2"
    assert tokenizer.decode(templated) == "user: w1 w2 assistant:"


def test_long_prompts_are_skipped_and_counted_or_refused(tokenizer):
    records = [PromptRecord("w1"), PromptRecord("w1 w2 w3 w4 w5 w6"), PromptRecord("w2 w3"), PromptRecord((4,) * 9)]
    kept = prepare_prompts(records, tokenizer, encoding=PLAIN, max_prompt_tokens=4, on_long_prompt="skip")
    assert [p.index for p in kept.prompts] == [0, 2] and kept.skipped == [1, 3] and kept.total == 4
    with pytest.raises(UserError, match="prompt 1 has 6 tokens, more than the 4 .*--on-long-prompt skip"):
        prepare_prompts(records, tokenizer, encoding=PLAIN, max_prompt_tokens=4, on_long_prompt="error")
    with pytest.raises(UserError, match="no prompt fits the model"):
        prepare_prompts(records[1:2], tokenizer, encoding=PLAIN, max_prompt_tokens=4, on_long_prompt="skip")


def test_limit_ids_and_digest(tokenizer):
    records = [PromptRecord("w1", "x"), PromptRecord((5, 6)), PromptRecord("w3")]
    a = prepare_prompts(records, tokenizer, encoding=PLAIN, max_prompt_tokens=8, on_long_prompt="skip", limit=2)
    assert [p.ids for p in a.prompts] == [tuple(tokenizer("w1")["input_ids"]), (5, 6)]
    assert a.prompts[0].text == "w1" and a.prompts[0].answer == "x" and a.prompts[1].text is None
    b = prepare_prompts(records, tokenizer, encoding=CHAT, max_prompt_tokens=8, on_long_prompt="skip", limit=2)
    assert a.digest() != b.digest(), "the digest sees the template"
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        prepare_prompts([PromptRecord((5, 999))], tokenizer, encoding=PLAIN, max_prompt_tokens=8,
                        on_long_prompt="skip", vocab_size=32)


# --- the `correct` column: a scorer of the registry -----------------------------------------


def test_row_scorer_fills_correct_from_the_answers(tmp_path):
    import pickle

    from t3d.dllm.tokenizer import build_tokenizer
    from t3d.pipeline.prompts import row_scorer

    tokenizer = build_tokenizer(["####", "w1", "w2", "3", "4", "x", "=", "\\frac{6}{2}"])
    path = tmp_path / "qa.jsonl"
    path.write_text('{"prompt": "w1", "answer": "3"}\n{"prompt": "w2"}\n')
    records = read_prompt_file(path)
    prepared = prepare_prompts(records, tokenizer, encoding=PLAIN, max_prompt_tokens=8, on_long_prompt="error")
    score = pickle.loads(pickle.dumps(row_scorer("math", records, prepared, tokenizer)))  # as a Ray actor gets it
    w1, w2 = (tokenizer(w, add_special_tokens=False)["input_ids"] for w in ("w1", "w2"))
    say = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert score(w1, say("#### x = 3")) is True
    assert score(w1, say("#### \\frac{6}{2}")) is True  # equivalence, not string match
    assert score(w1, say("#### 4")) is False
    assert score(w2, say("#### 3")) is None  # no answer: unjudged
    assert row_scorer(None, records, prepared, tokenizer) is None


class _Texts:
    """A tokenizer stand-in: response id i decodes to TEXTS[i]."""

    def decode(self, ids, skip_special_tokens=True):
        return _TEXTS[ids[0]]


_TEXTS = ["def double(x):\n    return 2 * x\n", "def double(x):\n    return x + 2\n", "#### 4", "#### 5"]


def test_row_scorer_judges_code_rows_side_by_side_with_the_verdicts_of_one_at_a_time(request):
    import pickle

    from t3d.dllm.scoring import Reference
    from t3d.pipeline.config import ClusterConfig
    from t3d.pipeline.prompts import RowScorer

    references = {(1,): Reference(tests=("assert double(2) == 4", "assert double(0) == 0")), (2,): Reference(answer="4"),
                  (3,): None}  # fmt: skip
    rows = [((1,), [0]), ((1,), [1]), ((2,), [2]), ((2,), [3]), ((1,), [0]), ((3,), [2]), ((1,), [1])]
    one = RowScorer("auto", _Texts(), references)
    sequential = one.score_all(rows)
    assert sequential == [True, False, True, False, True, None, False] == [one(p, r) for p, r in rows]
    calls = request.getfixturevalue("sandboxes_in_pairs")  # patched only after the sequential run
    two = pickle.loads(pickle.dumps(RowScorer("auto", _Texts(), references, code_workers=2)))  # as a Ray actor gets it
    assert two.score_all(rows) == sequential
    assert len(calls) == 4 and all(name.startswith("t3d-judge") for name in calls)  # math ran on the calling thread
    with pytest.raises(UserError, match="code_workers must be at least 1"):
        ClusterConfig(code_workers=0)
