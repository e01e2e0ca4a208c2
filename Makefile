# Build and push the three images. The build context is the repository root.
#   make images REGISTRY=europe-docker.pkg.dev/PROJECT_ID/lesion TAG=0.1.0
#   make push   REGISTRY=europe-docker.pkg.dev/PROJECT_ID/lesion TAG=0.1.0
# The defaults give exactly the names in pipeline/config.py (images.cpu, images.gpu),
# so a default build needs no --set images.*=... override at compile time.
REGISTRY ?= ghcr.io/lesion-pipeline
TAG ?= $(shell sed -n 's/^version *= *//p' setup.cfg)
DOCKER ?= docker
# Extra `docker build` flags, e.g. --platform linux/amd64 or
# --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
BUILD_FLAGS ?=

CPU_IMAGE := $(REGISTRY)/lesion-pipeline:$(TAG)
GPU_IMAGE := $(REGISTRY)/lesion-pipeline-gpu:$(TAG)
MLFLOW_IMAGE := $(REGISTRY)/lesion-mlflow:$(TAG)

.PHONY: images image-cpu image-gpu image-mlflow push print-images

images: image-cpu image-gpu image-mlflow

image-cpu:
	$(DOCKER) build $(BUILD_FLAGS) -f docker/Dockerfile -t $(CPU_IMAGE) .

image-gpu:
	$(DOCKER) build $(BUILD_FLAGS) -f docker/Dockerfile.gpu -t $(GPU_IMAGE) .

image-mlflow:
	$(DOCKER) build $(BUILD_FLAGS) -f docker/Dockerfile.mlflow -t $(MLFLOW_IMAGE) .

# Each pushed image's digest goes to build/image-digests.json (git-ignored), which
# compile, submit and schedule read: steps then run image@sha256:..., not a tag that can move.
push: images
	for image in $(CPU_IMAGE) $(GPU_IMAGE) $(MLFLOW_IMAGE); do \
	  $(DOCKER) push $$image && \
	  python -m pipeline.images record $$image "$$($(DOCKER) image inspect --format '{{index .RepoDigests 0}}' $$image)" \
	  || exit 1; \
	done

# The --set overrides that point a compiled pipeline at these images.
print-images:
	@echo "--set images.cpu=$(CPU_IMAGE) --set images.gpu=$(GPU_IMAGE)"
