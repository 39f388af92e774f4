/* The compiled CPU path of rbd.bases: counter-based directions, drawn and used in one pass.
 *
 * A direction with seed s is the splitmix64 stream from state s: word k is
 * fmix64(s + (k + 1) * GAMMA). Its values come from the words' bits exactly as
 * rbd.bases.dense's eager path builds them (that path is the specification and
 * the fallback; tests compare the two bit for bit):
 *   gaussian   value 4k + t = table[bits 16t..16t+15 of word k]
 *   uniform    value 2k + t = 2 * float(1.m) - 3, m = bits 32t..32t+22 of word k
 *   rademacher value 64k + t = -1 if bit t of word k is set, else +1
 *   bernoulli  rademacher - 0.5 (the authors' +0.5 / -1.5)
 * Rows are drawn W = 64 * ceil(D / 64) values wide; the first D are used.
 *
 * No OpenMP: rbd.bases.dense hands disjoint sets of rows to its own worker
 * threads (ctypes releases the GIL), each with its own update vector, so the
 * summation order is fixed by the row split alone. The directions are the same bits
 * on every CPU; the products (float32 sums) follow its vector width (AVX-512, AVX or
 * 128-bit lanes: SSE, NEON) and agree with a float64 reference to rounding.
 *
 * Gaussian and uniform rows: with AVX-512 the kernels draw a
 * row at a time, its coordinate summed block by block; their products are bit for bit
 * those of the full-protocol runs made on AVX-512 hosts. Elsewhere (AVX2 laptops, ARM:
 * a smaller L2 than the 400 KB row, g and update each take at D = 100,000) rows are
 * drawn in batches, column tile by column tile, so that g's and the update's tile stay
 * in L1 while the batch passes; the stream counter is stepped by addition (one 64-bit
 * multiply a word fewer, which AVX2 and NEON only emulate) and Gaussian values are read
 * from the table's positive half (the table is odd, entry 65535 - u = -entry u: 128 KB
 * instead of 256 KB to keep in cache). The same bits either way (tests).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define GAMMA 0x9E3779B97F4A7C15ULL
#define BLOCK 1024 /* values drawn per block: the words and values stay in L1 */

enum { GAUSSIAN = 0, UNIFORM = 1, RADEMACHER = 2, BERNOULLI = 3 };

typedef float v16 __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));

/* Lane t of a 16-value group takes bit t (low group) or 16 + t (high group) of a half. */
static const v16u SHIFT_LOW = {31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16};
static const v16u SHIFT_HIGH = {15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0};

#define MIX1 0xBF58476D1CE4E5B9ULL /* fmix64's two multipliers */
#define MIX2 0x94D049BB133111EBULL

static inline uint64_t fmix64(uint64_t z) {
    z = (z ^ (z >> 30)) * MIX1;
    z = (z ^ (z >> 27)) * MIX2;
    return z ^ (z >> 31);
}

/* The 16 sign values of one group of a 32-bit half: +-1 - shift. */
static inline v16 signs(uint32_t half, v16u shifts, float shift) {
    v16u bits = ((((v16u){0} + half) << shifts) & 0x80000000u) | 0x3F800000u;
    v16 f;
    memcpy(&f, &bits, 64);
    return f - shift;
}

#if defined(__AVX2__) && !defined(__AVX512F__)
/* x * c mod 2^64 in each 64-bit lane: AVX2 has no 64-bit multiply. The low halves'
 * full product, plus the two cross products' low 32 bits (one 32-bit multiply by c with
 * its halves swapped) shifted up. */
static inline __m256i mul64(__m256i x, __m256i c, __m256i c_swapped) {
    __m256i cross = _mm256_mullo_epi32(x, c_swapped);
    cross = _mm256_add_epi32(cross, _mm256_srli_epi64(cross, 32));
    return _mm256_add_epi64(_mm256_mul_epu32(x, c), _mm256_slli_epi64(cross, 32));
}

static inline __m256i fmix64x4(__m256i z, __m256i c1, __m256i s1, __m256i c2, __m256i s2) {
    z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), c1, s1);
    z = mul64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), c2, s2);
    return _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
}
#endif

