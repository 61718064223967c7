"""Tools beside the pipeline, not part of it: a synthetic society (the demo's workload),
a memory corpus and the retrieval benchmark (``retrieval_bench``, ``scripts/bench-retrieval``).

The CLI's ``simulate`` command is a thin layer over it; the benchmark is ``consumers.bench``.
"""
