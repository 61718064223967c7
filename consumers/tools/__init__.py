"""Tools beside the pipeline, not part of it: a synthetic society (the demo's workload) and the benchmark.

The CLI's ``simulate`` and ``bench`` commands are thin layers over these.
"""
