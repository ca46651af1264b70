"""LoRA students (`--lora-r`): low-rank adapters trained through `peft`, the base frozen and shared.

Full fine-tuning with AdamW holds ~16 bytes per parameter (fp32 weights, gradients, two
moments) plus a frozen copy of the model as DDO's reference. A LoRA student trains only
r x (in + out) numbers per adapted projection and needs no second model: the reference
is the same network with its adapters switched off (peft's `disable_adapter()`), so the
frozen base weights are held once.

Rounds (`--round-every R`): the reference becomes the student every R steps. With LoRA
that is a *frozen copy of the adapter* (a second peft adapter, `reference`, added before
training and never trained): refreshing copies the student's adapter weights into it,
and the reference runs with that adapter active instead of with none. The alternative,
merging the adapter into the base at each round and starting a fresh one, was not taken:
the final adapter would then describe only the last round, not the student against the
teacher, and the base would drift in its storage dtype (bf16 rounding at every merge).

Outputs (see `t3d.trainer.checkpoint`): the student merged into the teacher's format
(W + alpha / r x B A under the teacher's tensor names: a drop-in, as for full
fine-tuning), and beside it `adapter/`, a PEFT adapter directory that
`PeftModel.from_pretrained(base, path)` loads onto the network as t3d builds it
(transformers' classes and module names). Resume reloads the base from `--model` and the
adapters from the checkpoint, in the training dtype: exact.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from t3d.dllm.errors import UserError
from t3d.dllm.families import Family, get_family

if TYPE_CHECKING:
    from t3d.dllm.model import DiffusionLM

STUDENT = "default"
"""The trained adapter's name (peft's default name, so the adapter directory has no sub-folder)."""
REFERENCE = "reference"
"""The frozen copy of the student's adapter that DDO's reference runs with after a round (`--round-every`)."""
ADAPTER_DIR = "adapter"
"""The PEFT adapter directory in a checkpoint and in `student/`."""
REFERENCE_ADAPTER = "reference_adapter.safetensors"
"""The reference adapter's weights in a checkpoint, once a round has refreshed it."""


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """LoRA adapters instead of full fine-tuning."""

    r: int = 0
    """LoRA rank: > 0 trains low-rank adapters (peft) on a frozen base, and DDO's reference is the base itself; 0: full fine-tuning."""
    alpha: float = 32.0
    """LoRA scaling numerator: the adapter adds alpha / r x B A to each adapted weight."""
    dropout: float = 0.0
    """Dropout on the adapters' input during training."""
    targets: tuple[str, ...] = ()
    """Module names to adapt (a name matches itself and any `...name`); none: the family's attention and MLP projections."""

    def __post_init__(self) -> None:
        if self.r < 0:
            raise UserError(f"--lora-r must be >= 0, got {self.r}")
        if self.alpha <= 0:
            raise UserError(f"--lora-alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--lora-dropout must be in [0, 1), got {self.dropout}")

    @property
    def enabled(self) -> bool:
        return self.r > 0

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


def target_modules(cfg: LoraConfig, family: Family | str) -> tuple[str, ...]:
    """--lora-targets, else the family's own default (`Family.lora_targets`)."""
    return tuple(cfg.targets) or get_family(family).lora_targets


def matches(name: str, targets: tuple[str, ...]) -> bool:
    """peft's rule for a list of target names: the module's full name or its last dotted parts."""
    return any(name == t or name.endswith("." + t) for t in targets)


def adapted_linears(net: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Linear]:
    """{module name: linear layer} that LoRA adapts; a target matching no linear layer is a one-line error."""
    found = {name: m for name, m in net.named_modules() if matches(name, targets)}
    not_linear = sorted(name for name, m in found.items() if type(m) is not nn.Linear)
    if not_linear:
        raise UserError(f"--lora-targets: {not_linear[0]} is a {type(found[not_linear[0]]).__name__}, not a linear "
                        "layer (t3d adapts linear layers only)")  # fmt: skip
    unused = [t for t in targets if not any(matches(name, (t,)) for name in found)]
    if unused:
        raise UserError(f"--lora-targets {', '.join(unused)}: no such module in the network")
    return found


def adapter_parameter_count(model_config: dict[str, Any], cfg: LoraConfig, family: Family | str) -> int:
    """Trainable numbers of a LoRA student, from a checkpoint's config.json (no weight is read).

    model_config: the raw config.json dict; family: the checkpoint's family (or its name).
    The network is built on the meta device, so the count is exact for any target list:
    r x (in_features + out_features) per adapted linear layer. 0 when LoRA is off.
    """
    if not cfg.enabled:
        return 0
    family = get_family(family)
    net = _meta_network(model_config, family)
    linears = adapted_linears(net, target_modules(cfg, family))
    return sum(cfg.r * (m.in_features + m.out_features) for m in linears.values())


def _meta_network(raw: dict[str, Any], family: Family) -> nn.Module:
    """The family's transformers network of this config.json, on the meta device (shapes only)."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    from t3d.dllm.families import IDENTITY

    architecture = family.architecture
    if architecture is None:
        raise UserError(f"family {family.name} runs only its own code: t3d cannot size its LoRA adapters")
    if architecture is IDENTITY:
        fields = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "transformers_version")}
        config = AutoConfig.for_model(raw["model_type"], **fields)
        cls = AutoModelForCausalLM._model_mapping[type(config)]
    else:
        config = architecture.build_config(copy.deepcopy(raw), "config.json")
        cls = getattr(transformers, architecture.model_class)
    with torch.device("meta"):
        return cls(config)
