"""aidp's benchmark suite against xargs -P and GNU parallel: `python -m bench [--quick]` (see __main__)."""
