"""What an objective is: its step on one micro-batch, its metrics and how each reduces.

An objective receives a micro-batch (`Micro`: the training states, the rows, the step's
counts, the student and reference log-prob modules) and returns `(loss, metrics)`. The
loss is already divided by counts of the whole optimizer step (every micro-batch of
every worker, `Objective.counts`), so the step's loss is the sum of the micro-batch
losses. Every metric is a `Metric`: an explicit numerator and count, so that the loop
reduces it exactly over accumulation and workers (Σ numerator / Σ count) without
knowing its name: a loss part is a sum (count None), a per-sequence or per-token mean
carries its count. A metric cannot be returned without saying how it reduces.

Objectives are registered by name (`register`); `--loss NAME` picks one; one file each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from t3d.trainer.losses import normalizer_counts

if TYPE_CHECKING:
    from t3d.trainer.data import Batch
    from t3d.trainer.states import StateConfig, TrainingStates


@dataclass(frozen=True)
class Metric:
    """One micro-batch's share of a step metric: the step's value is Σ numerator / Σ count
    over every micro-batch of every worker; count None: Σ numerator (a loss part already
    divided by the step's count, or a count)."""

    numerator: Tensor | float
    count: Tensor | float | None = None

    @classmethod
    def total(cls, value: Tensor | float) -> Metric:
        """A value that adds up over micro-batches and workers."""
        return cls(torch.as_tensor(value).detach())

    @classmethod
    def mean(cls, mean: Tensor, count: Tensor) -> Metric:
        """A mean over `count` items (sequences or tokens) of this micro-batch; numerator = mean x count
        in float64 (exact for float32 means), so one micro-batch gives back exactly its mean."""
        count = torch.as_tensor(count).detach()
        return cls(torch.as_tensor(mean).detach().double() * count.double(), count)


Metrics = dict[str, Metric]


@dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    """Which objective to train and its weights."""

    kind: str = "t3d"
    """A registered objective's name (`OBJECTIVES`; docs/OBJECTIVES.md says what each computes): "t3d"
    (DDO + λ_path·path), "ddo", "ce", "fkl", "certainty" (dParallel), "cap" (LLaDA 2.0), "d3llm", ..."""
    alpha: float = 0.5
    """Weight of the fake term of DDO."""
    beta: float = 0.1
    """Scale of the log-ratio inside the implicit discriminator; sweep 0.1-1."""
    lambda_path: float = 0.2
    """Weight of the path loss in "t3d"."""
    fake_temperature: float = 0.0
    """0: the fake is the reference's argmax; > 0: a sample at this temperature."""
    entropy_weight: float = 2.0
    """Weight of the certainty term (entropy on correctly predicted masked tokens) of "certainty", "cap" and "d3llm"."""
    entropy_temperature: float = 0.5
    """Softmax temperature of that entropy in "certainty" and "d3llm" (dParallel, d3LLM: 0.5; "cap" uses 1)."""
    complement: bool = True
    """"certainty" and "d3llm" also train each state's complement (masked and shown tokens of its blocks swapped)."""

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.kind!r}; choose from {sorted(OBJECTIVES)}")
        if self.alpha < 0 or self.beta <= 0 or self.lambda_path < 0 or self.fake_temperature < 0:
            raise ValueError("need alpha >= 0, beta > 0, lambda_path >= 0, fake_temperature >= 0")
        if self.entropy_weight < 0 or self.entropy_temperature <= 0:
            raise ValueError("need entropy_weight >= 0, entropy_temperature > 0")


@dataclass(frozen=True, kw_only=True)
class Micro:
    """What an objective gets for one micro-batch."""

    states: TrainingStates
    """The micro-batch's training states, on the device."""
    batch: Batch
    """Its rows as read (the stored teacher top-k lives here)."""
    norms: dict[str, Tensor]
    """`Objective.counts` summed over the step's micro-batches and workers: what the losses divide by."""
    cfg: ObjectiveConfig
    """The objective's weights."""
    student: nn.Module
    """The student's `ResponseLogProbs` (wrapped by DDP / FSDP with more than one worker)."""
    reference: nn.Module | None = None
    """The reference's `ResponseLogProbs` (objectives that declare `needs_reference`)."""
    seed: int = 0
    """This micro-batch's own seed (from the run's seed, step, worker and micro-batch): resume replays it."""
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    """The mixed-precision context the networks' forward passes run in."""

    def generator(self) -> torch.Generator:
        """A generator on the states' device seeded with `seed`."""
        return torch.Generator(device=self.states.targets.device).manual_seed(self.seed)


class Objective:
    """A registered objective. Subclasses set the capabilities and implement `loss`."""

    name: ClassVar[str] = ""
    needs_reference: ClassVar[bool] = False
    """The loop keeps a frozen reference model (DDO's p_ref and fake answer)."""
    arrays: ClassVar[tuple[str, ...]] = ()
    """The stored arrays (`t3d.storage_schemas.ARRAYS` names) it reads from `Micro.batch.arrays`: the data
    loader reads them with the rows and refuses, in one line, a dataset whose shards lack one."""
    parts: ClassVar[tuple[str, ...]] = ("loss",)
    """Its loss parts (metric names): what a run's summary line reports."""

    def counts(self, states: TrainingStates) -> dict[str, Tensor]:
        """Counts of one micro-batch the losses divide by once summed over the step (known before any forward)."""
        return normalizer_counts(states.supervised, states.path, states.padding)

    def loss(self, micro: Micro) -> tuple[Tensor, Metrics]:
        """Forward passes and the loss of one micro-batch -> (loss with grad, metrics)."""
        raise NotImplementedError

    def describe(self, cfg: ObjectiveConfig, states: StateConfig) -> str | None:
        """Its weights in words for the run's opening lines (None: nothing to say)."""
        return None


OBJECTIVES: dict[str, Objective] = {}
"""Every registered objective by its `--loss` name."""


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: `--loss cls.name` trains with it."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    OBJECTIVES[cls.name] = cls()
    return cls


def get_objective(kind: str) -> Objective:
    return OBJECTIVES[kind]


def loss_parts(kind: str) -> tuple[str, ...]:
    """The loss part names of objective `kind` (the summary of a run)."""
    return OBJECTIVES[kind].parts


# ---- helpers for objectives that read log-probs at chosen response positions ----


def response_inputs(states: TrainingStates, select: Tensor) -> tuple:
    """The positional arguments of `ResponseLogProbs` for the positions `select` (B, L) bool."""
    return states.input_ids, states.attention_bias, states.position_ids, states.targets.shape[1], select


def scatter(values: Tensor, select: Tensor) -> Tensor:
    """(N, ...) values at the True positions of select (B, L) -> (B, L, ...), zeros elsewhere (differentiable)."""
    dense = values.new_zeros((*select.shape, *values.shape[1:]))
    return dense.index_put(select.nonzero(as_tuple=True), values)
