"""Whole cohorts: case lists, a Dask engine (local, a running scheduler, Slurm/PBS), progress, results table."""
