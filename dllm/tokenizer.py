"""The built-in word-level tokenizer: one id per whitespace-separated word.

It is a `tokenizers` WordLevel model wrapped as a transformers `PreTrainedTokenizerFast`,
so the shipped teacher is loaded by the same `AutoTokenizer.from_pretrained(dir)` call as
a real checkpoint. The special tokens come first, in a fixed order, so their ids never
depend on the task's vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

PAD = "<pad>"
UNK = "<unk>"
MASK = "<mask>"
EOS = "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, MASK, EOS)
"""Special tokens at ids 0..3, in this order."""


def build_tokenizer(words: Sequence[str], model_max_length: int = 32) -> Any:
    """A `PreTrainedTokenizerFast` over SPECIAL_TOKENS + `words` (ids in that order).

    Left padding, as the samplers pad prompts; no BOS/EOS is added on encode, because a
    prompt is exactly the words the user wrote.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = _vocabulary(words)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    core.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        mask_token=MASK,
        eos_token=EOS,
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def _vocabulary(words: Sequence[str]) -> dict[str, int]:
    """Specials then words; a repeated word, whitespace inside a word or a special among the words is a bug."""
    for word in words:
        if not word or any(ch.isspace() for ch in word):
            raise ValueError(f"tokenizer words must be non-empty and contain no whitespace: {word!r}")
    ordered = list(SPECIAL_TOKENS) + list(words)
    if len(set(ordered)) != len(ordered):
        raise ValueError("tokenizer words repeat each other or a special token")
    return {word: index for index, word in enumerate(ordered)}


def save_tokenizer(tokenizer: Any, out_dir: str | Path) -> Path:
    """Write the tokenizer files beside the weights (`save_pretrained`)."""
    out = Path(out_dir)
    tokenizer.save_pretrained(out)
    return out


def load_tokenizer(path: str | Path) -> Any:
    """`AutoTokenizer.from_pretrained(path)`, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(path), local_files_only=True)
