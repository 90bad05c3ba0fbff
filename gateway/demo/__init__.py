"""The demo: a synthetic low-income population and a hub with three province nodes on one machine.

:mod:`gateway.demo.population` makes the people (deterministic for a seed, fast enough for the
benchmarks' millions of records); ``hutong demo`` runs them through the whole loop.
"""
