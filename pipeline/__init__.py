"""Stage 1: teacher rollouts on Ray actors into a trajectory dataset (`t3d-collect`, `t3d-inspect`)."""
