"""Load a diffusion LM from a local Hugging Face-format directory (or the shipped `builtin`).

Nothing is downloaded: every file is read from the directory. Known families (SDAR,
LLaDA, Dream and the built-in models) load natively into transformers' own classes: the
checkpoint's config is mapped by its family, its safetensors weights renamed and loaded
strictly (`t3d.dllm.weights`), and its own .py files are never executed. Checkpoints of
model types t3d does not know run their own modelling code only with
`--trust-remote-code`, through the same family interface (`--family`).

`describe_checkpoint` reads everything but the weights (what a Ray driver needs);
`load_model` adds the network.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from t3d.dllm import weights
from t3d.dllm.errors import UserError
from t3d.dllm.families import IDENTITY, Family, family_for_model_type, get_family, known_model_types
from t3d.dllm.identity import model_identity
from t3d.dllm.model import DiffusionLM

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True, kw_only=True)
class LoadConfig:
    """How a checkpoint loads: the same three options (and help) in every command that loads a model.

    Embedded with `t3d.dllm.options.inline` beside each command's own model path (the
    teacher, the starting student, the labelled models compared), so the flags stay
    `--family`, `--dtype`, `--trust-remote-code`.
    """

    family: str | None = None
    """Model family (sdar, llada, dream, or bidirectional, shifted, block_causal); default: from the checkpoint's model_type."""
    dtype: str = "auto"
    """Weights dtype: auto (the checkpoint's own dtype on CUDA, float32 on CPU), float32, bfloat16, float16."""
    trust_remote_code: bool = False
    """Run the checkpoint's own modelling code (only for model types t3d does not load natively)."""

    def __post_init__(self) -> None:  # checked before any model or prompt is read
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.family is not None:
            get_family(self.family)  # an unknown name is a one-line error listing the known ones


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
    weights.weight_files(path)


def weights_fingerprint(path: Path) -> str:
    """sha256 over each safetensors file's name, size, first and last MiB (cheap on 16 GB)."""
    digest = hashlib.sha256()
    for file in weights.weight_files(path):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file, or a one-line error naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    return data


@dataclass(frozen=True)
class CheckpointInfo:
    """Everything about a checkpoint except its weights."""

    path: Path
    raw_config: dict[str, Any]  # config.json as written
    config: Any  # the transformers config the network is built from
    family: Family
    native: bool  # False: the checkpoint's own modelling code (--trust-remote-code)
    tokenizer: Any  # None when the directory has none
    mask_id: int
    pad_id: int
    eos_id: int
    stop_ids: tuple[int, ...]  # every id that ends a response, eos_id first
    vocab_size: int
    max_length: int
    block_size: int | None

    def identity(self, name: str | None = None) -> dict[str, Any]:
        """What names this checkpoint in a dataset manifest (`t3d.dllm.identity`, as `DiffusionLM.identity()`),
        with its absolute path, without loading the weights."""
        return model_identity(self, name=name or self.path.name, fingerprint=weights_fingerprint(self.path),
                              path=str(self.path.resolve()))  # fmt: skip


T3D_FIELDS = "t3d.json"
"""Beside a student's config.json (which stays its teacher's): the family and block size it was trained with."""


def read_t3d_fields(path: Path) -> dict[str, Any]:
    """A student's t3d.json, or {} for any other checkpoint."""
    file = path / T3D_FIELDS
    return read_json(file) if file.is_file() else {}


def resolve_family(raw: dict[str, Any], requested: str | None, path: Path) -> Family:
    """--family, else the student's t3d.json, else `t3d_family` in config.json, else the owner of `model_type`."""
    name = requested or read_t3d_fields(path).get("family") or raw.get("t3d_family")
    model_type = str(raw.get("model_type", ""))
    family = get_family(name) if name else family_for_model_type(model_type)
    if family is None:
        raise UserError(
            f"cannot tell the model family of {path} (model_type {model_type!r}; t3d loads "
            f"{', '.join(known_model_types())} natively): for another DLLM pass --family "
            "bidirectional|shifted|block_causal, with --trust-remote-code if it needs its own modelling code"
        )
    if family.unsupported:
        raise UserError(f"{path}: {family.unsupported}")
    owner = family_for_model_type(model_type)
    if family.architecture is IDENTITY and owner is not None and owner.architecture not in (None, IDENTITY):
        # A generic family asked for a known checkpoint: its attention, the checkpoint's weight layout.
        family = dataclasses.replace(family, architecture=owner.architecture, mask_id=family.mask_id or owner.mask_id)
    return family


