"""`DiffusionLM`: one small interface over every diffusion LM the project can load."""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from t3d.dllm import masks
from t3d.dllm.attention import use_grouped_sdpa
from t3d.dllm.families import Family
from t3d.dllm.identity import model_identity


class HeadRows(NamedTuple):
    """The LM head's input at chosen positions and the head, or the logits there (`DiffusionLM.response_rows`)."""

    rows: torch.Tensor  # (N, H) hidden states, or (N, V) logits when weight is None
    weight: torch.Tensor | None  # (V, H) the head's weight; None: rows are logits already
    bias: torch.Tensor | None  # (V,) or None


@dataclass(eq=False)
class DiffusionLM:
    """A network that maps token ids containing `mask_id` to per-position logits.

    The only code that calls `net` (tests/trainer/test_network_calls.py checks it): the samplers
    (`logits`, `raw_logits_at`), the trainer's log-probs (`response_rows`) and the tiny
    teacher's training (`logits`) all come through here, so a family's attention mask,
    logit alignment and LM-head handling are applied in exactly one place.
    """

    net: torch.nn.Module
    family: Family
    mask_id: int
    pad_id: int
    eos_id: int
    vocab_size: int
    max_length: int
    name: str
    fingerprint: str
    path: str
    tokenizer: Any = None
    block_size: int | None = None
    max_new_tokens: int | None = None
    stop_ids: tuple[int, ...] = ()
    """Every token id that ends a response (generation_config's eos list); empty: just `eos_id`."""
    native: bool = True
    """Loaded into a transformers class (False: the checkpoint's own code, `--trust-remote-code`)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        use_grouped_sdpa(self.net)  # grouped-query attention reads the KV heads in place (t3d.dllm.attention)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The ids that stop a response; `eos_id` (the padding target) comes first."""
        return (self.eos_id,) + tuple(i for i in self.stop_ids if i != self.eos_id)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_len: int = 0,
        block_size: int | None = None,
    ) -> torch.Tensor:
        """Per-position logits (B, T, V), row i predicting token i.

        input_ids: (B, T) int64, prompts left-padded then the response.
        attention_mask: (B, T) bool, False on padding (None: no padding).
        prompt_len: columns before the response (padding included); block-causal only.
        block_size: response block size; block-causal only (defaults to the model's).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        bias = self.family.attention_bias(
            attention_mask, prompt_len, block_size or self.block_size, self._mask_dtype()
        )  # (B, 1, T, T)
        return self.logits_with_bias(input_ids, bias, masks.position_ids(attention_mask))

    def logits_with_bias(
        self, input_ids: torch.Tensor, attention_bias: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, T, V) under a ready-made additive mask (B, 1, T, T) and positions (B, T).

        For layouts the family does not build itself, such as the trainer's
        [prompt | clean | noisy] sequence; the family's logit alignment still applies.
        """
        return self.family.align(self._forward(input_ids, attention_bias, position_ids))  # (B, T, V)

    def response_rows(
        self, input_ids: torch.Tensor, attention_bias: torch.Tensor, position_ids: torch.Tensor, length: int,
        select: torch.Tensor, split_head: bool = True,
    ) -> HeadRows:  # fmt: skip
        """What predicts the `select`ed response tokens: the LM head's input there, and the head.

        For the trainer, whose sequence ends with the response copy (its last `length`
        columns) and which reads log p of a few ids per position, never all V logits.
        select: (B, L = length) bool, row-major, giving N rows. With `split_head` and a
        plain linear head (`lm_head`) the trunk alone runs and the rows are its hidden
        states (N, H), so the caller applies the head in chunks; otherwise the whole
        network runs (its head only on the last length + 1 columns when it can) and the
        rows are logits (N, V) in the model's dtype. Either way aligned by the family.
        """
        head = self.lm_head if split_head else None
        if head is not None:
            hidden = self.net.model(input_ids=input_ids, attention_mask=attention_bias, position_ids=position_ids,
                                    use_cache=False).last_hidden_state  # (B, T, H)  # fmt: skip
            return HeadRows(self._response(hidden, length)[select], head.weight, head.bias)
        keep = length + 1 if self.accepts_logits_to_keep else None
        logits = self._forward(input_ids, attention_bias, position_ids, logits_to_keep=keep)  # (B, T' >= L + 1, V)
        return HeadRows(self._response(logits, length)[select], None, None)

    @property
    def lm_head(self) -> torch.nn.Linear | None:
        """The LM head when the network is a trunk (`.model`) plus a plain linear head, else None
        (soft-capped or scaled logits, remote code: only the whole network gives logits)."""
        net = self.net
        head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
        config = getattr(net, "config", None)
        scaled = any(getattr(config, key, None) not in (None, 1, 1.0) for key in
                     ("final_logit_softcapping", "logit_scale", "logits_scaling"))  # fmt: skip
        if not isinstance(head, torch.nn.Linear) or not isinstance(getattr(net, "model", None), torch.nn.Module) or scaled:
            return None
        return head

    def _response(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """Rows (B, T, ...) -> (B, L, ...) whose row j predicts the response's token j (its last L columns)."""
        return self.family.align(x[:, -(length + 1) :])[:, 1:]

    def _forward(
        self, input_ids: torch.Tensor, attention_bias: torch.Tensor, position_ids: torch.Tensor,
        logits_to_keep: int | torch.Tensor | None = None, **kwargs: Any,
    ) -> torch.Tensor:  # fmt: skip
        """The network's raw (unaligned) logits: the one call of the whole network."""
        if logits_to_keep is not None:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.net(input_ids=input_ids, attention_mask=attention_bias, position_ids=position_ids, **kwargs)
        return out.logits if hasattr(out, "logits") else out[0]

    def identity(self) -> dict[str, Any]:
        """What names this model in a dataset manifest and a checkpoint (`t3d.dllm.identity`)."""
        return model_identity(self, name=self.name, fingerprint=self.fingerprint, path=self.path)

    def to(self, device: str | torch.device) -> DiffusionLM:
        self.net.to(device)
        return self

    def _mask_dtype(self) -> torch.dtype:
        dtype = self.dtype
        return dtype if dtype.is_floating_point else torch.float32

    # Partial and cached calls, for the rollout engine (t3d.dllm.engine).

    @property
    def cache_argument(self) -> str | None:
        """The name under which the network's forward takes a KV cache (`cache` or `past_key_values`), or None."""
        return _forward_arguments(type(self.net)).get("cache")

    @property
    def accepts_logits_to_keep(self) -> bool:
        """Whether the network can run its LM head on chosen positions only."""
        return bool(_forward_arguments(type(self.net)).get("logits_to_keep"))

    def source_columns(self, width: int, device: torch.device | None = None) -> torch.Tensor:
        """(width,) raw output column that predicts each position once the family's alignment is applied.

        Found by aligning the column indices themselves, so a family's `align` stays the
        one place that knows its shift.
        """
        probe = torch.arange(width, device=device, dtype=torch.float32)[None, :, None]  # (1, T, 1)
        return self.family.align(probe)[0, :, 0].long()  # (T,)

    def store_keys(self, input_ids: torch.Tensor, attention_bias: torch.Tensor, position_ids: torch.Tensor, cache: Any) -> None:
        """A forward for its keys only (a cache prefill or commit): no LM-head row is computed.

        The trunk alone runs when the head is a plain linear one; otherwise the whole
        network, its head on no column where it takes `logits_to_keep` (else on all).
        """
        trunk = self.net.model if self.lm_head is not None else None
        argument = _forward_arguments(type(trunk)).get("cache") if trunk is not None else None
        if argument is not None:
            trunk(input_ids=input_ids, attention_mask=attention_bias, position_ids=position_ids,
                  use_cache=True, **{argument: cache})  # fmt: skip
            return
        none = torch.zeros(0, dtype=torch.long, device=input_ids.device)  # (0,) columns
        self.raw_logits_at(input_ids, attention_bias, position_ids, none, cache)

    def raw_logits_at(
        self,
        input_ids: torch.Tensor,
        attention_bias: torch.Tensor,
        position_ids: torch.Tensor,
        columns: torch.Tensor | None = None,
        cache: Any = None,
        rows_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unaligned network logits at input `columns` only (B, K, V), or all columns (B, T, V) when None.

        The LM head runs only on `columns` when the network takes `logits_to_keep`; `cache`
        (a transformers `Cache`) is passed under the network's own argument name.
        rows_keep (B, m): of those K columns, the m each row needs (a row's own positions);
        the LM head then runs on (B, m) hidden states only (its input is gathered by a
        pre-hook on the output embeddings for this call), and (B, m, V) is returned.
        """
        kwargs: dict[str, Any] = {}
        if cache is not None:
            kwargs = {self.cache_argument: cache, "use_cache": True}
        keep = columns if columns is not None and self.accepts_logits_to_keep else None
        head_rows = rows_keep if keep is not None else None  # the head's input is then (B, K, H)
        with _head_rows(self.net, head_rows, len(columns) if head_rows is not None else 0) as gathered:
            logits = self._forward(input_ids, attention_bias, position_ids, logits_to_keep=keep, **kwargs)
        if columns is not None and keep is None:
            logits = logits[:, columns]
        if rows_keep is not None and not gathered:
            logits = take_rows(logits, rows_keep)
        return logits


@contextlib.contextmanager
def _head_rows(net: torch.nn.Module, rows_keep: torch.Tensor | None, width: int):
    """While active, the LM head sees only hidden states rows_keep (B, m) of its (B, K = width, H) input.

    Yields a list that is non-empty once the gather happened (a network whose head input
    has another shape is left alone; the caller then picks the rows from the logits).
    """
    done: list[bool] = []
    head = net.get_output_embeddings() if rows_keep is not None and hasattr(net, "get_output_embeddings") else None
    if head is None:
        yield done
        return

    def gather(module, args):
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[:2] != (rows_keep.shape[0], width):
            return None
        done.append(True)
        return (take_rows(hidden, rows_keep), *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield done
    finally:
        handle.remove()


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, K, D), index (B, m) -> (B, m, D): whole rows copied, not an index per element."""
    flat = (index + torch.arange(len(index), device=index.device)[:, None] * x.shape[1]).flatten()
    return x.flatten(0, 1).index_select(0, flat).unflatten(0, index.shape)


@functools.cache
def _forward_arguments(cls: type) -> dict[str, Any]:
    """What a network class's forward accepts that the engine can use."""
    params = inspect.signature(cls.forward).parameters
    cache = next((name for name in ("cache", "past_key_values") if name in params), None)
    return {"cache": cache, "logits_to_keep": "logits_to_keep" in params}
