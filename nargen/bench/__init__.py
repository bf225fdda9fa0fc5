"""Measuring: bench runs of many systems in one process (``systems``), the training
step's throughput (``training``), where time goes (``profiling``), and the reports they
and the diagnostics write (``report``, ``reports``)."""
