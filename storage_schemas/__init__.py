"""The trajectory data contract between `t3d-collect` and `t3d-distill`."""
