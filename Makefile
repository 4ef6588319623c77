PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.doctorjob-installed

.PHONY: venv demo test bench docs screenshots clean

venv: $(STAMP)

# Reinstall only when the packaging metadata changes.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: venv
	$(VENV)/bin/python manage.py migrate --noinput -v 0
	$(VENV)/bin/python manage.py demo

# The suite, then the example project's own tests (Django's runner, its settings).
test: venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	$(VENV)/bin/python manage.py test example_project --noinput

# The benchmark harness (bench/, not installed), e.g. make bench BENCH_ARGS="--quick"; see docs/benchmark.md.
bench: venv
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

# The documentation site, into docs/_build/html; any warning fails the build.
DOCS_STAMP := $(VENV)/.doctorjob-docs-installed

$(DOCS_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[dev,docs]'
	touch $@

docs: $(DOCS_STAMP)
	rm -rf docs/_build
	$(VENV)/bin/python -m sphinx -q -W --keep-going -b html docs docs/_build/html

# The admin's pages in a headless chromium at 1024, 1400 and 1920 px (and the dashboard in dark
# mode), saved as docs/screenshots/*.png for the README; a SQLite scratch database of its own.
screenshots: venv
	env -u DATABASE_URL DOCTORJOB_TEST_SQLITE=/tmp/doctorjob-screenshots.sqlite3 DOCTORJOB_SCREENSHOTS=docs/screenshots \
		$(VENV)/bin/python -m pytest tests/browser -q -k fits

clean:
	rm -rf $(VENV) build dist *.egg-info db.sqlite3 docs/_build
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
