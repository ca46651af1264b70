"""The prompt encoding on a tokenizer that adds a BOS: template on/off, system prompt, user template."""

import pytest

from t3d.dllm.errors import UserError
from t3d.dllm.prompt_encoding import REASON_BOXED, PromptEncoding, dataset_encoding, encode_prompt


@pytest.fixture(scope="module")
def bos_tokenizer():
    """A real fast tokenizer whose post-processor adds `<s>` to every encoding (as Llama/LLaDA's do)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<s>", "</s>", "what", "is", "2+2?", "system:", "user:", "assistant:", "be", "brief",
             "Please", "reason", "step", "by", "step,", "and", "put", "your", "final", "answer", "within", "\\boxed{}."]  # fmt: skip
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    assert tok("what")["input_ids"][0] == tok.bos_token_id, "the tokenizer adds a BOS by default"
    return tok


CHAT = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"


def words(tok, ids):
    return tok.convert_ids_to_tokens(ids)


def test_without_a_template_special_tokens_follow_the_tokenizer(bos_tokenizer):
    tok = bos_tokenizer
    assert words(tok, encode_prompt(tok, "what is 2+2?", PromptEncoding())) == ["<s>", "what", "is", "2+2?"]
    assert words(tok, encode_prompt(tok, "what is 2+2?", PromptEncoding(special_tokens=False))) == ["what", "is", "2+2?"]


def test_the_chat_template_writes_its_own_bos_once(bos_tokenizer):
    tok = bos_tokenizer
    tok.chat_template = CHAT
    try:
        ids = encode_prompt(tok, "what is 2+2?", PromptEncoding(system_prompt="be brief"))
        assert words(tok, ids) == ["<s>", "system:", "be", "brief", "user:", "what", "is", "2+2?", "assistant:"]
        off = encode_prompt(tok, "what is 2+2?", PromptEncoding(chat_template=False))
        assert words(tok, off) == ["<s>", "what", "is", "2+2?"]  # template off: the tokenizer's own BOS
    finally:
        tok.chat_template = None


def test_user_template_preset_appends_the_reasoning_suffix(bos_tokenizer):
    encoding = PromptEncoding(user_template="reason-boxed", special_tokens=False)
    assert encoding.user_template == "{prompt}\n" + REASON_BOXED
    assert encoding.user_turn("what is 2+2?") == "what is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert words(bos_tokenizer, encode_prompt(bos_tokenizer, "what is 2+2?", encoding))[-2:] == ["within", "\\boxed{}."]


def test_round_trip_and_bad_input():
    encoding = PromptEncoding(chat_template=False, system_prompt="be brief", user_template="Q: {prompt}\nA:")
    assert PromptEncoding.from_dict(encoding.to_dict()) == encoding
    assert dataset_encoding({"prompt_encoding": encoding.to_dict()}) == encoding
    assert dataset_encoding({"config": {"prompts": {"chat_template": False}}}) == PromptEncoding(chat_template=False)  # older manifests
    with pytest.raises(UserError, match="must contain {prompt}"):
        PromptEncoding(user_template="no placeholder")
    with pytest.raises(UserError, match="m.json: unknown prompt-encoding fields suffix"):
        PromptEncoding.from_dict({"suffix": "x"}, "m.json")
