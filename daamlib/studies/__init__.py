"""The paper's studies, one module per section, on top of the core (which never imports them).

- :mod:`~daamlib.studies.segmentation` — §3.1, Table 1, Fig. 11: noun masks scored by mIoU beside baselines.
- :mod:`~daamlib.studies.pos` — §3.2, Fig. 3–4: attribution by part of speech, the rating widget.
- :mod:`~daamlib.studies.syntax` — §4, Table 2, Fig. 5: head–dependent map overlap.
- :mod:`~daamlib.studies.cohyponyms` — §5.1, Fig. 6–7: cohyponym entanglement, ontologies, Fisher's test.
- :mod:`~daamlib.studies.adjectives` — §5.2, Fig. 8–9: adjectival entanglement with the layout held fixed.
- :mod:`~daamlib.studies.data` — where prompts and ground truth come from (files, or a registered world).
- :mod:`~daamlib.studies.linguistics` — spaCy tags and dependencies (§3.2, §4).
- :mod:`~daamlib.studies.paper` — the paper's numbers, typed once with their sources, and the paper-vs-here verdicts.
- :mod:`~daamlib.studies.style` — the seaborn theme and interval settings of the statistical figures.
- :mod:`~daamlib.studies.workbook` — the notebooks' parameter checks and output files.

Each study module has row builders that return DataFrames, and one ``plot_*`` function per figure
returning a Display object (``.figure_``, ``.ax_``), as scikit-learn's, and a ``paper_vs_here`` table
builder. Nothing here saves or closes
a figure except :func:`~daamlib.studies.workbook.save_figure`, which the notebooks call.
"""
