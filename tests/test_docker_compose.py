"""docker-compose.yml and Dockerfile, checked structurally (no Docker engine runs here)."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_SPEC = ROOT.parent / "shared" / "compose" / "compose-spec.json"


@pytest.fixture(scope="module")
def services():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # anchors and `<<` resolved
    return compose["services"]


def _command(service):
    command = service["command"]
    return " ".join(command) if isinstance(command, list) else command


def _workers(services):
    return {name: s for name, s in services.items() if name.startswith("ray-worker")}


def _replicas(service):
    return service.get("deploy", {}).get("replicas", 1)


def _devices(service):
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_head_and_two_cpu_workers_start_by_default(services):
    assert "ray-head" in services
    default = {name: s for name, s in _workers(services).items() if not s.get("profiles")}
    assert sum(_replicas(s) for s in default.values()) == 2
    assert all(not _devices(s) for s in default.values())  # CPU by default
    assert not services["ray-head"].get("profiles")


def test_every_node_is_built_from_the_projects_dockerfile(services):
    for name, service in services.items():
        build = service["build"]
        assert (ROOT / build["context"]).resolve() == ROOT, name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "pip install '.[lora,tracking]'" in dockerfile  # LoRA students and trackers in the image too
    assert "whl/cpu" in dockerfile  # CPU torch unless the gpu profile overrides the index


def test_ports_are_bound_to_localhost_only(services):
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip, host_port, container_port = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} on all interfaces"
            published[int(container_port)] = int(host_port)
    assert published == {8265: 8265, 10001: 10001, 6379: 6379}


def test_shared_memory_and_runs_volume(services):
    for name, service in services.items():
        assert service["shm_size"] == "2gb", name
        assert any(str(v).startswith("./runs:") for v in service["volumes"]), name


def test_head_command_and_workers_join_it(services):
    head = _command(services["ray-head"])
    assert head.startswith("ray start --head")
    for flag in ("--port=6379", "--ray-client-server-port=10001", "--dashboard-port=8265", "--block"):
        assert flag in head
    for name, worker in _workers(services).items():
        command = _command(worker)
        assert command.startswith("ray start") and "--head" not in command, name
        assert "--address=ray-head:6379" in command and "--block" in command, name
        assert "ray-head" in worker["depends_on"], name


def test_gpu_variant_reserves_nvidia_devices(services):
    gpu = {name: s for name, s in services.items() if s.get("profiles") == ["gpu"]}
    assert gpu, "no service in the gpu profile"
    for name, service in gpu.items():
        devices = _devices(service)
        assert devices and all(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
        assert "whl/cpu" not in service["build"].get("args", {}).get("TORCH_INDEX_URL", "whl/cpu"), name


def test_compose_file_is_valid_under_the_compose_specification():
    """The schema Docker Compose v2 validates against (no Compose v2 binary installs here)."""
    import json

    import jsonschema

    if not COMPOSE_SPEC.is_file():
        pytest.skip(f"the Compose Specification schema is not at {COMPOSE_SPEC} (shared/ beside the repo)")
    schema = json.loads(COMPOSE_SPEC.read_text())
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
    bad = dict(document, services={"x": {"image": "t3d", "shm_sise": "2gb"}})  # a misspelt key
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad)), "the validator must reject a bad file"


def test_every_depends_on_target_exists(services):
    for name, service in services.items():
        depends = service.get("depends_on", {})
        for target in depends if isinstance(depends, (list, dict)) else []:
            assert target in services, f"{name} depends on {target}, which is not a service"


def test_the_image_copies_every_package_folder():
    """`pip install .` in the image needs each folder pyproject maps a package to (tools/ was once missing)."""
    import tomllib

    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    roots = {path.split("/")[0] for path in package_dirs}
    dockerfile = (ROOT / "Dockerfile").read_text()
    missing = sorted(root for root in roots if f"COPY {root}/ {root}/" not in dockerfile)
    assert not missing, f"the Dockerfile does not copy {missing}"
