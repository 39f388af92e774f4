"""Random-bases optimisers with the ``torch.optim`` interface (torch only): RBD, FPD and
NES over compartments of the flat parameter vector; distributed RBD
(:mod:`rbd.optim.distributed`) and RBD as a DDP communication hook
(:mod:`rbd.optim.ddp_hook`) build on them. SGD is ``torch.optim.SGD``."""

from rbd.optim.compartments import COMPARTMENT_SCALES, Compartment, compartment_ranges
from rbd.optim.fpd import FPD
from rbd.optim.methods import METHODS, build_optimizer
from rbd.optim.nes import NES
from rbd.optim.rbd import RBD, module_loss

__all__ = [
    "COMPARTMENT_SCALES",
    "Compartment",
    "FPD",
    "METHODS",
    "NES",
    "RBD",
    "build_optimizer",
    "compartment_ranges",
    "module_loss",
]
