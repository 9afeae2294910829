"""Tools beside the pipeline: the data generator and a local Citus cluster. They import the
project's modules from the top level, so they run as modules from the project folder:
`python -m tools.generate_data`, `python -m tools.citus_cluster`."""