def build_config(raw: dict[str, Any], family: Family, path: Path, trust_remote_code: bool) -> tuple[Any, bool]:
    """(transformers config, native?) of a checkpoint."""
    from transformers import AutoConfig

    if family.architecture is not None and family.architecture is not IDENTITY:
        return family.architecture.build_config(copy.deepcopy(raw), path), True
    native = family.architecture is IDENTITY and not (trust_remote_code and "auto_map" in raw)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code and not native)
    except (ValueError, KeyError) as err:
        if not trust_remote_code:
            raise UserError(
                f"checkpoint {path} (model_type {raw.get('model_type')!r}) is not a model type t3d or transformers "
                "knows: pass --trust-remote-code to run its own modelling code if you trust it"
            ) from None
        raise UserError(f"cannot read config.json in {path}: {str(err).splitlines()[0]}") from None
    return config, native


def load_tokenizer(path: Path, trust_remote_code: bool, config: Any = None) -> Any:
    """The checkpoint's tokenizer, or None when the directory has none (ids-only use)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    has_tokenizer = any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    if not has_tokenizer:
        return None
    try:
        extra = {"config": config} if config is not None else {}  # else it re-reads config.json by model_type
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code, **extra)
    except (ValueError, OSError) as err:
        if (path / "tokenizer.json").is_file():  # a tokenizer class in remote code: the fast tokenizer file suffices
            return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        raise UserError(f"cannot load the tokenizer in {path}: {str(err).splitlines()[0]}") from None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def special_ids(raw: dict[str, Any], family: Family, tokenizer: Any, vocab_size: int, path: Path) -> dict[str, Any]:
    """mask, pad, eos and stop ids from config.json, generation_config.json, the tokenizer and the family."""
    mask = _ids(raw.get("mask_token_id"))[:1] or _ids(getattr(tokenizer, "mask_token_id", None))[:1]
    mask_id = mask[0] if mask else family.mask_id
    if mask_id is None:
        raise UserError(f"checkpoint {path} has no mask token: set mask_token_id in its config.json")
    if not 0 <= mask_id < vocab_size:
        raise UserError(f"{path}/config.json: mask token id {mask_id} is outside the vocabulary ({vocab_size})")
    if tokenizer is not None and tokenizer.convert_ids_to_tokens(mask_id) is None:
        raise UserError(f"the tokenizer in {path} has no token with the mask id {mask_id} of this {family.name} checkpoint")
    generation = path / "generation_config.json"
    gen_eos = _ids(read_json(generation).get("eos_token_id")) if generation.is_file() else []
    eos = _ids(raw.get("eos_token_id")) or gen_eos or _ids(getattr(tokenizer, "eos_token_id", None))
    if not eos:
        raise UserError(f"checkpoint {path} has no EOS token: set eos_token_id in its config.json")
    for token in eos + gen_eos:
        if not 0 <= token < vocab_size:
            where = generation if token in gen_eos else path / "config.json"
            raise UserError(f"{where}: eos token id {token} is outside the vocabulary ({vocab_size})")
    stop_ids = tuple(dict.fromkeys([eos[0]] + eos + gen_eos))
    pad = _ids(raw.get("pad_token_id"))[:1] or _ids(getattr(tokenizer, "pad_token_id", None))[:1]
    return {"mask_id": mask_id, "pad_id": pad[0] if pad else eos[0], "eos_id": eos[0], "stop_ids": stop_ids}


def describe_checkpoint(path: str | Path, family: str | None = None, trust_remote_code: bool = False) -> CheckpointInfo:
    """Config, family, tokenizer and special ids of a checkpoint, without loading its weights."""
    resolved = resolve_model_path(path)
    check_checkpoint_dir(resolved)
    raw = read_json(resolved / "config.json")
    fam = resolve_family(raw, family, resolved)
    config, native = build_config(raw, fam, resolved, trust_remote_code)
    if not native and not trust_remote_code:
        raise UserError(f"checkpoint {resolved} needs its own modelling code: pass --trust-remote-code if you trust it")
    tokenizer = load_tokenizer(resolved, trust_remote_code, config)
    vocab_size = int(config.vocab_size)
    ids = special_ids(raw, fam, tokenizer, vocab_size, resolved)
    max_length = getattr(config, "max_position_embeddings", None) or raw.get("max_sequence_length")
    trained = read_t3d_fields(resolved)  # a student's own block size comes before its teacher's config
    block_size = trained.get("block_size") or raw.get("t3d_block_size") or raw.get("block_size")
    return CheckpointInfo(
        path=resolved, raw_config=raw, config=config, family=fam, native=native, tokenizer=tokenizer,
        vocab_size=vocab_size, max_length=int(max_length or 1 << 30),
        block_size=int(block_size) if block_size else None, **ids,
    )


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device, path: Path) -> torch.dtype:
    """`auto` (or None): the checkpoint's own dtype on CUDA, float32 elsewhere (bfloat16 is slow on CPU)."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return weights.checkpoint_dtype(path) if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def build_native_network(info: CheckpointInfo, dtype: torch.dtype, device: str | torch.device) -> torch.nn.Module:
    """The family's transformers class built on the meta device, then filled strictly from the weights."""
    import transformers
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(info.config)  # building a model mutates its config
    config._attn_implementation = "sdpa"  # honours a 4D additive mask as given
    architecture = info.family.architecture
    if architecture is IDENTITY:
        cls = AutoModelForCausalLM._model_mapping[type(config)]
    else:
        cls = getattr(transformers, architecture.model_class)
    with torch.device("meta"):
        net = cls(config)
    weights.load_into(net, info.path, architecture.native_name, dtype, device)
    return net.eval()


