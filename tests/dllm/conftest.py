import json

import pytest
import torch

from t3d.dllm import load_model
from t3d.dllm.tiny import build_checkpoint


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """One random tiny checkpoint per family, saved and loaded through the real loader."""
    root = tmp_path_factory.mktemp("tiny")
    return {fam: load_model(build_checkpoint(root / fam, fam)) for fam in ("bidirectional", "shifted", "block_causal")}


def _rope_fix(net: torch.nn.Module, theta: float, head_dim: int) -> None:
    """transformers 5 leaves the remote code's inv_freq uninitialised: give the reference its true value."""
    for module in net.modules():
        if hasattr(module, "inv_freq"):
            true = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
            module.inv_freq = true
            if hasattr(module, "original_inv_freq"):
                module.original_inv_freq = true


def _upstream(real_fixtures, name: str) -> torch.nn.Module:
    """A `-compat` fixture through its own modelling code: the reference implementation."""
    from transformers import AutoModel, AutoModelForCausalLM

    path = real_fixtures / f"{name}-compat"
    config = json.loads((path / "config.json").read_text())
    cls = AutoModelForCausalLM if "AutoModelForCausalLM" in config.get("auto_map", {}) else AutoModel
    net = cls.from_pretrained(path, trust_remote_code=True, dtype=torch.float32, local_files_only=True).eval()
    heads = config.get("num_attention_heads") or config.get("n_heads")
    head_dim = config.get("head_dim") or (config.get("hidden_size") or config["d_model"]) // heads
    _rope_fix(net, float(config["rope_theta"]), head_dim)
    return net



@pytest.fixture(scope="session")
def upstream_net(real_fixtures):
    """name -> the family's own network (sdar, llada, llada_v2, dream), fp32, eval mode."""
    return lambda name: _upstream(real_fixtures, name)


@pytest.fixture(scope="session")
def upstream_decoder(realckpt):
    """family -> the module of its own reference decoder (sdar/generate.py, llada/generate.py)."""
    import importlib.util

    def load(family: str):
        path = realckpt / "upstream" / family / "generate.py"
        spec = importlib.util.spec_from_file_location(f"upstream_{family}_generate", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
