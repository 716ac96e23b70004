# convscope: the REST API and dashboard, GPU-ready.  Build: `docker build -t convscope .`  Guide: docs/deploy.md
#
# Base image: python:3.11-slim plus torch's *default* PyPI wheels, not a pytorch/pytorch image.
# - torch 2.14.1's default Linux x86_64 wheel on PyPI is a CUDA build: it pulls the CUDA 13 runtime, cuDNN, cuBLAS...
#   as pip packages (nvidia-*-cu13). The image needs no CUDA toolkit of its own; the host needs only the NVIDIA
#   driver (one that supports CUDA 13) and the NVIDIA Container Toolkit. Without a GPU the same image runs on CPU.
# - It is the exact torch/torchvision build and Python minor (3.11) that `make test` runs against, pinned like the
#   Makefile pins them, so what CI tests is what ships.
# - pytorch/pytorch images ship their own conda Python and torch build; we would reinstall torch 2.14.1 over it
#   anyway, carrying two torches in the layers.
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

# TORCH_HOME: torch.hub's cache; torchvision's ImageNet weights are read from $TORCH_HOME/hub/checkpoints/.
# HF_HOME: the Hugging Face cache (timm). Both live on the /data/cache volume, owned by the service user.
# CONVSCOPE_FRONTEND_DIR: the dashboard copied below (explicit, so it does not depend on the install layout).
# CONVSCOPE_SCAN_DIR / CONVSCOPE_STUDIES_DIR / CONVSCOPE_FEATVIS_DIR: top-9 scans, finished studies and
#   optimised unit images persist on the same volume.
# MALLOC_ARENA_MAX=2: two glibc malloc arenas instead of one per thread; under mixed load the RSS then plateaus
#   instead of climbing (issue 19: 4.2 GB against 8.1 GB after 3 minutes, same throughput).
# No CONVSCOPE_TOKEN / CONVSCOPE_INSECURE here: the CMD listens on 0.0.0.0, so `convscope serve` refuses to start
#   until the operator chooses one (docker-compose.yml publishes on 127.0.0.1 only and sets INSECURE; docs/deploy.md).
ENV PYTHONDONTWRITEBYTECODE=1 \
    MALLOC_ARENA_MAX=2 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/data/cache \
    HF_HOME=/data/cache/huggingface \
    CONVSCOPE_FRONTEND_DIR=/app/frontend \
    CONVSCOPE_SCAN_DIR=/data/cache/scans \
    CONVSCOPE_STUDIES_DIR=/data/cache/studies \
    CONVSCOPE_FEATVIS_DIR=/data/cache/featvis

# The service user: fixed UID/GID 10001 so volume and bind-mount ownership is predictable across hosts.
RUN groupadd --system --gid 10001 convscope \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/convscope \
        --shell /usr/sbin/nologin convscope \
    && mkdir -p /data/cache/hub/checkpoints /data/cache/huggingface /data/cache/scans /data/cache/studies \
    && chown -R 10001:10001 /data

WORKDIR /app

# Dependency layers, before any source, so editing the code does not reinstall them.
# 1. torch + torchvision (the largest layer, several GB with the CUDA libraries), pinned.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

# 2. Every other runtime dependency, read from pyproject.toml alone (rebuilt only when pyproject.toml changes);
#    the constraints keep the pinned torch/torchvision in place.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && printf 'torch==%s\ntorchvision==%s\n' "${TORCH_VERSION}" "${TORCHVISION_VERSION}" > /tmp/constraints.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/constraints.txt \
    && rm /tmp/requirements.txt /tmp/constraints.txt

# 3. torchvision's ImageNet weights for the dashboard's model switcher (CONVSCOPE_OFFER_MODELS), baked into
#    TORCH_HOME when the build machine has internet; without it the build goes on and the switcher leaves them out.
#    Skip with --build-arg TORCHVISION_WEIGHTS= (or name others: "alexnet vgg16 resnet50").
ARG TORCHVISION_WEIGHTS="alexnet vgg16"
RUN for name in ${TORCHVISION_WEIGHTS}; do \
        python -c "import sys, torchvision.models as m; m.get_model_weights(sys.argv[1]).IMAGENET1K_V1.get_state_dict(progress=False)" "$name" \
        || echo "convscope: the ImageNet weights of $name could not be downloaded; the dashboard will not offer it"; \
    done && chown -R 10001:10001 /data/cache

# 4. The source and the static dashboard, then the package itself without dependencies (all installed above).
#    Editable, as in development (DESIGN §1): the server finds frontend/ beside backend/ exactly as in the repo.
COPY backend ./backend
COPY frontend ./frontend
RUN pip install --no-cache-dir --no-deps -e .

USER 10001:10001
VOLUME ["/data/cache"]
EXPOSE 8000

# /api/health answers 200 only once the models are loaded; the start period covers loading (and a first CUDA
# initialisation) before failures count. Python's urllib: the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=5); sys.exit(0 if r.status == 200 else 1)"]

CMD ["convscope", "serve", "--host", "0.0.0.0", "--port", "8000"]
