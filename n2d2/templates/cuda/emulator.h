/* Host emulator of the generated CUDA kernels (tests without a GPU; see
 * n2d2.codegen.cuda_backend.HostEmulator). Compiled by g++ in front of the generated unit.
 *
 * Blocks run one after the other; the threads of a block are fibers (ucontext) on one OS
 * thread: a thread runs until it reaches __syncthreads(), then the next one runs; the barrier
 * opens when every live thread waits at it. __shared__ variables become function statics (one
 * copy, shared by the fibers of the running block). Missing barriers show up as wrong values
 * (a thread reads a tile that the others have not written yet, or that the fastest one has
 * already overwritten), more so as the scheduling order alternates between barrier phases.
 * A barrier reached while some threads of the block have exited is reported (error 2). */
#define N2D2_EMULATE 1
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

struct n2d2_dim3 { unsigned x, y, z; };
static n2d2_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__ __restrict
#define __launch_bounds__(n)
#define __constant__
#define __align__(n) __attribute__((aligned(n)))
struct alignas(16) float4 { float x, y, z, w; };

typedef void (*n2d2_kernel_fn)(unsigned char *, float *const *);
struct n2d2_fiber { ucontext_t ctx; int state; unsigned tx, ty, tz; };
static ucontext_t n2d2_sched;
static n2d2_fiber *n2d2_cur = 0;
static n2d2_kernel_fn n2d2_fn;
static unsigned char *n2d2_arena_arg;
static float *const *n2d2_params_arg;
static int n2d2_plain = 0;
static int n2d2_bad_barrier = 0;

static void __syncthreads(void)
{
    if (n2d2_plain) { n2d2_bad_barrier = 1; return; }
    n2d2_cur->state = 1;
    swapcontext(&n2d2_cur->ctx, &n2d2_sched);
}

static void n2d2_fiber_entry(void)
{
    n2d2_fn(n2d2_arena_arg, n2d2_params_arg);
    n2d2_cur->state = 2;
}

/* Runs kernel `fn` on grid (gx, gy, gz) x block (bx, by, bz). fibers = 0: the kernel has no
 * barrier, its threads run as plain calls. order: 0 forward, 1 reverse, 2 alternating.
 * Returns 0, or 1 (out of memory), 2 (a barrier that not every live thread reached), 3 (a
 * barrier in a kernel launched without fibers). */
extern "C" int n2d2_emu_launch(void *fn, int gx, int gy, int gz, int bx, int by, int bz,
                               unsigned char *arena, float *const *params, int fibers, int order)
{
    n2d2_fn = (n2d2_kernel_fn)fn;
    n2d2_arena_arg = arena;
    n2d2_params_arg = params;
    gridDim.x = gx; gridDim.y = gy; gridDim.z = gz;
    blockDim.x = bx; blockDim.y = by; blockDim.z = bz;
    const int nt = bx * by * bz;
    if (!fibers) {
        n2d2_plain = 1;
        n2d2_bad_barrier = 0;
        for (int z = 0; z < gz; ++z)
            for (int y = 0; y < gy; ++y)
                for (int x = 0; x < gx; ++x) {
                    blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
                    for (int t = 0; t < nt; ++t) {
                        threadIdx.x = t % bx; threadIdx.y = (t / bx) % by; threadIdx.z = t / (bx * by);
                        n2d2_fn(arena, params);
                    }
                }
        n2d2_plain = 0;
        return n2d2_bad_barrier ? 3 : 0;
    }
    const size_t stack = 1 << 16;
    n2d2_fiber *f = (n2d2_fiber *)calloc(nt, sizeof(n2d2_fiber));
    char *stacks = (char *)malloc(stack * (size_t)nt);
    if (!f || !stacks) { free(f); free(stacks); return 1; }
    int status = 0;
    for (int z = 0; z < gz && !status; ++z)
        for (int y = 0; y < gy && !status; ++y)
            for (int x = 0; x < gx && !status; ++x) {
                blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
                for (int t = 0; t < nt; ++t) {
                    getcontext(&f[t].ctx);
                    f[t].ctx.uc_stack.ss_sp = stacks + (size_t)t * stack;
                    f[t].ctx.uc_stack.ss_size = stack;
                    f[t].ctx.uc_link = &n2d2_sched;
                    makecontext(&f[t].ctx, n2d2_fiber_entry, 0);
                    f[t].state = 0;
                    f[t].tx = t % bx; f[t].ty = (t / bx) % by; f[t].tz = t / (bx * by);
                }
                for (int phase = 0;; ++phase) {
                    const int reverse = order == 1 || (order == 2 && (phase & 1));
                    for (int i = 0; i < nt; ++i) {
                        const int t = reverse ? nt - 1 - i : i;
                        if (f[t].state != 0) continue;
                        threadIdx.x = f[t].tx; threadIdx.y = f[t].ty; threadIdx.z = f[t].tz;
                        n2d2_cur = &f[t];
                        swapcontext(&n2d2_sched, &f[t].ctx);
                    }
                    int waiting = 0, done = 0;
                    for (int t = 0; t < nt; ++t) {
                        waiting += f[t].state == 1;
                        done += f[t].state == 2;
                    }
                    if (!waiting) break;
                    if (done) { status = 2; break; }
                    for (int t = 0; t < nt; ++t) f[t].state = 0;
                }
            }
    n2d2_cur = 0;
    free(f);
    free(stacks);
    return status;
}

