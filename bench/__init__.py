"""Side-by-side benchmarks of observable_tasks and its peers. Run ``python -m bench --help``."""