def build_remote_network(info: CheckpointInfo, dtype: torch.dtype, device: str | torch.device) -> torch.nn.Module:
    """The checkpoint's own modelling code (trusted by the user); every tensor checked afterwards."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs = dict(config=copy.deepcopy(info.config), local_files_only=True, trust_remote_code=True,
                  use_safetensors=True, dtype=dtype)
    try:
        net = AutoModelForCausalLM.from_pretrained(info.path, **kwargs)
    except ValueError:
        net = AutoModel.from_pretrained(info.path, **kwargs)
    net = net.to(device).eval()
    weights.rebuild_buffers(net, device)  # remote code's RoPE buffers are left uninitialised by transformers 5
    for name, tensor in list(net.named_parameters()) + list(net.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"{info.path}: {name} holds NaN or inf after loading with its own code (an uninitialised buffer?)"
            )
    return net


def load_model(
    path: str | Path,
    family: str | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> DiffusionLM:
    """Load a checkpoint directory (or `builtin`) as a `DiffusionLM` on `device`.

    dtype: `auto`/None (the checkpoint's dtype on CUDA, float32 on CPU), a name or a torch dtype.
    """
    info = describe_checkpoint(path, family, trust_remote_code)
    load_dtype = resolve_dtype(dtype, device, info.path)
    build = build_native_network if info.native else build_remote_network
    net = build(info, load_dtype, device)
    return DiffusionLM(
        net=net,
        family=info.family,
        mask_id=info.mask_id,
        pad_id=info.pad_id,
        eos_id=info.eos_id,
        stop_ids=info.stop_ids,
        vocab_size=info.vocab_size,
        max_length=info.max_length,
        name="builtin" if str(path) == "builtin" else info.path.name,
        fingerprint=weights_fingerprint(info.path),
        path=str(info.path),
        tokenizer=info.tokenizer,
        block_size=info.block_size,
        max_new_tokens=info.raw_config.get("t3d_max_new_tokens"),
        native=info.native,
    )
