# The two commands the README opens with. Both install what they need into ./.venv first.
.PHONY: demo test bench setup

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/persona-basins demo --preset default --out runs/demo --no-browser

test:
	bash scripts/setup.sh --browser
	.venv/bin/ruff check .
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python benchmarks/run_all.py
