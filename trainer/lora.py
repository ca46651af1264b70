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
(transformers' module names; SDAR's own code uses the same names and takes it too, LLaDA's
does not: its adapter fits `LlamaForCausalLM`). Resume reloads the base from `--model` and the
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


class Adapters:
    """A student's LoRA adapters: peft's model around the student's network, which is adapted in place.

    The student's `DiffusionLM.net` stays the network every caller runs (peft only swaps its
    projections for LoRA layers), so the trainer, DDP and FSDP see one module tree; this
    object keeps peft's handle for switching adapters off, and turns a state dict of that
    tree into the merged teacher-format weights and the PEFT adapter files.
    """

    def __init__(self, peft_model: Any, cfg: LoraConfig) -> None:
        self.peft = peft_model
        self.cfg = cfg

    @classmethod
    def attach(cls, model: DiffusionLM, cfg: LoraConfig, base: Path, reference: bool = False) -> Adapters:
        """Freeze `model`'s network and add the trained adapter (and a frozen `reference` one for rounds).

        base: the checkpoint the adapter applies to (`base_model_name_or_path` in its config).
        """
        try:
            from peft import LoraConfig as PeftLoraConfig
            from peft import get_peft_model
        except ImportError:
            raise UserError("--lora-r needs peft: pip install 't3d[lora]' (or peft)") from None

        targets = target_modules(cfg, model.family)
        linears = adapted_linears(model.net, targets)  # a one-line error for a target that is not a linear layer
        head = model.net.get_output_embeddings() if hasattr(model.net, "get_output_embeddings") else None
        if getattr(model.net.config, "tie_word_embeddings", False) and any(m is head for m in linears.values()):
            raise UserError("--lora-targets: this model's LM head is tied to its input embeddings; the merged student "
                            "cannot keep them tied with an adapter on the head alone")  # fmt: skip
        config = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(targets),
                                bias="none")  # fmt: skip
        model.net.requires_grad_(False)
        peft_model = get_peft_model(model.net, config, adapter_name=STUDENT)
        peft_model.peft_config[STUDENT].base_model_name_or_path = str(base)  # peft wrote the network's (empty) name_or_path
        if peft_model.base_model.model is not model.net:  # peft adapts the network in place
            raise RuntimeError("peft did not adapt the student's network in place")
        if reference:
            peft_model.add_adapter(REFERENCE, copy.deepcopy(config))
            peft_model.base_model.set_adapter(STUDENT)  # trainable: the student's adapter only
        return cls(peft_model, cfg)

    @property
    def net(self) -> nn.Module:
        return self.peft.base_model.model

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def running_as(self, adapter: str | None):
        """Run the network with `adapter` active (None: no adapter, the frozen base), in eval mode (no
        LoRA dropout); the student's adapter, training mode and trainable flags are restored after."""
        training = self.net.training
        self.net.eval()
        try:
            if adapter is None:
                with self.peft.disable_adapter():
                    yield
            else:
                self.peft.base_model.set_adapter(adapter, inference_mode=True)
                try:
                    yield
                finally:
                    self.peft.base_model.set_adapter(STUDENT)
        finally:
            self.net.train(training)

    @torch.no_grad()
    def copy_to_reference(self) -> None:
        """The reference adapter becomes the student's (in place; sharded parameters stay sharded)."""
        params = dict(self.net.named_parameters())
        for name, param in params.items():
            if f".{STUDENT}." in name and ".lora_" in name:
                params[name.replace(f".{STUDENT}.", f".{REFERENCE}.")].copy_(param.detach())

    def merged_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The network's state dict with the student's adapter merged (W + alpha / r x B A, in float32 then
        the weight's dtype) under the unadapted network's names: what a full fine-tune would hold."""
        return merge_state(state, self.cfg.scaling, STUDENT)

    def adapter_state(self, state: dict[str, torch.Tensor], adapter: str = STUDENT) -> dict[str, torch.Tensor]:
        """`adapter`'s weights from the network's state dict, keyed as a PEFT adapter file keys them."""
        from peft import get_peft_model_state_dict

        prefix = "base_model.model."  # the PeftModel's own names of the network's tensors
        wanted = {prefix + k: v for k, v in state.items() if f".{adapter}." in k}
        return get_peft_model_state_dict(self.peft, state_dict=wanted, adapter_name=adapter)

    def save(self, directory: Path, state: dict[str, torch.Tensor]) -> None:
        """`directory`: a PEFT adapter directory (adapter_config.json, adapter_model.safetensors) of the
        student's adapter, from the network's (gathered) state dict."""
        from peft.utils import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        self.peft.peft_config[STUDENT].save_pretrained(str(directory))
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.adapter_state(state).items()}
        save_file(tensors, str(directory / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})

    def save_reference(self, file: Path, state: dict[str, torch.Tensor]) -> None:
        """The reference adapter's weights (network names) into `file`."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items() if f".{REFERENCE}." in k}
        save_file(tensors, str(file), metadata={"format": "pt"})

    def load(self, checkpoint: Path) -> None:
        """The adapters of a checkpoint (before sharding): the student's from `adapter/`, the reference's
        from `reference_adapter.safetensors` when a round had refreshed it."""
        from peft import set_peft_model_state_dict
        from peft.utils import SAFETENSORS_WEIGHTS_NAME
        from safetensors.torch import load_file

        from t3d.dllm.weights import check_complete

        file = checkpoint / ADAPTER_DIR / SAFETENSORS_WEIGHTS_NAME
        if not file.is_file():
            raise UserError(f"--resume with --lora-r {self.cfg.r}: {checkpoint} has no LoRA adapter ({file.name} in "
                            f"{ADAPTER_DIR}/): it was not trained with LoRA")  # fmt: skip
        check_complete(file)
        result = set_peft_model_state_dict(self.peft, load_file(str(file)), adapter_name=STUDENT)
        if result.unexpected_keys:
            raise UserError(f"{file}: tensors this LoRA student does not have ({result.unexpected_keys[0]}, ...): "
                            "resume with the --lora-r and --lora-targets it was trained with")  # fmt: skip
        reference = checkpoint / REFERENCE_ADAPTER
        if reference.is_file():
            check_complete(reference)
            _, unexpected = self.net.load_state_dict(load_file(str(reference)), strict=False)
            if unexpected:
                raise UserError(f"{reference}: tensors this LoRA student does not have ({unexpected[0]}, ...)")


def merge_state(state: dict[str, torch.Tensor], scaling: float, adapter: str = STUDENT) -> dict[str, torch.Tensor]:
    """A peft-adapted network's state dict -> the unadapted network's, with `adapter` merged into each
    adapted weight (W + scaling x B A, computed in float32) and every adapter tensor dropped.

    state: names as the adapted network has them (`...q_proj.base_layer.weight`,
    `...q_proj.lora_A.<adapter>.weight`, `...q_proj.lora_B.<adapter>.weight`).
    """
    out = {name.replace(".base_layer.", "."): t for name, t in state.items() if ".lora_" not in name}
    suffix = f".lora_A.{adapter}.weight"
    for name in (n for n in state if n.endswith(suffix)):
        module = name[: -len(suffix)]
        a, b = state[name], state[f"{module}.lora_B.{adapter}.weight"]  # (r, in), (out, r)
        weight = out[f"{module}.weight"]  # (out, in)
        delta = b.detach().float().to(weight.device) @ a.detach().float().to(weight.device)  # (out, in)
        out[f"{module}.weight"] = (weight.detach().float() + scaling * delta).to(weight.dtype)
    return out
