# The t3d image that every node of docker-compose.yml runs: Python 3.11 + the project.
# CPU by default; the compose `gpu` profile builds it with CUDA torch instead
# (--build-arg TORCH_INDEX_URL=https://pypi.org/simple: PyPI's Linux torch wheels ship CUDA).
# Ray needs the same Ray and Python versions on every node and on a `ray://` client.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

WORKDIR /app

# torch first, from the chosen index, so `pip install .` finds it satisfied and never
# pulls the multi-GB CUDA wheel into a CPU image. Its own layer: rebuilt only when the index changes.
RUN pip install --upgrade pip && pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.4"

# Only what the package needs (the build context also holds .venv and runs/).
COPY pyproject.toml README.md* ./
COPY dllm/ dllm/
COPY storage_schemas/ storage_schemas/
COPY pipeline/ pipeline/
COPY trainer/ trainer/
COPY tools/ tools/
COPY scheduler/ scheduler/
# the lora and tracking extras: --lora-r and --report-to work in the image as on a workstation
RUN pip install '.[lora,tracking]' && mkdir -p /app/runs

# GCS, Ray client server, dashboard (published on 127.0.0.1 only, see docker-compose.yml).
EXPOSE 6379 10001 8265
CMD ["ray", "start", "--head", "--port=6379", "--dashboard-host=0.0.0.0", "--block"]
