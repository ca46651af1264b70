"""The built-in word-level tokenizer: task ids, specials, and a save/load round trip."""

import pytest
from transformers import AutoTokenizer

from t3d.dllm.task import BuiltinTask
from t3d.dllm.tokenizer import EOS, MASK, PAD, SPECIAL_TOKENS, UNK, build_tokenizer


@pytest.fixture(scope="module")
def task():
    return BuiltinTask(seed=0)


def _check(tokenizer, task):
    for text in ["c3 c1 c5", "M0 a b d M1 d f g <eos> <eos>", "<mask> <mask> M7 p"]:
        assert tokenizer(text)["input_ids"] == task.encode(text), "tokenizer ids must be the task's ids"
        assert tokenizer.decode(task.encode(text)) == text
    assert tokenizer.convert_ids_to_tokens(list(range(4))) == list(SPECIAL_TOKENS)
    assert (tokenizer.pad_token, tokenizer.unk_token, tokenizer.mask_token, tokenizer.eos_token) == (PAD, UNK, MASK, EOS)
    assert (tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.eos_token_id) == (task.pad_id, task.mask_id, task.eos_id)
    assert len(tokenizer) == len(task.vocabulary)
    assert tokenizer("c0 zebra")["input_ids"] == [task.encode("c0")[0], tokenizer.unk_token_id]
    assert tokenizer.padding_side == "left"
    batch = tokenizer(["c1 c2", "c1 c2 c3"], padding=True)["input_ids"]
    assert batch[0][0] == task.pad_id, "prompts are left-padded, as the samplers pad them"


def test_built_tokenizer_uses_the_task_ids(task):
    _check(task.tokenizer(), task)


def test_save_and_load_offline_with_auto_tokenizer(task, tmp_path):
    task.tokenizer().save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    _check(loaded, task)


def test_special_tokens_stay_whole_and_skippable(task):
    tokenizer = task.tokenizer()
    ids = tokenizer("c0<eos>")["input_ids"]  # a special glued to a word is still split off
    assert ids == task.encode("c0 <eos>")
    assert tokenizer.decode(task.encode("M0 a <eos> <pad>"), skip_special_tokens=True) == "M0 a"


@pytest.mark.parametrize("words", [["a", "a"], ["a", "<eos>"], ["a b"], [""]])
def test_bad_vocabularies_are_refused(words):
    with pytest.raises(ValueError):
        build_tokenizer(words)
