# Every target creates .venv on a fresh machine. torch==2.13.0 is installed first when no torch is
# present (a CPU wheel is available locally; a bare `torch` would pull several GB of CUDA packages).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EC     := $(VENV)/bin/entropy-cliff
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean figures replicate

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[cpu,vcq,text,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(EC) predict --N 1.28e6 --K 16384
	$(EC) compare --demo --out demo-out/compare.png
	$(EC) measure --demo cosine --out demo-out/measure

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_measure.py
	$(PY) benchmarks/bench_tokenizer.py --steps 20 --threads 1 --workers 0,2

figures: $(STAMP)
	OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 $(PY) analysis/make_figures.py

# CPU mini-replication (about 1.5 h on a busy 2-core machine; a killed run continues where it stopped)
replicate: $(STAMP)
	$(PY) analysis/replicate.py --stage all
	$(PY) analysis/language.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis demo-out
