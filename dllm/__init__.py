"""The diffusion-LM core: model loading, attention masks, trajectory-recording samplers,
the built-in task and its tiny teacher."""

from t3d.dllm.errors import UserError
from t3d.dllm.loading import load_model
from t3d.dllm.model import DiffusionLM
from t3d.dllm.sampling import SampleOutput, SamplerConfig, sample

__all__ = ["DiffusionLM", "SampleOutput", "SamplerConfig", "UserError", "load_model", "sample"]
