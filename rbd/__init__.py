"""Random-bases descent (Gressmann et al., NeurIPS 2020) for PyTorch.

The package in layers, each importing only those below it (tests/test_layering.py):

- ``rbd.bases``: seeded random bases and the projection engine (torch only);
- ``rbd.optim``: the optimisers, distributed RBD and the DDP hook (torch only);
- ``rbd.train``: data sets, models, run identity, checkpoints, the training loop;
- ``rbd.report``: tables, figures and the paper's numbers (no torch);
- ``rbd.workflow``: config validation, the cost model, Snakemake support (no torch);
- ``rbd.cli`` and ``rbd.warm``: the ``rbd`` command and its warm-started server.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# How directions are drawn from seeds (rbd.bases's docstring). Run keys and
# run.json carry it, so results drawn with other bases are never mixed: version 1
# drew each direction with a seeded torch.Generator (bits that depended on the
# device); version 2 is the splitmix64 stream of the direction's seed.
BASES_VERSION = 2

# Modules that moved into the layers above: the old name still imports the module (with a
# DeprecationWarning that names the new one), so user code and pickles keep working.
MOVED = {
    "rbd.projection": "rbd.bases",
    "rbd.native": "rbd.bases.native",
    "rbd.device_check": "rbd.bases.device_check",
    "rbd.step_stats": "rbd.optim.step_stats",
    "rbd.distributed": "rbd.optim.distributed",
    "rbd.ddp_hook": "rbd.optim.ddp_hook",
    "rbd.data": "rbd.train.data",
    "rbd.models": "rbd.train.models",
    "rbd.runs": "rbd.train.runs",
    "rbd.io": "rbd.train.io",
    "rbd.launch": "rbd.train.launch",
    "rbd.tables": "rbd.report.tables",
    "rbd.plots": "rbd.report.plots",
    "rbd.style": "rbd.report.style",
    "rbd.paper": "rbd.report.paper",
    "rbd.comparison": "rbd.report.comparison",
    "rbd.config": "rbd.workflow.config",
    "rbd.cost": "rbd.workflow.cost",
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module it moved to."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass


if not any(isinstance(finder, _MovedModule) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModule())
