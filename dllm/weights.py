"""Safetensors weights in and out, strictly: a loader that cannot silently corrupt a model.

Reading: every `*.safetensors` file of a checkpoint (or the files a
`model.safetensors.index.json` names), each tensor renamed by the family's architecture,
checked finite, cast to the load dtype and assigned into a network built on the meta
device. Missing, unexpected and mis-shaped tensors are one-line errors naming them;
buffers the checkpoint does not hold (RoPE's `inv_freq`) are computed from the config,
and a network with any tensor left on the meta device is refused.

Writing (`save_like`): a network's weights under the checkpoint's own names, dtype and
shard layout, so a trained student drops into the tools that load its teacher.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from t3d.dllm.errors import UserError

INDEX = "model.safetensors.index.json"


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: those its index names, else `model.safetensors`, else every *.safetensors.

    (A trainer checkpoint also holds `reference.safetensors`, which is not part of the model.)
    """
    index = path / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{index}: not a safetensors index (no weight_map)") from None
        files = sorted({path / name for name in weight_map.values()})
        for file in files:
            if not file.is_file():
                raise UserError(f"{index} names {file.name}, which is not in {path}")
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"no safetensors weights in model directory {path} (t3d loads safetensors only)")
    for file in files:
        check_complete(file)
    return files


def check_complete(file: Path) -> None:
    """A truncated or corrupt safetensors file (a download cut short) as a one-line error naming it.

    Opening a file parses its header and checks that the data covers every tensor it
    lists: cheap (a memory map, no tensor is read), and it runs before any weight is
    loaded, wherever a checkpoint is described or read.
    """
    with open_weights(file):
        pass


@contextlib.contextmanager
def open_weights(file: Path, device: str | torch.device = "cpu") -> Iterator[Any]:
    """`safetensors.safe_open` whose errors are one-line UserErrors naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device=str(device)) as fh:
            yield fh
    except (SafetensorError, OSError, RuntimeError) as err:
        if isinstance(err, UserError):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = reason.removeprefix("Error while deserializing header: ")
        raise UserError(f"{file} is truncated or corrupt, not a readable safetensors file ({reason})") from None


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file (on CPU), or a one-line error naming the file."""
    with open_weights(file) as fh:
        return {name: fh.get_tensor(name) for name in fh.keys()}


def checkpoint_dtype(path: Path) -> torch.dtype:
    """The dtype the weights are stored in (of the first floating-point tensor)."""
    for file in weight_files(path):
        with open_weights(file) as fh:
            for name in fh.keys():
                dtype = fh.get_slice(name).get_dtype()
                if dtype in _SAFETENSORS_FLOATS:
                    return _SAFETENSORS_FLOATS[dtype]
    return torch.float32


def parameter_count(files: list[Path]) -> int:
    """Elements stored in these safetensors files (`weight_files` of a checkpoint), read from their headers only."""
    total = 0
    for file in files:
        with open_weights(file) as fh:
            total += sum(math.prod(fh.get_slice(name).get_shape()) for name in fh.keys())
    return total


_SAFETENSORS_FLOATS = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def iter_tensors(path: Path, device: str | torch.device = "cpu") -> Iterator[tuple[str, Path, torch.Tensor]]:
    """(name, file, tensor) for every tensor of the checkpoint, one at a time."""
    for file in weight_files(path):
        with open_weights(file, device) as fh:
            for name in fh.keys():
                yield name, file, fh.get_tensor(name)


def load_into(
    net: torch.nn.Module,
    path: Path,
    rename: Callable[[str], str],
    dtype: torch.dtype,
    device: str | torch.device,
) -> None:
    """Fill a meta-device `net` from the checkpoint at `path`, strictly.

    rename: checkpoint name -> parameter name. Tied parameters (an LM head sharing the
    embedding) may be absent from the checkpoint; everything else must match exactly.
    """
    expected = {name: t for name, t in net.state_dict(keep_vars=True).items()}
    tied = _tied_names(net)
    loaded: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for name, file, tensor in iter_tensors(path, device):
        target = rename(name)
        if target in loaded:
            raise UserError(f"{path}: tensor {name} is stored twice ({file.name} and another file)")
        if target not in expected:
            unexpected.append(name)
            continue
        want = expected[target]
        if tuple(tensor.shape) != tuple(want.shape):
            raise UserError(
                f"{file.name}: tensor {name} has shape {tuple(tensor.shape)}, the config implies {tuple(want.shape)}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{file.name}: tensor {name} holds NaN or inf values")
        loaded[target] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    if unexpected:
        raise UserError(f"{path}: unexpected tensors not in the model: {_names(unexpected)}")
    persistent = set(dict(net.named_parameters())) | _persistent_buffers(net)
    missing = sorted(n for n in persistent if n not in loaded and n not in tied)
    if missing:
        raise UserError(f"{path}: tensors missing from the checkpoint: {_names(missing)}")
    net.load_state_dict(loaded, strict=False, assign=True)
    if tied:
        net.tie_weights()
    _materialise_buffers(net, device)
    _check_no_meta(net, path)


def _names(names: list[str], most: int = 4) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" (+{len(names) - most} more)" if len(names) > most else "")


