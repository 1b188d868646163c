/* Kernels whose relative speed on a Cortex-A53 / A72 is known, timed under the timing model
 * (tests/test_timing_model.py): it prints the modeled cycles of each. */
#include <arm_neon.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define N 4096
#define M 128
static float a[N], b[N], c[N];
static float x[M * M], y[M * M], z[M * M];
static int report_fd;

static uint64_t cycles(void) {
    uint64_t r[12] = {0};
    syscall(0xED6E, 1, report_fd);
    pread(report_fd, r, sizeof r, 0);
    return r[4]; /* now.cycles */
}

__attribute__((noinline, optimize("no-tree-vectorize"))) static void scalar_fma(void) {
    for (int i = 0; i < N; i++) c[i] += a[i] * b[i];
}

__attribute__((noinline)) static void neon_fma(void) {
    for (int i = 0; i < N; i += 8) {
        float32x4_t c0 = vld1q_f32(c + i), c1 = vld1q_f32(c + i + 4);
        c0 = vfmaq_f32(c0, vld1q_f32(a + i), vld1q_f32(b + i));
        c1 = vfmaq_f32(c1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        vst1q_f32(c + i, c0);
        vst1q_f32(c + i + 4, c1);
    }
}

/* z = x * y, the inner loop striding down a column of y: a cache line per multiply-add */
__attribute__((noinline, optimize("no-tree-vectorize"))) static void naive_matmul(void) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < M; j++) {
            float s = 0;
            for (int k = 0; k < M; k++) s += x[i * M + k] * y[k * M + j];
            z[i * M + j] = s;
        }
}

/* the same sums, the loops ordered and blocked so that rows of y stream through the cache,
 * four independent multiply-adds per step (what a tuned schedule does: blocked, unrolled) */
__attribute__((noinline, optimize("no-tree-vectorize"))) static void blocked_matmul(void) {
    for (int i = 0; i < M * M; i++) z[i] = 0;
    for (int kk = 0; kk < M; kk += 32)
        for (int i = 0; i < M; i++)
            for (int k = kk; k < kk + 32; k++) {
                float v = x[i * M + k];
                float *out = z + i * M;
                const float *row = y + k * M;
                for (int j = 0; j < M; j += 4) {
                    float y0 = row[j], y1 = row[j + 1], y2 = row[j + 2], y3 = row[j + 3];
                    float z0 = out[j], z1 = out[j + 1], z2 = out[j + 2], z3 = out[j + 3];
                    out[j] = z0 + v * y0;
                    out[j + 1] = z1 + v * y1;
                    out[j + 2] = z2 + v * y2;
                    out[j + 3] = z3 + v * y3;
                }
            }
}

static void run(const char *name, void (*kernel)(void)) {
    syscall(0xED6E, 2, 0); /* empty caches and pipeline */
    kernel();              /* warm, as a measurement after its first call */
    uint64_t before = cycles();
    kernel();
    printf("%s %llu\n", name, (unsigned long long)(cycles() - before));
}

int main(int argc, char **argv) {
    report_fd = open(argc > 1 ? argv[1] : "report.bin", O_RDWR | O_CREAT, 0600);
    for (int i = 0; i < N; i++) a[i] = (float)i, b[i] = 1.0f;
    for (int i = 0; i < M * M; i++) x[i] = (float)(i % 7), y[i] = (float)(i % 5);
    run("scalar_fma", scalar_fma);
    run("neon_fma", neon_fma);
    run("naive_matmul", naive_matmul);
    run("blocked_matmul", blocked_matmul);
    return 0;
}
