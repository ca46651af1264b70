"""Stage 2: distil a few-step student from trajectory shards (`t3d-distill`, `t3d-eval`)."""
