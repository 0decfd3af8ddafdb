// Test driver over ggml's own C (libggml-base.a): quantize rows with
// ggml_quantize_chunk (after ggml_quantize_init) and dequantize with the
// type's to_float. One job per line on stdin, files in, files out (the
// grids are initialised once per process):
//   q TYPE NROWS N_PER_ROW in.f32 out.bin [imatrix.f32]
//   d TYPE N in.bin out.f32
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ggml.h"

static void *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    *len = (size_t) ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(*len ? *len : 1);
    if (fread(buf, 1, *len, f) != *len) { perror(path); exit(2); }
    fclose(f);
    return buf;
}

static void spit(const char *path, const void *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, len, f) != len) { perror(path); exit(2); }
    fclose(f);
}

static void job(int argc, char **argv) {
    enum ggml_type type = (enum ggml_type) atoi(argv[1]);
    size_t len;
    if (argv[0][0] == 'q') {
        int64_t nrows = atoll(argv[2]), n_per_row = atoll(argv[3]);
        float *src = slurp(argv[4], &len);
        float *imatrix = NULL;
        if (argc > 6) {
            size_t ilen;
            imatrix = slurp(argv[6], &ilen);
        }
        size_t size = ggml_row_size(type, n_per_row) * (size_t) nrows;
        void *dst = calloc(1, size);
        ggml_quantize_init(type);
        size_t got = ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix);
        if (got != size) { fprintf(stderr, "size %zu != %zu\n", got, size); exit(1); }
        spit(argv[5], dst, size);
        free(src); free(imatrix); free(dst);
    } else {
        int64_t n = atoll(argv[2]);
        void *src = slurp(argv[3], &len);
        float *dst = malloc((size_t) n * sizeof(float));
        ggml_get_type_traits(type)->to_float(src, dst, n);
        spit(argv[4], dst, (size_t) n * sizeof(float));
        free(src); free(dst);
    }
}

int main(void) {
    char line[8192];
    while (fgets(line, sizeof line, stdin)) {
        char *argv[8];
        int argc = 0;
        for (char *t = strtok(line, " \n"); t && argc < 8; t = strtok(NULL, " \n")) argv[argc++] = t;
        if (argc < 5) { fprintf(stderr, "bad job line\n"); return 2; }
        job(argc, argv);
    }
    return 0;
}