def _tied_names(net: torch.nn.Module) -> set[str]:
    """Parameters that share another's storage when the config ties them (the LM head)."""
    config = getattr(net, "config", None)
    if not getattr(config, "tie_word_embeddings", False):
        return set()
    keys = getattr(net, "_tied_weights_keys", None) or {}
    return set(keys if isinstance(keys, dict) else keys)


def _persistent_buffers(net: torch.nn.Module) -> set[str]:
    names = set()
    for module_name, module in net.named_modules():
        for buffer_name in module._buffers:
            if buffer_name not in module._non_persistent_buffers_set:
                names.add(f"{module_name}.{buffer_name}" if module_name else buffer_name)
    return names


def _materialise_buffers(net: torch.nn.Module, device: str | torch.device) -> None:
    """Recompute the meta-device buffers (RoPE's inv_freq) from the config on `device`."""
    rebuild_buffers(net, device, only_meta=True)


def rebuild_buffers(net: torch.nn.Module, device: str | torch.device, only_meta: bool = False) -> list[str]:
    """Rebuild every module holding non-persistent buffers from the config; the names rebuilt.

    Rotary modules (transformers' and most remote code's) compute `inv_freq` in `__init__`
    from the config. transformers 5 builds a model on the meta device and never runs
    remote code's initialisers for such buffers, so they hold whatever memory was there
    (1e-38, -7e30). Each module is built again on the real device from the config and its
    non-persistent buffers are copied over; a module that cannot be rebuilt is left as it
    is (the caller decides whether that is fatal).
    """
    config = getattr(net, "config", None)
    rebuilt = []
    for name, module in net.named_modules():
        transient = [b for b in module._buffers if b in module._non_persistent_buffers_set]
        if not transient or (only_meta and not any(module._buffers[b].is_meta for b in transient)):
            continue
        fresh = _build_like(module, getattr(module, "config", None) or config, device)
        if fresh is None:
            continue
        for buffer in transient:
            module._buffers[buffer] = fresh._buffers[buffer].to(device)
        for attr in ("original_inv_freq",):  # transformers keeps a plain-attribute copy for dynamic RoPE
            if hasattr(fresh, attr):
                setattr(module, attr, getattr(fresh, attr))
        rebuilt.append(name)
    return rebuilt


def _build_like(module: torch.nn.Module, config, device) -> torch.nn.Module | None:
    if config is None:
        return None
    try:
        with torch.device(device):
            return type(module)(config=config)
    except TypeError:
        return None


def _check_no_meta(net: torch.nn.Module, path: Path) -> None:
    for name, tensor in list(net.named_parameters()) + list(net.named_buffers()):
        if tensor.is_meta:
            raise UserError(f"{path}: {name} was never initialised (not in the checkpoint, not computable)")


def state_dict_for_export(net: torch.nn.Module, rename: Callable[[str], str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The network's persistent tensors under checkpoint names, cast to `dtype`, tied copies dropped."""
    tied = _tied_names(net)
    persistent = set(dict(net.named_parameters())) | _persistent_buffers(net)
    out = {}
    for name, tensor in net.state_dict().items():
        if name in tied or name not in persistent:
            continue
        value = tensor.detach().to("cpu")
        out[rename(name)] = value.to(dtype).contiguous() if value.is_floating_point() else value.contiguous()
    return out


def save_like(tensors: dict[str, torch.Tensor], out: Path, layout_of: Path) -> None:
    """Write `tensors` into `out` in the shard layout of the checkpoint `layout_of`.

    Each tensor goes to the file that held the tensor of the same name in `layout_of`
    (a sharded checkpoint stays sharded, with the same index when it had one); an
    unsharded one stays a single file.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    index = layout_of / INDEX
    weight_map = _weight_map(layout_of)
    missing = sorted(set(tensors) - set(weight_map))
    if missing and len(set(weight_map.values())) > 1:
        raise UserError(f"{layout_of} has no shard for {_names(missing)}")
    single = weight_files(layout_of)[0].name  # unsharded: every tensor in the one file
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        shards.setdefault(weight_map.get(name, single), {})[name] = tensor
    for file, part in sorted(shards.items()):
        save_file(part, str(out / file), metadata={"format": "pt"})
    if not index.is_file():
        return
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    new_index = {"metadata": {"total_size": total}, "weight_map": {n: weight_map[n] for n in sorted(tensors)}}
    tmp = out / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(new_index, indent=2) + "\n")
    os.replace(tmp, out / INDEX)


def _weight_map(path: Path) -> dict[str, str]:
    """Tensor name -> file name of a checkpoint: its index, else read from the files themselves."""
    index = path / INDEX
    if index.is_file():
        return json.loads(index.read_text())["weight_map"]
    weight_map = {}
    for file in weight_files(path):
        with open_weights(file) as fh:
            weight_map |= {name: file.name for name in fh.keys()}
    return weight_map


def write_shards(tensors: dict[str, torch.Tensor], out: Path, shards: int) -> None:
    """Write `tensors` as `shards` files `model-0000i-of-0000n.safetensors` plus the index (1: `model.safetensors`)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    if shards <= 1:
        save_file({n: tensors[n] for n in names}, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {name: files[i * shards // len(names)] for i, name in enumerate(names)}
    for file in files:
        save_file({n: tensors[n] for n in names if weight_map[n] == file}, str(out / file), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
