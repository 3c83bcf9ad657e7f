# make figures: run every notebook in order with its default parameters (papermill), writing figures/
# (from notebooks/, as JupyterLab runs them: their paths are relative to that folder)
PY ?= python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: figures test
figures:
	@mkdir -p out/executed
	@for nb in $(NOTEBOOKS); do \
		echo "== $$nb"; \
		$(PY) -m papermill --log-level ERROR --cwd notebooks "$$nb" "out/executed/$$(basename $$nb)" || exit 1; \
	done

test:
	$(PY) -m pytest -q
