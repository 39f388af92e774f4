"""Random-bases descent (Gressmann et al., NeurIPS 2020) for PyTorch."""

__version__ = "0.1.0"

# How directions are drawn from seeds (rbd.projection's docstring). Run keys and
# run.json carry it, so results drawn with other bases are never mixed: version 1
# drew each direction with a seeded torch.Generator (bits that depended on the
# device); version 2 is the splitmix64 stream of the direction's seed.
BASES_VERSION = 2