/* Words [first, first + count) of the stream of seed. */
static void words(uint64_t seed, int64_t first, int64_t count, uint64_t *restrict out) {
#if defined(__AVX512F__)
    for (int64_t k = 0; k < count; k++)
        out[k] = fmix64(seed + (uint64_t)(first + k + 1) * GAMMA);
#else
    uint64_t z = seed + (uint64_t)(first + 1) * GAMMA;
    int64_t k = 0;
#if defined(__AVX2__)
    /* Two vectors of 4 words at a time (their multiplies overlap). */
    const __m256i c1 = _mm256_set1_epi64x((long long)MIX1);
    const __m256i c2 = _mm256_set1_epi64x((long long)MIX2);
    const __m256i s1 = _mm256_set1_epi64x((long long)(MIX1 << 32 | MIX1 >> 32));
    const __m256i s2 = _mm256_set1_epi64x((long long)(MIX2 << 32 | MIX2 >> 32));
    const __m256i step = _mm256_set1_epi64x((long long)(8 * GAMMA));
    __m256i za = _mm256_setr_epi64x((long long)z, (long long)(z + GAMMA),
                                    (long long)(z + 2 * GAMMA), (long long)(z + 3 * GAMMA));
    __m256i zb = _mm256_add_epi64(za, _mm256_set1_epi64x((long long)(4 * GAMMA)));
    for (; k + 8 <= count; k += 8, z += 8 * GAMMA) {
        _mm256_storeu_si256((__m256i *)(out + k), fmix64x4(za, c1, s1, c2, s2));
        _mm256_storeu_si256((__m256i *)(out + k + 4), fmix64x4(zb, c1, s1, c2, s2));
        za = _mm256_add_epi64(za, step), zb = _mm256_add_epi64(zb, step);
    }
#endif
    for (; k < count; k++, z += GAMMA) out[k] = fmix64(z);
#endif
}

/* Values [start, start + BLOCK) of a row (start a multiple of BLOCK, BLOCK of 64). */
static void block(uint64_t seed, int64_t start, int dist, const float *restrict table,
                  uint64_t *restrict buf, float *restrict out) {
    if (dist == GAUSSIAN) {
        words(seed, start / 4, BLOCK / 4, buf);
        const uint16_t *idx = (const uint16_t *)buf; /* little-endian: word k, then t */
#if defined(__AVX512F__)
        for (int j = 0; j < BLOCK; j++) out[j] = table[idx[j]];
#else
        /* Entry u >= 2^15 is half[u - 2^15]; entry u < 2^15 is -half[2^15 - 1 - u]. */
        const uint32_t *half = (const uint32_t *)(table + 32768);
        for (int j = 0; j < BLOCK; j++) {
            const uint32_t u = idx[j], low = (u >> 15) ^ 1u;
            const uint32_t bits = half[u ^ (0x7FFFu + (u >> 15))] | (low << 31);
            memcpy(out + j, &bits, 4);
        }
#endif
    } else if (dist == UNIFORM) {
        words(seed, start / 2, BLOCK / 2, buf);
        const uint32_t *w = (const uint32_t *)buf;
        for (int j = 0; j < BLOCK; j++) {
            uint32_t bits = (w[j] & 0x007FFFFFu) | 0x3F800000u;
            float f;
            memcpy(&f, &bits, 4);
            out[j] = f * 2.0f - 3.0f;
        }
    } else {
        words(seed, start / 64, BLOCK / 64, buf);
        const uint32_t *w = (const uint32_t *)buf;
        const float shift = dist == BERNOULLI ? 0.5f : 0.0f;
        for (int h = 0; h < BLOCK / 32; h++) {
            v16 low = signs(w[h], SHIFT_LOW, shift), high = signs(w[h], SHIFT_HIGH, shift);
            memcpy(out + 32 * h, &low, 64), memcpy(out + 32 * h + 16, &high, 64);
        }
    }
}

/* Rows of `width` values (a multiple of 64) for `rows` seeds, into out[rows][width]. */
void rbd_fill(const int64_t *seeds, int64_t rows, int64_t width, int dist, const float *table,
              float *out) {
    uint64_t buf[BLOCK / 2]; /* the most words a block takes (uniform) */
    float tail[BLOCK];
    for (int64_t i = 0; i < rows; i++) {
        float *row = out + i * width;
        int64_t j = 0;
        for (; j + BLOCK <= width; j += BLOCK) block((uint64_t)seeds[i], j, dist, table, buf, row + j);
        if (j < width) {
            block((uint64_t)seeds[i], j, dist, table, buf, tail);
            memcpy(row + j, tail, (size_t)(width - j) * 4);
        }
    }
}

