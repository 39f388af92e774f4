/* Runs rbd/bases/engine.c's kernels on files, for tests of builds this machine cannot load
 * (another architecture, run under qemu-user): engine_driver IN OUT.
 *
 * IN:  int64 rows, size, dist; int64 seeds[rows]; float table[65536]; float g[size];
 *      float scale.
 * OUT: float directions[rows][64 * ceil(size / 64)] (rbd_fill); then, from rbd_project,
 *      float coords[rows], update[size] (a full projection), coords[rows] (coordinates
 *      only) and update[size] (the update from the given coordinates of the first).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void rbd_fill(const int64_t *seeds, int64_t rows, int64_t width, int dist, const float *table,
              float *out);
void rbd_project(const int64_t *seeds, int64_t rows, int64_t size, int dist, const float *table,
                 const float *g, float scale, int given, float *coords, float *update);

static void *take(FILE *f, size_t bytes) {
    void *p = calloc(bytes ? bytes : 1, 1);
    if (p == NULL || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "engine_driver: short input\n");
        exit(2);
    }
    return p;
}

static void put(FILE *f, const void *p, size_t bytes) {
    if (fwrite(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "engine_driver: cannot write\n");
        exit(2);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: engine_driver IN OUT\n");
        return 2;
    }
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
    if (in == NULL || out == NULL) {
        fprintf(stderr, "engine_driver: cannot open the files\n");
        return 2;
    }
    int64_t *head = take(in, 3 * sizeof(int64_t));
    const int64_t rows = head[0], size = head[1], width = 64 * ((size + 63) / 64);
    const int dist = (int)head[2];
    int64_t *seeds = take(in, (size_t)rows * sizeof(int64_t));
    float *table = take(in, 65536 * sizeof(float));
    float *g = take(in, (size_t)size * sizeof(float));
    float *scale = take(in, sizeof(float));
    float *rows_out = calloc((size_t)(rows * width), sizeof(float));
    float *coords = calloc((size_t)rows, sizeof(float)), *update = calloc((size_t)size, 4);
    float *coords_only = calloc((size_t)rows, 4), *expanded = calloc((size_t)size, 4);
    rbd_fill(seeds, rows, width, dist, table, rows_out);
    rbd_project(seeds, rows, size, dist, table, g, *scale, 0, coords, update);
    rbd_project(seeds, rows, size, dist, table, g, *scale, 0, coords_only, NULL);
    rbd_project(seeds, rows, size, dist, table, g, *scale, 1, coords, expanded);
    put(out, rows_out, (size_t)(rows * width) * 4);
    put(out, coords, (size_t)rows * 4), put(out, update, (size_t)size * 4);
    put(out, coords_only, (size_t)rows * 4), put(out, expanded, (size_t)size * 4);
    return fclose(out) == 0 ? 0 : 2;
}
