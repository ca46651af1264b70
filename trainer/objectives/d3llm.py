"""`--loss d3llm`: d3LLM's pseudo-trajectory distillation (hao-ai-lab/d3LLM), on t3d's trajectory states.

d3LLM masks the current block as the teacher's own decoding had it at some step (a
"pseudo-trajectory": the teacher's reveal order laid over the response) and trains

    row r:  ( CE_r(x) + CE_r(x') + w · H_r(x) ) / 4

with x' the complementary state (`--complement`, on in its config), H_r the mean entropy
of softmax(logits / T) over the masked positions predicted right (as `certainty`, but
without the complement's entropy), w = 2, T = 0.5. t3d's `trajectory` states are exactly
such states, cut from the rollout's own reveal order, so what it needs from the dataset
is the reveal order (every t3d dataset holds it; dense states are not needed because
t3d's samplers never remask). d3LLM's schedules (mask ratio rising 0 -> 0.8 over training,
block size 16 -> 32 over epochs) and its per-micro-batch token means are not reproduced:
see docs/OBJECTIVES.md. Means per row, over the step's rows, as `certainty`.
"""

from __future__ import annotations

from t3d.trainer.objectives.base import register
from t3d.trainer.objectives.certainty import Certainty


@register
class D3LLM(Certainty):
    """`certainty` without the complement's entropy term, divided by 4 (d3LLM's training loss)."""

    name = "d3llm"
    complement_entropy = False
    scale = 0.25
