"""The stage scheduler: `t3d-run` runs collect -> distill -> eval per round on Ray, resumable stage by stage.

Above both stages: it reaches each through the entry the stage offers schedulers
(`t3d.pipeline.stage`, `t3d.trainer.stages`); neither stage imports it.
"""
