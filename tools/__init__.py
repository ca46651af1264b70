"""Tools beside the pipeline: `pretrain` (`t3d-pretrain`) trains the built-in tiny teacher on the built-in task.

Not a stage: nothing in dllm/, pipeline/ or trainer/ imports this package. The teacher it
trains ships as `dllm/builtin`, which `load_model("builtin")` loads like any checkpoint.
"""
