import pytest

from t3d.dllm import load_model
from t3d.dllm.tiny import build_checkpoint


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """One random tiny checkpoint per family, saved and loaded through the real loader."""
    root = tmp_path_factory.mktemp("tiny")
    return {fam: load_model(build_checkpoint(root / fam, fam)) for fam in ("bidirectional", "shifted", "block_causal")}


@pytest.fixture(scope="session")
def upstream_net(real_fixtures, upstream):
    """name -> the family's own network (sdar, llada, llada_v2, dream), fp32, eval mode."""
    return lambda name: upstream.net(real_fixtures / f"{name}-compat")


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
