import pytest

from t3d.dllm import load_model
from t3d.dllm.tiny import build_checkpoint


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """One random tiny checkpoint per family, saved and loaded through the real loader."""
    root = tmp_path_factory.mktemp("tiny")
    return {fam: load_model(build_checkpoint(root / fam, fam)) for fam in ("bidirectional", "shifted", "block_causal")}
