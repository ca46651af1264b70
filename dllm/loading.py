"""Load a diffusion LM from a local Hugging Face-format directory (or the shipped `builtin`).

Nothing is downloaded: every call passes `local_files_only=True`. Weights load from
safetensors only, and custom modelling code runs only when the user asks for it.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import torch

from t3d.dllm.errors import UserError
from t3d.dllm.families import KNOWN_MASK_IDS, KNOWN_MODEL_TYPES, get_family
from t3d.dllm.model import DiffusionLM

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"


def resolve_model_path(path: str | Path) -> Path:
    """`builtin` -> the shipped teacher; anything else must be a checkpoint directory."""
    if str(path) == "builtin":
        return BUILTIN_DIR
    return Path(path).expanduser()


def check_checkpoint_dir(path: Path) -> None:
    """One-line errors for the usual ways a checkpoint directory is wrong."""
    if not path.exists():
        raise UserError(f"model directory not found: {path}")
    if not path.is_dir():
        raise UserError(f"model path is not a directory: {path}")
    if not (path / "config.json").is_file():
        raise UserError(f"no config.json in model directory {path}")
    if not list(path.glob("*.safetensors")):
        raise UserError(f"no safetensors weights in model directory {path} (t3d loads safetensors only)")


def weights_fingerprint(path: Path) -> str:
    """sha256 over each safetensors file's name, size, first and last MiB (cheap on 16 GB)."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def load_config(path: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except ValueError as err:
        if "trust_remote_code" in str(err) and not trust_remote_code:
            raise UserError(f"checkpoint {path} needs its own modelling code: pass --trust-remote-code if you trust it") from None
        raise UserError(f"cannot read config.json in {path}: {str(err).splitlines()[0]}") from None


def load_tokenizer(path: Path, trust_remote_code: bool) -> Any:
    """The checkpoint's tokenizer, or None when the directory has none (ids-only use)."""
    from transformers import AutoTokenizer

    has_tokenizer = any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    if not has_tokenizer:
        return None
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)


def _first_id(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def special_ids(config: Any, tokenizer: Any, path: Path) -> tuple[int, int, int]:
    """(mask, pad, eos) from the config, then the tokenizer, then known checkpoints."""
    model_type = getattr(config, "model_type", "")
    mask_id = _first_id(getattr(config, "mask_token_id", None))
    if mask_id is None and tokenizer is not None:
        mask_id = _first_id(getattr(tokenizer, "mask_token_id", None))
    if mask_id is None:
        mask_id = KNOWN_MASK_IDS.get(model_type)
    if mask_id is None:
        raise UserError(f"checkpoint {path} has no mask token: set mask_token_id in its config.json")
    eos_id = _first_id(getattr(config, "eos_token_id", None))
    if eos_id is None and tokenizer is not None:
        eos_id = _first_id(tokenizer.eos_token_id)
    if eos_id is None:
        raise UserError(f"checkpoint {path} has no EOS token: set eos_token_id in its config.json")
    pad_id = _first_id(getattr(config, "pad_token_id", None))
    if pad_id is None and tokenizer is not None:
        pad_id = _first_id(tokenizer.pad_token_id)
    return mask_id, eos_id if pad_id is None else pad_id, eos_id


def family_name(config: Any, requested: str | None, path: Path) -> str:
    if requested:
        return requested
    configured = getattr(config, "t3d_family", None)
    if configured:
        return configured
    model_type = getattr(config, "model_type", "")
    if model_type in KNOWN_MODEL_TYPES:
        return KNOWN_MODEL_TYPES[model_type]
    raise UserError(
        f"cannot tell the model family of {path} (model_type {model_type!r}): pass --family "
        "bidirectional|shifted|block_causal or set t3d_family in config.json"
    )


def load_network(path: Path, config: Any, trust_remote_code: bool, dtype: torch.dtype | None) -> torch.nn.Module:
    """AutoModelForCausalLM, else AutoModel (LLaDA ships only the latter); eval mode."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars say what is happening

    kwargs = dict(
        config=copy.deepcopy(config),  # from_pretrained mutates the config it is given
        local_files_only=True,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        dtype=dtype or torch.float32,
    )
    if not trust_remote_code:
        kwargs["attn_implementation"] = "sdpa"
    try:
        net = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError:
        net = AutoModel.from_pretrained(path, **kwargs)
    return net.eval()


def load_model(
    path: str | Path,
    family: str | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> DiffusionLM:
    """Load a checkpoint directory (or `builtin`) as a `DiffusionLM` on `device`."""
    resolved = resolve_model_path(path)
    check_checkpoint_dir(resolved)
    config = load_config(resolved, trust_remote_code)
    fam = get_family(family_name(config, family, resolved))
    tokenizer = load_tokenizer(resolved, trust_remote_code)
    mask_id, pad_id, eos_id = special_ids(config, tokenizer, resolved)
    net = load_network(resolved, config, trust_remote_code, dtype).to(device)
    max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "max_sequence_length", None)
    return DiffusionLM(
        net=net,
        family=fam,
        mask_id=mask_id,
        pad_id=pad_id,
        eos_id=eos_id,
        vocab_size=int(config.vocab_size),
        max_length=int(max_length or 1 << 30),
        name="builtin" if str(path) == "builtin" else resolved.name,
        fingerprint=weights_fingerprint(resolved),
        path=str(resolved),
        tokenizer=tokenizer,
        block_size=getattr(config, "t3d_block_size", None) or getattr(config, "block_size", None),
        max_new_tokens=getattr(config, "t3d_max_new_tokens", None),
    )