#if defined(__AVX512F__)
/* sum_j a[j] b[j] over n values, in a fixed order: 64 lanes, then lane by lane. */
static float dot(const float *restrict a, const float *restrict b, int64_t n) {
    v16 acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
    int64_t j = 0;
    for (; j + 64 <= n; j += 64) {
        v16 x0, x1, x2, x3, y0, y1, y2, y3;
        memcpy(&x0, a + j, 64), memcpy(&y0, b + j, 64);
        memcpy(&x1, a + j + 16, 64), memcpy(&y1, b + j + 16, 64);
        memcpy(&x2, a + j + 32, 64), memcpy(&y2, b + j + 32, 64);
        memcpy(&x3, a + j + 48, 64), memcpy(&y3, b + j + 48, 64);
        acc0 += x0 * y0, acc1 += x1 * y1, acc2 += x2 * y2, acc3 += x3 * y3;
    }
    v16 acc = (acc0 + acc1) + (acc2 + acc3);
    float s = 0.0f;
    for (int t = 0; t < 16; t++) s += acc[t];
    for (; j < n; j++) s += a[j] * b[j];
    return s;
}
#endif

/* The sign kernels work in the target's own vector width (LANES floats): a wider generic
 * vector is split by the compiler, but its selects and carried accumulators then go
 * through memory lane by lane (15-20x slower with AVX2). Lane t of group k of a 32-bit
 * half takes bit LANES * k + t. */
#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
#define GROUPS (32 / LANES)
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef uint32_t vu __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));

/* The kernels' float lanes per vector (16 AVX-512, 8 AVX/AVX2, 4 SSE/NEON): the width
 * that benchmarks name beside their timings. */
int rbd_lanes(void) { return LANES; }

/* Group k of a half: `up` (both broadcast) where the lane's bit is clear, `down` where it is
 * set. AVX-512 takes the 16 bits as the blend mask as they stand; elsewhere each lane tests
 * its own bit. */
static inline vf values(uint32_t half, int k, vf up, vf down) {
#if defined(__AVX512F__)
    return (vf)_mm512_mask_blend_ps((__mmask16)(half >> (16 * k)), (__m512)up, (__m512)down);
#else
    vu bit;
    for (int t = 0; t < LANES; t++) bit[t] = 1u << (LANES * k + t);
    const vi set = (((vu){0} + half) & bit) != 0;
    return (vf)(((vi)up & ~set) | ((vi)down & set));
#endif
}

/* Value j of a row whose half j / 32 lies in `word` (the tail beyond the last full half). */
static inline float tail_value(uint64_t word, int64_t j, float shift) {
    return ((word >> (j & 63)) & 1u ? -1.0f : 1.0f) - shift;
}

#define TILE 64       /* halves (32 values each) per column tile: 8 KB of g or of the update */
#define ROW_BATCH 128 /* rows whose coordinate accumulators are carried across tiles at once */

/* rbd_project for the sign distributions: no row of floats, only its words (W / 64 of
 * them), expanded LANES values at a time in registers. Column tiles keep g's and the
 * update's tile in L1 while the rows pass over it (not the whole vectors, from L2, once
 * per row): first the coordinates, each row's GROUPS vector accumulators carried from tile
 * to tile so that its sum is taken in the order of one pass along the row; then the
 * update, each entry receiving the rows' terms in row order. */
