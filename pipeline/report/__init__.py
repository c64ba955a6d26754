"""The report: the paper's tables from the per-fold metrics, the paper's numbers beside ours, and the figures.

- :mod:`pipeline.report.paper`: the numbers the paper reports (docs/method.md §8);
- :mod:`pipeline.report.tables`: per-fold values, mean ± std per method, paired differences with bootstrap intervals;
- :mod:`pipeline.report.markdown`: ``tables.md``;
- :mod:`pipeline.report.figures`: task weights and losses over training, ROC curves, confusion matrices;
- :mod:`pipeline.report.demo_check`: the demo's targets, PASS/FAIL.

Plain NumPy, pandas, scikit-learn and matplotlib: no torch, no MLflow.
"""
