"""Families of networks written by transformers itself (the built-in models, `t3d_family` in config.json).

Their checkpoints load with the config's own transformers class and unchanged weight
names; they differ only in attention layout and logit alignment. They are also the
interfaces an unknown checkpoint can be run through with `--trust-remote-code --family`.
"""

from t3d.dllm.families.base import Family

BIDIRECTIONAL = Family()

SHIFTED = Family(
    name="shifted",
    description="bidirectional attention, logits shifted by one (Dream-style)",
    shifted=True,
)

BLOCK_CAUSAL = Family(
    name="block_causal",
    description="block-causal attention: a block sees itself and earlier blocks, blocks start at the response",
    block_causal=True,
)
