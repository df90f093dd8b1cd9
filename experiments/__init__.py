"""Experiments on top of xsim: the runner and its stages, configs, report, comparison and benchmarks.

`run.py` reads a config and hands plain records and settings to its stages (README, Layout); library code in
`xsim/` never sees a config.
"""
