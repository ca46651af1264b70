"""The built-in job is bit-identical to the recorded version: same shards, same students, same eval numbers.

The expected values in tests/data/identity.json were recorded from the code before the
redesign (its `recorded_from` says which commit); a change that alters a shard column, a
student weight or an eval number of the built-in job fails here, naming what moved.
A deliberate change of behaviour re-records the file with `python tests/identity_fingerprint.py`
and says why in its commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from identity_fingerprint import fingerprint

EXPECTED = Path(__file__).parent / "data" / "identity.json"


@pytest.mark.slow
def test_builtin_job_is_bit_identical_to_the_recorded_version(tmp_path, ray_session):
    expected = json.loads(EXPECTED.read_text())
    found = fingerprint(tmp_path, address=ray_session.address)

    moved_shards = sorted(k for k, v in expected["shards"].items() if found["shards"].get(k) != v)
    assert not moved_shards, f"shard columns/arrays changed: {moved_shards}"
    assert sorted(found["shards"]) == sorted(expected["shards"]), "shard columns/arrays added or removed"
    moved_students = sorted(k for k, v in expected["students"].items() if found["students"].get(k) != v)
    assert not moved_students, f"student weights after 30 steps changed: {moved_students}"
    moved_eval = {k: (v, found["eval"].get(k, "missing")) for k, v in expected["eval"].items() if found["eval"].get(k, "missing") != v}
    assert not moved_eval, f"eval numbers changed (expected, found): {moved_eval}"