static void project_signs(const int64_t *seeds, int64_t rows, int64_t size, float shift,
                          const float *g, float scale, int given, float *coords, float *update) {
    const int64_t full = size / 32;
    const vf up = (vf){0} + (1.0f - shift), down = (vf){0} + (-1.0f - shift);
    uint64_t buf[TILE / 2];
    const uint32_t *halves = (const uint32_t *)buf;
    for (int64_t r0 = 0; r0 < rows && !given; r0 += ROW_BATCH) {
        const int64_t r1 = r0 + ROW_BATCH < rows ? r0 + ROW_BATCH : rows;
        vf acc[GROUPS * ROW_BATCH] = {{0}};
        for (int64_t h0 = 0; h0 < full; h0 += TILE) {
            const int64_t n = h0 + TILE < full ? TILE : full - h0;
            for (int64_t i = r0; i < r1; i++) {
                words((uint64_t)seeds[i], h0 / 2, (n + 1) / 2, buf);
                vf a[GROUPS];
                memcpy(a, acc + GROUPS * (i - r0), sizeof a);
                for (int64_t h = 0; h < n; h++) {
                    for (int k = 0; k < GROUPS; k++) {
                        vf x;
                        memcpy(&x, g + 32 * (h0 + h) + LANES * k, sizeof x);
                        a[k] += values(halves[h], k, up, down) * x;
                    }
                }
                memcpy(acc + GROUPS * (i - r0), a, sizeof a);
            }
        }
        for (int64_t i = r0; i < r1; i++) {
            vf sum = acc[GROUPS * (i - r0)];
            for (int k = 1; k < GROUPS; k++) sum += acc[GROUPS * (i - r0) + k];
            float c = 0.0f;
            for (int t = 0; t < LANES; t++) c += sum[t];
            if (32 * full < size) {
                uint64_t word;
                words((uint64_t)seeds[i], full / 2, 1, &word);
                for (int64_t j = 32 * full; j < size; j++) c += tail_value(word, j, shift) * g[j];
            }
            coords[i] = c * scale;
        }
    }
    if (update == NULL) return;
    for (int64_t h0 = 0; h0 < full; h0 += TILE) {
        const int64_t n = h0 + TILE < full ? TILE : full - h0;
        vf u[GROUPS * TILE];
        memcpy(u, update + 32 * h0, (size_t)n * 128);
        for (int64_t i = 0; i < rows; i++) {
            words((uint64_t)seeds[i], h0 / 2, (n + 1) / 2, buf);
            const float a = coords[i] * scale;
            for (int64_t h = 0; h < n; h++)
                for (int k = 0; k < GROUPS; k++)
                    u[GROUPS * h + k] += a * values(halves[h], k, up, down);
        }
        memcpy(update + 32 * h0, u, (size_t)n * 128);
    }
    for (int64_t i = 0; i < rows && 32 * full < size; i++) {
        uint64_t word;
        words((uint64_t)seeds[i], full / 2, 1, &word);
        const float a = coords[i] * scale;
        for (int64_t j = 32 * full; j < size; j++) update[j] += a * tail_value(word, j, shift);
    }
}

#if defined(__AVX512F__)
/* Dense rows one at a time: drawn block by block into a row buffer (dotted with g while
 * each block is in L1), then added to the update. */
static void project_dense(const int64_t *seeds, int64_t rows, int64_t size, int dist,
                          const float *table, const float *g, float scale, int given,
                          float *coords, float *update) {
    int64_t width = 64 * ((size + 63) / 64);
    float *row = aligned_alloc(64, (size_t)((width + BLOCK - 1) / BLOCK * BLOCK) * 4);
    uint64_t buf[BLOCK / 2]; /* the most words a block takes (uniform) */
    for (int64_t i = 0; i < rows; i++) {
        float c = 0.0f;
        for (int64_t j = 0; j < size; j += BLOCK) {
            block((uint64_t)seeds[i], j, dist, table, buf, row + j);
            if (!given) {
                int64_t n = size - j < BLOCK ? size - j : BLOCK;
                c += dot(row + j, g + j, n);
            }
        }
        if (given)
            c = coords[i];
        else
            coords[i] = c = c * scale;
        if (update == NULL) continue;
        const float a = c * scale;
        for (int64_t j = 0; j < size; j++) update[j] += a * row[j];
    }
    free(row);
}
#else
#define ACCS 4           /* vector accumulators per coordinate */
#define BATCH 8          /* rows drawn per pass over the columns, at most */
#define BATCH_BYTES (4 << 20) /* and at most this much of them (8 rows at D = 10^5) */
#define COLUMNS 2048     /* values per column tile: 8 KB of g, of the update (BLOCKs) */
#define CHUNK (ACCS * LANES)

