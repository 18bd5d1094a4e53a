"""`chatdb bench`: load (or reuse) a dataset, measure each operation at three levels
(bare psycopg, the data layer, HTTP), report percentiles, ratios and plots.

A benchmark is not a test: nothing here asserts a time; the run reports what it
measured and which of the issue's targets it met.
"""

from chatdb.bench.dataset import SIZES, Dataset, database_name, ensure_dataset
from chatdb.bench.report import draw_plots, print_tables, write_json
from chatdb.bench.run import Result, run, source_info

__all__ = [
    "SIZES",
    "Dataset",
    "Result",
    "database_name",
    "draw_plots",
    "ensure_dataset",
    "print_tables",
    "run",
    "source_info",
    "write_json",
]
