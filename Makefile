# Two commands for a newcomer (see README):  `make demo`  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
AVS := $(VENV)/bin/avs
# pip.conf on the development machines lists mirror folders that may be absent; pip warns about each
# one on every call. Hide only that line, keep every other message and pip's exit status.
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup demo demo-checkpoint distill-check test test-slow test-all deploy-test lint format clean

# Creates .venv in the checkout and installs the pinned torch stack plus dev tools.
# The stamp file is rebuilt whenever pyproject.toml changes.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install-system-deps.sh
	@bash scripts/install-system-deps.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@set -o pipefail; $(PY) -m pip install --quiet --upgrade pip $(QUIET_PIP)
	@set -o pipefail; $(PY) -m pip install --quiet -e '.[worker,train,dev]' $(QUIET_PIP)
	@touch $@

# The main job: start the service on the embedded default (no server to install), submit a synthetic
# clip over HTTP, stream its masks, write the overlay video, print a summary, stop. Output in runs/demo/.
demo: setup
	$(AVS) demo --out runs/demo

# Reproduces the shipped demo checkpoint and its held-out evaluation: three stages, about 2 h on 2 CPU
# cores when nothing else runs (training slows down many times over when it shares the cores). Stages 1-2
# run the mask head's convs at 1/4 scale (cheaper while the backbone learns the shapes); stage 3 switches
# to the variant's full-resolution head and fine-tunes on fresh clips. README: "The shipped demo checkpoint".
DEMO_DATA := runs/synthetic-s4
DEMO_RUN := runs/demo-checkpoint
DEMO_CKPT := model/weights/avesformer-tiny-synthetic-s4.safetensors
DEMO_TRAIN := $(AVS) train --subset s4 --variant avesformer-tiny --batch-size 4 --workers 1 --save-dtype float16 \
	--no-resume
demo-checkpoint: setup
	$(AVS) synth --out $(DEMO_DATA) --subset s4 --videos 500 --seed 1 --no-mp4
	$(AVS) synth --out $(DEMO_DATA) --subset s4 --videos 100 --seed 2 --split test --no-mp4
	$(AVS) synth --out $(DEMO_DATA)-stage2 --subset s4 --videos 1500 --seed 3 --no-mp4
	$(AVS) synth --out $(DEMO_DATA)-stage3 --subset s4 --videos 3000 --seed 4 --no-mp4
	$(DEMO_TRAIN) --data $(DEMO_DATA) --set head.upsample_last=true --epochs 20 --lr 5e-4 \
		--out $(DEMO_RUN)/stage1.safetensors
	$(DEMO_TRAIN) --data $(DEMO_DATA)-stage2 --set head.upsample_last=true --init $(DEMO_RUN)/stage1.safetensors \
		--epochs 12 --lr 2e-4 --out $(DEMO_RUN)/stage2.safetensors
	$(DEMO_TRAIN) --data $(DEMO_DATA)-stage3 --init $(DEMO_RUN)/stage2.safetensors --epochs 10 --lr 3e-4 \
		--out $(DEMO_CKPT)
	for audio in normal silence shuffle; do \
		$(AVS) eval --data $(DEMO_DATA) --subset s4 --checkpoint $(DEMO_CKPT) --audio $$audio --json; done

# Evidence for `avs distill` (issue #22): an AVSegFormer-tiny teacher trained on synthetic scenes, an
# AVESFormer-tiny student distilled from it on unlabelled clips of another seed, both scored on held-out clips
# (mIoU, agreement, silence/shuffle drops, frames/s), a second run that must not call the teacher.
# Results in docs/distill/distill-check.json; exits 1 when a target is missed. README: "Distillation".
distill-check: setup
	nice -n 10 $(PY) scripts/distill_check.py --work runs/distill-check --results docs/distill

test: setup
	@bash scripts/install-test-deps.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -m "not slow and not gpu and not deploy"

# The Compose stack built and run for real: images (on local base images where Docker Hub cannot be
# reached), Redis + API + worker + Prometheus, a clip over HTTP, a killed worker, a Redis restart
# (tests/deploy/test_stack.py; about 10 min once the images are cached). Summary: runs/deploy-test/.
deploy-test: setup
	@bash scripts/install-deploy-deps.sh
	$(VENV)/bin/pytest -m deploy tests/deploy/test_stack.py -v -p no:cacheprovider

test-slow: setup
	@bash scripts/install-test-deps.sh
	$(VENV)/bin/pytest -m "slow"

test-all: setup
	@bash scripts/install-test-deps.sh
	$(VENV)/bin/pytest -m "not deploy"

lint: setup
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
