# Build and push the three images with Docker or Podman (docker/build.sh; docs/containers.md).
# The build context is the repository root.
#   make images REGISTRY=europe-docker.pkg.dev/PROJECT_ID/lesion TAG=0.1.0
#   make push   REGISTRY=europe-docker.pkg.dev/PROJECT_ID/lesion TAG=0.1.0
#   make images BASE=debian     where python:3.11-slim-bookworm cannot be pulled
# The defaults give exactly the names in pipeline/config.py (images.cpu, images.gpu,
# images.mlflow), so a default build needs no --set images.*=... override at compile time.
# A pip config or CA bundle for a proxy: BUILD_PIP_CONF=FILE, BUILD_CA_BUNDLE=FILE (build secrets).
# DRY_RUN=1 prints the engine's commands instead of running them.
REGISTRY ?= ghcr.io/lesion-pipeline
TAG ?= $(shell sed -n 's/^version *= *//p' setup.cfg)
# The engine: docker or podman (default: podman where installed, else docker).
DOCKER ?=
# Extra build flags, e.g. --platform linux/amd64 or
# --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
BUILD_FLAGS ?=
BASE ?= auto

BUILD := REGISTRY=$(REGISTRY) TAG=$(TAG) ENGINE=$(DOCKER) BUILD_FLAGS='$(BUILD_FLAGS)' BASE=$(BASE) docker/build.sh

.PHONY: images image-cpu image-gpu image-mlflow push print-images

images:
	$(BUILD) cpu gpu mlflow

image-cpu:
	$(BUILD) cpu

image-gpu:
	$(BUILD) gpu

image-mlflow:
	$(BUILD) mlflow

# Each pushed image's digest goes to build/image-digests.json (git-ignored, docker/build.sh), which
# compile, submit and schedule read: steps then run image@sha256:..., not a tag that can move.
push:
	PUSH=1 $(BUILD) cpu gpu mlflow

# The --set overrides that point a compiled pipeline at these images.
print-images:
	@echo "--set images.cpu=$(REGISTRY)/lesion-pipeline:$(TAG) --set images.gpu=$(REGISTRY)/lesion-pipeline-gpu:$(TAG)"
