# The README's commands. `make demo` and `make test` each set up the environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast summary data checkpoint bundle calibrate accuracy latency gpu-check clean

setup: $(STAMP)

# A virtual environment with the package and every CPU extra (torch comes from PyPI, as a
# user installs it). Re-runs when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[all]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(PY) benchmarks/demo.py

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

summary: setup
	for preset in paper-r50 paper-swin-t paper-swin-b; do \
		$(PY) -m proxyformer.summary --preset $$preset --frames 19 --size 360x640; done

# The shipped tiny checkpoint: synthetic data, training on the CPU in two stages, evaluation,
# copy. Stage 1 trains the whole model without the video-level selection module; stage 2
# (training/train_selection.py) adds it (extensions.video_select) and trains only the class path
# on the frozen stage-1 model: what that path reads is cached once per expression on whole
# videos (and mirrored), then trained for many epochs. Masks and boxes stay those of stage 1.
# JSC is off in stage 1 (--jsc-weight 0): on this data it lowers the mask quality of the best
# query more than it helps the class scores pick it (docs/experiments/tiny-synthetic.md).
SYNTH ?= data/synth
CKPT_RUN ?= runs/tiny-synthetic
CKPT_OUT ?= checkpoints/tiny-synthetic
TRAIN_RECIPE ?= --preset tiny-synthetic --epochs 100 --max-steps 2000 --batch-size 4 --num-frames 4 \
	--lr 5e-4 --lr-backbone 5e-4 --lr-drop 100 --train-scales 128 --save-every 250 \
	--log-every 25 --workers 0 --seed 42 --pair-expressions --cls-target iou --lr-drop-steps 1600 \
	--jsc-weight 0 --set extensions.video_select=false
SELECT_RECIPE ?= --set extensions.video_select=true --epochs 20 --batch-size 8 --lr 5e-4 --seed 42

data: setup
	$(PY) -m training.data.synthetic --out $(SYNTH) --videos 400 --frames 12 --size 128x224 --seed 0

checkpoint: data
	$(PY) training/train.py --data $(SYNTH) --out $(CKPT_RUN)/stage1 --overwrite $(TRAIN_RECIPE)
	$(PY) training/train_selection.py --data $(SYNTH) --out $(CKPT_RUN)/stage2 --overwrite $(SELECT_RECIPE) \
		--init-from $(CKPT_RUN)/stage1/final
	$(PY) training/evaluate.py --checkpoint $(CKPT_RUN)/stage2/final --data $(SYNTH) \
		--split valid --query-oracle --out $(CKPT_RUN)/eval_valid.json
	mkdir -p $(CKPT_OUT)
	cp $(CKPT_RUN)/stage2/final/model.safetensors $(CKPT_RUN)/stage2/final/config.json \
		$(CKPT_RUN)/stage2/final/tokenizer.json $(CKPT_RUN)/eval_valid.json $(CKPT_OUT)/

# The tiny checkpoint through the pipeline: bundle, INT8, J&F per precision, latency.
BUNDLE ?= bundles/tiny
bundle: setup
	$(PY) export/to_onnx.py --checkpoint $(CKPT_OUT) --out $(BUNDLE) --size 128x224 \
		--frames 1:12:24 --expressions 1:2:8 --precision fp32 fp16 --overwrite

calibrate: data
	$(PY) calibration/calibrate.py --bundle $(BUNDLE) --data $(SYNTH) --samples 64 \
		--method entropy --target int8-tensorrt int8-cpu

accuracy: data
	$(PY) benchmarks/accuracy.py --bundle $(BUNDLE) --data $(SYNTH) --split valid --tag tiny-synthetic

latency: setup
	$(PY) benchmarks/latency.py --bundle $(BUNDLE) --frames 12 \
		--backends torch,ort,ort-fp16,ort-int8,trt-fp16,trt-int8

# A lent GPU machine's evidence in one command (docs/deployment.md, "GPU check"): no set-up and
# no downloads, so it runs with the machine's own Python and packages (GPU_PYTHON), skipping
# what they lack. Results go to benchmarks/results/<machine>/gpu-check.{json,md}.
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PYTHON) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
