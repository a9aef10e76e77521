"""The evaluation suite as a library, at the top of the dependency graph: one backbone through every harness.

* :mod:`ibot.suite.runner` — :class:`SuiteRequest`, :func:`run_suite` (in-process API; resumable), the backbone file;
* :mod:`ibot.suite.harnesses` — the table ``{harness: runner}``; each harness runs as ``python -m <package>.cli``;
* :mod:`ibot.suite.report` — the one suite report (:class:`ibot.report.Page`), reused by the demo;
* :mod:`ibot.suite.demo` — the main job (``tools/demo.sh``); :mod:`ibot.suite.cli` — ``python -m ibot.suite``.

Nothing below ``ibot.suite`` imports it: the core and the harness packages stay independent of the runner.
"""
from ibot.suite.runner import SuiteRequest, failed, load_data_config, run_suite

__all__ = ["SuiteRequest", "failed", "load_data_config", "run_suite"]
