"""One prompt encoding for collect, distill and eval: text -> the token ids a model is given.

A student distilled on prompts encoded one way must be measured on prompts encoded the
same way. `t3d-collect` encodes with a `PromptEncoding` and records it in the dataset's
manifest; `t3d-distill` copies it into the student's `t3d.json`; `t3d-eval` encodes each
model's prompts with the student's recorded encoding, or the one of `--like DATASET`.

The steps, in order:

1. the user turn is `user_template` with `{prompt}` replaced by the prompt (T3D/SDAR's
   evaluation appends "Please reason step by step, and put your final answer within
   \\boxed{}." -- the `reason-boxed` preset);
2. with `chat_template` on and a tokenizer that has one: the messages (an optional
   `system_prompt` turn, then the user turn) rendered by the template with the
   generation prompt, tokenised without further special tokens (the template writes
   its own BOS where the model wants one -- what `apply_chat_template` does);
3. otherwise: the system prompt (if any) and a blank line, then the user turn,
   tokenised with the tokenizer's own special tokens when `special_tokens` is on (a
   BOS where the tokenizer adds one), or none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from t3d.dllm.errors import UserError

REASON_BOXED = "Please reason step by step, and put your final answer within \\boxed{}."
USER_TEMPLATES = {"plain": "{prompt}", "reason-boxed": "{prompt}\n" + REASON_BOXED}
"""Named user-turn templates (`--user-template reason-boxed`)."""


@dataclass(frozen=True, kw_only=True)
class PromptEncoding:
    """How a text prompt becomes token ids (steps in the module docstring); t3d-collect's options."""

    chat_template: bool = True
    """Wrap each prompt in the tokenizer's chat template when it has one."""
    system_prompt: str | None = None
    """A system turn before each prompt (without a chat template: a paragraph before it)."""
    user_template: str = "{prompt}"
    """The user turn, `{prompt}` standing for the prompt; or a preset: plain, reason-boxed (T3D/SDAR's step-by-step \\boxed{} suffix)."""
    special_tokens: bool = True
    """Without a chat template: add the tokenizer's special tokens (BOS where it adds one)."""

    def __post_init__(self) -> None:
        template = USER_TEMPLATES.get(self.user_template, self.user_template)
        if "{prompt}" not in template:
            raise UserError(f"user template must contain {{prompt}} or name a preset ({', '.join(USER_TEMPLATES)}), got {self.user_template!r}")
        object.__setattr__(self, "user_template", template)
        if self.system_prompt is not None and not self.system_prompt.strip():
            object.__setattr__(self, "system_prompt", None)

    def user_turn(self, prompt: str) -> str:
        """The user turn's text (plain replacement: braces in the template, like `\\boxed{}`, stay as written)."""
        return self.user_template.replace("{prompt}", prompt)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "prompt encoding") -> PromptEncoding:
        """The encoding a manifest or t3d.json recorded; unknown keys are an error naming `where`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise UserError(f"{where}: unknown prompt-encoding fields {', '.join(sorted(unknown))}")
        return cls(**data)

    def describe(self) -> str:
        """One line for logs: `chat template, system prompt, user template '{prompt}\\n...', special tokens`."""
        parts = ["chat template" if self.chat_template else "no chat template"]
        if self.system_prompt:
            parts.append(f"system prompt {self.system_prompt[:40]!r}")
        if self.user_template != "{prompt}":
            parts.append(f"user template {self.user_template[:60]!r}")
        parts.append("special tokens" if self.special_tokens else "no special tokens")
        return ", ".join(parts)


def applies_chat_template(tokenizer: Any, encoding: PromptEncoding) -> bool:
    """Whether `encoding` renders through `tokenizer`'s chat template (on, and the tokenizer has one)."""
    return encoding.chat_template and bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer: Any, text: str, encoding: PromptEncoding = PromptEncoding()) -> list[int]:
    """Token ids of a text prompt under `encoding` (the one function collect, distill and eval use)."""
    if tokenizer is None:
        raise UserError("the model has no tokenizer: give prompts as token-id lists")
    user = encoding.user_turn(text)
    if applies_chat_template(tokenizer, encoding):
        system = [{"role": "system", "content": encoding.system_prompt}] if encoding.system_prompt else []
        rendered = tokenizer.apply_chat_template(system + [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    else:
        full = f"{encoding.system_prompt}\n\n{user}" if encoding.system_prompt else user
        ids = tokenizer(full, add_special_tokens=encoding.special_tokens)["input_ids"]
    return [int(t) for t in ids]


def legacy_encoding(collect_config: dict[str, Any]) -> PromptEncoding:
    """The encoding of a dataset collected before manifests recorded one: the chat-template flag, tokenizer defaults."""
    prompts = collect_config.get("config", {}).get("prompts", {})
    return PromptEncoding(chat_template=bool(prompts.get("chat_template", True)))


def dataset_encoding(collect_config: dict[str, Any], where: str = "manifest") -> PromptEncoding:
    """The prompt encoding a dataset's manifest (`collect_config`) records."""
    recorded = collect_config.get("prompt_encoding")
    return PromptEncoding.from_dict(recorded, where) if recorded is not None else legacy_encoding(collect_config)
