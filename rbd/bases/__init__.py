"""The random-bases engine: seeded directions and the one-pass projection (torch only).

A direction is a pure function of a 63-bit seed, itself a pure function of
(run seed, step, compartment, worker, direction index), and each of its
values is a pure function of (seed, column): value j comes from word
k = j // (values per word) of the **splitmix64 stream** of the seed,
``fmix64(seed + (k + 1) * 0x9E3779B97F4A7C15)`` (Steele, Lea and Flood
2014). Integer arithmetic is exact on every device, so the same run draws
the same bases on any CPU or GPU, for any chunk size, thread count or
worker, in the compiled kernels (:mod:`rbd.bases.native`, CPU) and in the eager
torch ops below (any device, and the CPU's fallback where no C compiler
is found) alike. ``BASES_VERSION`` names this construction; runs record it.

Layout of one direction of length D: a row of W = 64 * ceil(D / 64) values
of which the first D are used.

- gaussian: W / 4 words, seen as W little-endian 16-bit words; word t
  indexes value t in a table of the 2^16 equiprobable normal quantiles
  Phi^-1((u + 1/2) / 2^16), rescaled to unit variance. A table look-up costs
  a third of Box-Muller's log, cos and sin; the price is a distribution
  quantised to 65,536 levels and truncated at 4.42 sigma (mass beyond it:
  1e-5), which changes no moment that random bases depend on.
- uniform: W / 2 words, one 32-bit half (23 bits used) per value.
- rademacher, bernoulli-official: W / 64 words, one bit per value
  (bit t of 32-bit half k gives value 32 k + t; a set bit is -1).

Structured distributions (``STRUCTURED``: srht, fastfood) are not drawn row
by row: Phi is a stack of blocks, each built from N x N Walsh-Hadamard
transforms, N = the next power of two >= D: a vector of length D is
placed in N slots (``placement(D)``, a fixed random D-subset, the rest
zero) and the columns of a block are its columns at those slots.
Directions ``[b N, (b + 1) N)`` form block b, and block b is a pure
function of its first seed ``seeds[b * N]`` and D; row j
of block b also does not depend on how many rows the block has. So with
``step_seeds``, block b of step t is a pure function of
``direction_seed(seed, t, compartment, worker, b * N)``. Within a block,
from the sub-seeds ``_sub_seed(s_b, part)``:

- srht: rows ``r_j`` of ``H B`` (H the +-1 Hadamard matrix in Sylvester
  order, B = diag of N random signs from part 0, drawn as a rademacher row),
  the r_j sampled without replacement by a Fisher-Yates shuffle of [0, N)
  driven by CPU int64 words from part 3 (the first rows of the shuffle, so
  row j does not depend on the block's row count).
- fastfood (Le et al. 2013): rows j = 0, 1, ... of
  ``V = S H G Pi H B / sqrt(N)``: B signs (part 0), G = diag of N gaussian
  draws (part 1), Pi a random permutation (``torch.randperm`` on a CPU
  generator, part 3: ``(Pi y)_j = y_{perm_j}``), S_jj = s_j / ||G|| with s_j
  a chi_N draw, approximated by the normal with chi_N's mean and variance
  (gaussian draws from part 2, on the CPU whatever the device; E[s_j^2] = N
  exactly).

Both raw rows have E[phi phi^T] = I_D, as the dense distributions do (an
srht row is +-1 everywhere; a fastfood entry is N(0, 1) given the signs and
the permutation, with unit second moment after S), so the same scaling
(``raw / sqrt(D)``, or the update divided by d) gives updates of the same
expected size as Gaussian bases. Rows within a block are orthogonal on all
N slots and nearly orthogonal on the D used ones: inner products of
normalised rows have rms sqrt((N - D) / N) / sqrt(D) (srht) and about
sqrt((N + D) / N) / sqrt(D) (fastfood, from its shared G), against
1 / sqrt(D) for Gaussian rows; blocks are independent.
``project`` and ``expand`` apply Phi and Phi^T as transforms, O(N log N)
per block whatever the number of rows, never materialising a row.
"""

from rbd.bases.dense import (
    DEVICE_CHUNK_BYTES,
    KERNEL_CODE,
    L2_BYTES,
    default_chunk_size,
    normal_quantile_table,
    row_width,
)
from rbd.bases.distributions import DENSE, DISTRIBUTIONS, STRUCTURED
from rbd.bases.projection import (
    direction_chunks,
    expand,
    generate_directions,
    project,
    project_coordinates,
    structured_blocks,
)
from rbd.bases.seeds import direction_seed, step_seeds
from rbd.bases.structured import (
    StructuredBlocks,
    fwht,
    fwht_head,
    fwht_tail,
    padded_size,
    placement,
)
from rbd.spec import BASES_VERSION

__all__ = [
    "BASES_VERSION",
    "DENSE",
    "DEVICE_CHUNK_BYTES",
    "DISTRIBUTIONS",
    "KERNEL_CODE",
    "L2_BYTES",
    "STRUCTURED",
    "StructuredBlocks",
    "project_coordinates",
    "default_chunk_size",
    "direction_chunks",
    "direction_seed",
    "expand",
    "fwht",
    "fwht_head",
    "fwht_tail",
    "generate_directions",
    "normal_quantile_table",
    "padded_size",
    "placement",
    "project",
    "row_width",
    "step_seeds",
    "structured_blocks",
]
