/*
 * floor.c: the yardstick bench_engine.py compares the engine's Gaussian RBD step with.
 *
 * One RBD step written as plainly as C allows: for each of d directions, draw its D
 * Gaussian values from a counter-based hash of (direction, word) through a table of
 * 2^16 normal quantiles, take c = <phi, g> and add c * phi to the update; directions
 * are split over OpenMP threads, each with its own update buffer, summed at the end.
 * It has none of the engine's bookkeeping (seeds per step and compartment, chunking,
 * statistics), so the engine's step divided by this one says what that costs.
 *
 *     cc -O3 -march=native -fopenmp benchmarks/floor.c -o floor -lm
 *     OMP_NUM_THREADS=2 ./floor 101770 250 7        # D, d, passes: prints "best X ms"
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LEVELS 65536

/* A 64-bit finaliser (splitmix64's): consecutive counters give independent words. */
static inline uint64_t hash64(uint64_t z) {
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ULL;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Normal quantile of p by Newton's method on the CDF, 0.5 * erfc(-x / sqrt 2). */
static double normal_quantile(double p) {
    double x = 0.0;
    for (int iteration = 0; iteration < 100; iteration++) {
        double cdf = 0.5 * erfc(-x / sqrt(2.0));
        double pdf = exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
        double step = (cdf - p) / pdf;
        x -= step;
        if (fabs(step) < 1e-12) break;
    }
    return x;
}

static double seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s D d passes\n", argv[0]);
        return 2;
    }
    const long size = atol(argv[1]), dim = atol(argv[2]), passes = atol(argv[3]);
    if (size < 1 || dim < 1 || passes < 1) {
        fprintf(stderr, "D, d and passes must be positive\n");
        return 2;
    }
    const long padded = (size + 3) / 4 * 4; /* four 16-bit indices per hashed word */
    const float scale = (float)(1.0 / sqrt((double)size));

    float *table = malloc(LEVELS * sizeof *table);
    for (int level = 0; level < LEVELS; level++)
        table[level] = (float)normal_quantile((level + 0.5) / LEVELS);

    float *grad = malloc(padded * sizeof *grad);
    for (long j = 0; j < padded; j++) grad[j] = j < size ? (float)cos(0.001 * (double)j) : 0.0f;

    const int threads = omp_get_max_threads();
    float *updates = malloc((size_t)threads * padded * sizeof *updates);
    double best = INFINITY, checksum = 0.0;

    for (long pass = 0; pass < passes; pass++) {
        memset(updates, 0, (size_t)threads * padded * sizeof *updates);
        const double start = seconds();
#pragma omp parallel
        {
            float *mine = updates + (size_t)omp_get_thread_num() * padded;
            float *row = malloc(padded * sizeof *row);
#pragma omp for schedule(static)
            for (long i = 0; i < dim; i++) {
                const uint64_t base = hash64((uint64_t)i * 0x9e3779b97f4a7c15ULL + 7);
                float dot = 0.0f;
                for (long w = 0; w < padded / 4; w++) {
                    uint64_t word = hash64(base + (uint64_t)w);
                    for (int k = 0; k < 4; k++, word >>= 16) {
                        const float value = table[word & 0xffff] * scale;
                        row[4 * w + k] = value;
                        dot += value * grad[4 * w + k];
                    }
                }
                for (long j = 0; j < padded; j++) mine[j] += dot * row[j];
            }
            free(row);
        }
        for (int t = 1; t < threads; t++)
            for (long j = 0; j < padded; j++) updates[j] += updates[(size_t)t * padded + j];
        const double elapsed = seconds() - start;
        if (elapsed < best) best = elapsed;
        checksum = 0.0;
        for (long j = 0; j < size; j++) checksum += updates[j];
    }
    printf("D %ld d %ld threads %d best %.3f ms (checksum %.6g)\n", size, dim, threads,
           1e3 * best, checksum);
    free(table);
    free(grad);
    free(updates);
    return 0;
}
