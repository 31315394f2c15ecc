"""Reports (DESIGN §3.6): markdown ablation tables, paired significance and plots, built only from a
sweep's stored tables (``epochs.parquet``, ``trials.parquet``) and its ``spec.json``.

Never imports torch, Ray or a trainable: a report can be built on any machine that can read the
store. Entry point: :func:`write_report` (``mmtune report``).
"""

from mmtune.report.render import write_report

__all__ = ["write_report"]
