"""Run a test module's function on several gloo workers in spawned processes, without Ray.

Each worker imports the test file itself (so whatever it registers at import, an
objective or a family, is registered there too), joins a gloo process group through a
file store and returns `function(rank, world, *args)` to the parent.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import traceback
from pathlib import Path
from typing import Any


def _child(rank: int, world: int, test_file: str, name: str, args: tuple, store: str, queue) -> None:
    import torch

    try:
        torch.set_num_threads(1)
        spec = importlib.util.spec_from_file_location(f"_worker_{Path(test_file).stem}", test_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        try:
            queue.put((rank, getattr(module, name)(rank, world, *args), None))
        finally:
            torch.distributed.destroy_process_group()
    except BaseException:  # noqa: BLE001  (the parent reports it)
        queue.put((rank, None, traceback.format_exc()))


def run_workers(test_file: str | Path, name: str, args: tuple, store: Path, world: int = 2, timeout: float = 600) -> list[Any]:
    """[function(rank, world, *args) for each rank], run in `world` spawned gloo workers."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(r, world, str(test_file), name, args, str(store), queue)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        got = sorted((queue.get(timeout=timeout) for _ in procs), key=lambda item: item[0])
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    errors = [err for _, _, err in got if err]
    if errors:
        raise RuntimeError("a worker failed:\n" + errors[0])
    return [value for _, value, _ in got]
