"""What the built-in job produces, reduced to hashes: the guard for refactors that must not change behaviour.

`fingerprint(workdir)` runs the public commands only (t3d-collect, t3d-distill with each
loss and the `paper` preset, t3d-eval), so the same function measures any version of the
code: `python tests/identity_fingerprint.py OUT.json` with an older checkout first on
PYTHONPATH recorded `tests/data/identity.json` (see that file's `recorded_from`).

- shards: sha256 of every Parquet column (as Arrow IPC bytes of the column) and every Zarr
  array (raw values), per shard;
- students: sha256 of every tensor of `student/model.safetensors` after 30 steps;
- eval: the numbers of the eval JSON that do not depend on the clock (quality, agreement,
  diversity, network evaluations), for the keys the recorded version had.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

STUDENTS = {
    "t3d": ["--loss", "t3d"],
    "ce": ["--loss", "ce"],
    "ddo": ["--loss", "ddo"],
    "fkl": ["--loss", "fkl"],
    "paper": ["--preset", "paper", "--epochs", "0"],  # 30 steps: before #19 the preset's epochs silently replaced --max-steps
}
STEPS = 30
WARMUP = 5  # within a quarter of the run: since #19 a longer warm-up is cut (and says so), which would move every student
LABELS = ("teacher", "config/teacher")  # which label is the anchor: #19 writes the resolved one instead of None
CLOCK_WORDS = ("second", "time", "tok_s", "tokens_per_s", "speed", "spread", "machine", "timing", "wall", "python", "torch")


def run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def shard_hashes(dataset: Path) -> dict[str, str]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zarr

    hashes: dict[str, str] = {}
    for parquet in sorted(dataset.glob("shard-*.parquet")):
        table = pq.read_table(parquet)
        for name in table.column_names:
            sink = pa.BufferOutputStream()
            column = pa.table({name: table[name]})
            with pa.ipc.new_stream(sink, column.schema) as writer:
                writer.write_table(column)
            hashes[f"{parquet.stem}/{name}"] = hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]
        group = zarr.open_group(str(parquet.with_suffix(".zarr")), mode="r")
        for name, array in sorted(group.arrays()):
            values = np.ascontiguousarray(array[...])
            digest = hashlib.sha256(str((values.dtype, values.shape)).encode() + values.tobytes())
            hashes[f"{parquet.stem}/zarr/{name}"] = digest.hexdigest()[:16]
    return hashes


def weight_hash(student: Path) -> str:
    from safetensors.numpy import load_file

    digest = hashlib.sha256()
    for path in sorted(student.glob("*.safetensors")):
        tensors = load_file(str(path))
        for name in sorted(tensors):
            digest.update(name.encode() + str(tensors[name].dtype).encode() + tensors[name].tobytes())
    return digest.hexdigest()[:16]


def eval_numbers(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten the eval JSON to `a/b/c: number` for the keys that do not depend on the clock."""
    flat: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "path" or any(word in str(key).lower() for word in CLOCK_WORDS):
                continue  # where this run's temp dir was, or the clock
            flat |= eval_numbers(item, f"{prefix}{key}/")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            flat |= eval_numbers(item, f"{prefix}{i}/")
    elif isinstance(value, (int, float, str, bool)) or value is None:
        flat[prefix.rstrip("/")] = value
    return flat


def fingerprint(workdir: Path, address: str | None = None) -> dict[str, Any]:
    """Collect, distil every student, evaluate: hashes and clock-free numbers of what they wrote."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    bin_dir = Path(sys.executable).parent
    joins = ["--address", address] if address else []
    data = workdir / "data"
    run([str(bin_dir / "t3d-collect"), "--out", str(data), "--limit", "16", "--shard-size", "8", "--rollouts-per-prompt", "2",
         "--seed", "0", "--num-workers", "1", "--no-progress", *joins], env)  # fmt: skip
    result: dict[str, Any] = {"shards": shard_hashes(data), "students": {}}
    for name, flags in STUDENTS.items():
        out = workdir / name
        run([str(bin_dir / "t3d-distill"), "--data", str(data), "--out", str(out), "--max-steps", str(STEPS),
             "--warmup-steps", str(WARMUP), "--seed", "0", "--no-progress", *flags], env)  # fmt: skip
        result["students"][name] = weight_hash(out / "student")
    report = workdir / "eval.json"
    run([str(bin_dir / "t3d-eval"), "--model", "teacher=builtin", "--model", f"t3d={workdir / 't3d' / 'student'}",
         "--limit", "12", "--steps-per-block", "4,1", "--samples-per-prompt", "2", "--timing-repeats", "1",
         "--json", str(report)], env)  # fmt: skip
    numbers = eval_numbers(json.loads(report.read_text()))
    result["eval"] = {k: v for k, v in numbers.items() if k not in LABELS}
    return result


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="t3d-identity-") as tmp:
        found = fingerprint(Path(tmp))
    Path(sys.argv[1]).write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    print(f"wrote {sys.argv[1]}: {len(found['shards'])} shard hashes, {len(found['students'])} students, "
          f"{len(found['eval'])} eval numbers")  # fmt: skip