/* acc[k] += a * b over n values (n a multiple of CHUNK), lane by lane. */
static inline void dot_into(const float *restrict a, const float *restrict b, int64_t n,
                            vf *acc) {
    for (int64_t j = 0; j < n; j += CHUNK)
        for (int k = 0; k < ACCS; k++) {
            vf x, y;
            memcpy(&x, a + j + LANES * k, sizeof x), memcpy(&y, b + j + LANES * k, sizeof y);
            acc[k] += x * y;
        }
}

/* Dense rows BATCH at a time: each column tile of the batch's rows is drawn and dotted with
 * g's tile (each coordinate carried in ACCS vectors from tile to tile, so it is summed in
 * the order of one pass along its row: lane-wise, then the lanes, then the tail beyond the
 * last CHUNK); then the update takes the batch tile by tile, each entry receiving the rows'
 * terms in row order. */
static void project_dense(const int64_t *seeds, int64_t rows, int64_t size, int dist,
                          const float *table, const float *g, float scale, int given,
                          float *coords, float *update) {
    const int64_t width = BLOCK * ((size + BLOCK - 1) / BLOCK);
    int64_t batch = BATCH_BYTES / (4 * width);
    batch = batch < 1 ? 1 : batch > BATCH ? BATCH : batch;
    /* Freed memory of this size is reused by the next call (malloc's mmap threshold
     * rises to it), so only a thread's first call faults its pages in. */
    float *batch_rows = aligned_alloc(64, (size_t)batch * (size_t)width * 4);
    if (batch_rows == NULL) abort();
    const int64_t body = size - size % CHUNK;
    uint64_t buf[BLOCK / 2]; /* the most words a block takes (uniform) */
    for (int64_t r0 = 0; r0 < rows; r0 += batch) {
        const int64_t n = rows - r0 < batch ? rows - r0 : batch;
        vf acc[BATCH * ACCS] = {{0}};
        for (int64_t t0 = 0; t0 < width; t0 += COLUMNS) {
            const int64_t t1 = t0 + COLUMNS < width ? t0 + COLUMNS : width;
            const int64_t dotted = (t1 < body ? t1 : body) - t0;
            for (int64_t i = 0; i < n; i++) {
                float *row = batch_rows + i * width;
                for (int64_t j = t0; j < t1; j += BLOCK)
                    block((uint64_t)seeds[r0 + i], j, dist, table, buf, row + j);
                if (!given && dotted > 0) dot_into(row + t0, g + t0, dotted, acc + ACCS * i);
            }
        }
        for (int64_t i = 0; i < n && !given; i++) {
            const vf *a = acc + ACCS * i, sum = (a[0] + a[1]) + (a[2] + a[3]);
            float c = 0.0f;
            for (int t = 0; t < LANES; t++) c += sum[t];
            const float *row = batch_rows + i * width;
            for (int64_t j = body; j < size; j++) c += row[j] * g[j];
            coords[r0 + i] = c * scale;
        }
        if (update == NULL) continue;
        for (int64_t t0 = 0; t0 < size; t0 += COLUMNS) {
            const int64_t m = size - t0 < COLUMNS ? size - t0 : COLUMNS;
            float *restrict u = update + t0;
            for (int64_t i = 0; i < n; i++) {
                const float a = coords[r0 + i] * scale;
                const float *restrict row = batch_rows + i * width + t0;
                for (int64_t j = 0; j < m; j++) u[j] += a * row[j];
            }
        }
    }
    free(batch_rows);
}
#endif

/* For each row i (seeds[i], size values): with given == 0, coords[i] = scale * <row, g>;
 * then, unless update is NULL (coordinates only), update += (scale * coords[i]) * row.
 * Sign rows go to project_signs, Gaussian and uniform rows to project_dense. */
void rbd_project(const int64_t *seeds, int64_t rows, int64_t size, int dist, const float *table,
                 const float *g, float scale, int given, float *coords, float *update) {
    if (dist == RADEMACHER || dist == BERNOULLI)
        project_signs(seeds, rows, size, dist == BERNOULLI ? 0.5f : 0.0f, g, scale, given, coords,
                      update);
    else
        project_dense(seeds, rows, size, dist, table, g, scale, given, coords, update);
}
