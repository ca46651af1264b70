"""One identity builder: a checkpoint described without its weights and the loaded model name themselves alike."""

import json

import pytest

from t3d.dllm.loading import BUILTIN_DIR, describe_checkpoint, load_model

# The built-in teacher's identity as datasets collected before the identity builder store it
# (manifest.json `teacher`, key order included); only the checkout's path is filled in.
BUILTIN = (
    '{"name": "builtin", "fingerprint": "fc19a7f41a4a41ab", "family": "bidirectional", "vocab_size": 36, '
    '"mask_id": 2, "pad_id": 0, "eos_id": 3, "stop_ids": [3], "path": PATH}'
)


def test_the_builtin_identity_keeps_its_stored_bytes():
    expected = BUILTIN.replace("PATH", json.dumps(str(BUILTIN_DIR)))
    assert json.dumps(describe_checkpoint("builtin").identity("builtin")) == expected
    assert json.dumps(load_model("builtin").identity()) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sdar", "llada", "dream"])
def test_checkpoint_and_loaded_model_give_the_same_identity(real_fixtures, name):
    path = (real_fixtures / name).resolve()
    described = describe_checkpoint(path).identity()
    loaded = load_model(path).identity()
    assert json.dumps(described) == json.dumps(loaded)
    assert described["stop_ids"][0] == described["eos_id"]
    assert len(set(described["stop_ids"])) == len(described["stop_ids"])
