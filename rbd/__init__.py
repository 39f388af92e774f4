"""Random-bases descent (Gressmann et al., NeurIPS 2020) for PyTorch.

The package in layers, each importing only those below it (tests/contracts/test_layering.py):

- ``rbd.spec``: what a run is, its key, the rules between settings, every choice list and
  the facts of each data set and model (standard library only);
- ``rbd.bases``: seeded random bases and the projection engine (torch only);
- ``rbd.optim``: the optimisers, distributed RBD and the DDP hook (torch only);
- ``rbd.train``: data sets, models, checkpoints, the training loop, launching workers;
- ``rbd.report``: tables, figures and the paper's numbers (no torch);
- ``rbd.workflow``: config validation, the cost model, Snakemake support (no torch);
- ``rbd.cli`` and ``rbd.warm``: the ``rbd`` command and its warm-started server.
"""

__version__ = "0.1.0"
