"""``fixres grid``: the paper's train x test resolution tables, resumable cell by cell.

Train at each training resolution, sweep every run over the test resolutions, adapt at each
test resolution, and write top-1 without and with adaptation (the best cell of each row
marked) and the cost of each training resolution (time, images/s, peak memory, FLOPs).
"""
from .config import ExpectedTop1, GridConfig, config_dict, differing_keys, load_config
from .report import GRID_FILES, GridReport
from .run import GridDir, run_grid

__all__ = ["ExpectedTop1", "GRID_FILES", "GridConfig", "GridDir", "GridReport", "config_dict", "differing_keys",
           "load_config", "run_grid"]
