"""The commands users type: the CLI, the Python API, eval, sample, inspect, bench, report, sweep summaries."""

__version__ = "0.1.0"
