# make figures: run every notebook in order with its default parameters (papermill), writing the tracked figures/
# (from notebooks/, as JupyterLab runs them: their paths are relative to that folder). Nothing else writes figures/:
# a notebook's FIGURES_DIR is None (its OUT_DIR/figures) unless this passes it.
# make lab: JupyterLab on the notebooks, saved as working copies under out/lab/ (daamlib/lab.py)
PY ?= python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: figures lab test
figures:
	@mkdir -p out/executed
	@for nb in $(NOTEBOOKS); do \
		echo "== $$nb"; \
		$(PY) -m papermill --log-level ERROR --cwd notebooks -p FIGURES_DIR ../figures \
			"$$nb" "out/executed/$$(basename $$nb)" || exit 1; \
	done

lab:
	$(PY) -m daamlib.lab

test:
	$(PY) -m pytest -q
