"""Shared plumbing for the command-line entry points: clean errors, config files."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from t3d.dllm.errors import UserError

_USER_ERRORS: list[type[BaseException]] = [UserError, FileNotFoundError, NotADirectoryError]


def register_user_error(kind: type[BaseException]) -> None:
    """Let `run_cli` print `kind` as a one-line error (packages register their own)."""
    if kind not in _USER_ERRORS:
        _USER_ERRORS.append(kind)


def run_cli(body: Callable[[], Any]) -> Any:
    """Run a CLI body; a user error becomes `error: ...` on stderr and exit code 2."""
    try:
        return body()
    except tuple(_USER_ERRORS) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of `--name X` or `--name=X` in argv (the last one), else None."""
    found = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(name + "="):
            found = arg.split("=", 1)[1]
    return found


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """Read a TOML or YAML file of option values (keys as on the command line, `-` or `_`)."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise UserError(f"config file must end in .toml, .yaml or .yml: {path}")
    except UserError:
        raise
    except Exception as err:  # parse errors of either format
        raise UserError(f"cannot parse config file {path}: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a table of options")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def check_ray_address(address: str | None) -> None:
    """A HOST:PORT with nothing listening is a one-line error at once (ray.init would retry for minutes).

    None, `auto`, `local` and URLs (ray://, http(s)://) are left to Ray.
    """
    if address in (None, "auto", "local") or address.startswith(("ray://", "http://", "https://")):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except ValueError:
        raise UserError(f"--address must be HOST:PORT or auto, got {address!r}") from None
    except OSError as err:
        raise UserError(f"no Ray cluster at {address}: {err.strerror or err}") from None
