/*
 * cpu_probe.c - whether llama.cpp's AMX buffer type works on this machine.
 *
 * With extra buffer types on (llama.cpp's default), a CPU with AMX gets
 * quantized and f16 weights repacked into AMX tiles. On some machines
 * (virtual ones among them, this project's own) the AMX matrix multiply
 * then kills the process: SIGILL for Q8_0, SIGSEGV for Q4_0 and Q4_K, in
 * llama-server too (llama.cpp issue #20824). A signal cannot be caught
 * and undone, so before the first model is loaded with extra buffers, a
 * child process multiplies small matrices of each type the AMX code
 * takes, in the AMX buffer and in a plain one, one row and several: if
 * it dies, hangs or gets a different answer, models load without extra
 * buffers (as with no_repack), slower there but alive.
 *
 * The child resets the fault signals to their default first: a host
 * program's handler that exits 0 would make a crash look healthy.
 *
 * Invariant: the answer is a fact about the machine, so it is found once
 * per process (pthread_once) and only where an AMX buffer type exists.
 */
#include "internal.h"

#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <ggml.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The products take milliseconds; a child still at it after seconds is stuck. */
enum { PROBE_K = 256, PROBE_N = 64, PROBE_M = 8, PROBE_TIMEOUT_MS = 5000 };

static ggml_backend_buffer_type_t amx_buffer_type(ggml_backend_dev_t cpu) {
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu);
    ggml_backend_dev_get_extra_bufts_t extra =
        (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    for (ggml_backend_buffer_type_t *b = extra ? extra(cpu) : NULL; b && *b; b++)
        if (strcmp(ggml_backend_buft_name(*b), "AMX") == 0) return *b;
    return NULL;
}

/* W (PROBE_N rows of PROBE_K, in `type`) times X (m columns) in the given
 * buffer type, into out (PROBE_N * m floats). */
static bool multiply(ggml_backend_t backend, ggml_backend_buffer_type_t weights_buft, enum ggml_type type,
                     const void *w_data, const float *x_data, int m, float *out) {
    struct ggml_init_params ip = {.mem_size = ggml_tensor_overhead() * 8 + ggml_graph_overhead(), .no_alloc = true};
    struct ggml_context *cw = ggml_init(ip), *cx = ggml_init(ip);
    if (!cw || !cx) return false;
    struct ggml_tensor *w = ggml_new_tensor_2d(cw, type, PROBE_K, PROBE_N);
    struct ggml_tensor *x = ggml_new_tensor_2d(cx, GGML_TYPE_F32, PROBE_K, m);
    struct ggml_tensor *y = ggml_mul_mat(cx, w, x);
    ggml_backend_buffer_t bw = ggml_backend_alloc_ctx_tensors_from_buft(cw, weights_buft);
    ggml_backend_buffer_t bx = ggml_backend_alloc_ctx_tensors_from_buft(cx, ggml_backend_cpu_buffer_type());
    bool ok = bw && bx;
    if (ok) {
        ggml_backend_tensor_set(w, w_data, 0, ggml_nbytes(w)); /* the AMX buffer repacks here */
        ggml_backend_tensor_set(x, x_data, 0, ggml_nbytes(x));
        struct ggml_cgraph *g = ggml_new_graph(cx);
        ggml_build_forward_expand(g, y);
        ok = ggml_backend_graph_compute(backend, g) == GGML_STATUS_SUCCESS;
        if (ok) ggml_backend_tensor_get(y, out, 0, ggml_nbytes(y));
    }
    ggml_backend_buffer_free(bw);
    ggml_backend_buffer_free(bx);
    ggml_free(cw);
    ggml_free(cx);
    return ok;
}

/* Not reentrant (its buffers are static: 140 KB off the stack). */
int sm_cpu_probe_products(ggml_backend_buffer_type_t buft) {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_backend_t backend = cpu ? ggml_backend_dev_init(cpu, NULL) : NULL;
    if (!backend) return 2;
    ggml_backend_set_n_threads_t set_threads = (ggml_backend_set_n_threads_t)ggml_backend_reg_get_proc_address(
        ggml_backend_dev_backend_reg(cpu), "ggml_backend_set_n_threads");
    if (set_threads) set_threads(backend, 1); /* one thread: no OpenMP team in a forked process */
    static float w[PROBE_N * PROBE_K], x[PROBE_M * PROBE_K], got[PROBE_N * PROBE_M], want[PROBE_N * PROBE_M];
    static char q[PROBE_N * PROBE_K * 4];
    uint32_t s = 12345;
    for (int i = 0; i < PROBE_N * PROBE_K; i++) w[i] = (float)((s = s * 1103515245u + 12345u) >> 16 & 0x7fff) / 32768.0f - 0.5f;
    for (int i = 0; i < PROBE_M * PROBE_K; i++) x[i] = (float)((s = s * 1103515245u + 12345u) >> 16 & 0x7fff) / 32768.0f - 0.5f;
    /* every type llama.cpp's AMX code takes (qtype_has_amx_kernels, and F16) */
    const enum ggml_type types[] = {GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q8_0, GGML_TYPE_Q4_K,
                                    GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_IQ4_XS, GGML_TYPE_F16};
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        if (types[t] == GGML_TYPE_F16) ggml_fp32_to_fp16_row(w, (ggml_fp16_t *)q, PROBE_N * PROBE_K);
        else ggml_quantize_chunk(types[t], w, q, 0, PROBE_N, PROBE_K, NULL);
        for (int m = 1; m <= PROBE_M; m += PROBE_M - 1) {
            int rc = !multiply(backend, ggml_backend_cpu_buffer_type(), types[t], q, x, m, want) ||
                             !multiply(backend, buft, types[t], q, x, m, got)
                         ? 3 : 0;
            for (int i = 0; i < PROBE_N * m && rc == 0; i++)
                if (!(fabsf(got[i] - want[i]) <= 0.05f + 0.02f * fabsf(want[i]))) rc = 4;
            if (rc != 0) {
                ggml_backend_free(backend);
                return rc;
            }
        }
    }
    ggml_backend_free(backend);
    return 0;
}

static bool amx_usable;

static void probe_once(void) {
    amx_usable = true;
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    ggml_backend_buffer_type_t amx = cpu ? amx_buffer_type(cpu) : NULL;
    if (!amx) return; /* nothing to fear: no AMX buffer type */
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return; /* cannot tell: llama.cpp's default */
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives the process it probes for */
        /* a fault must end this child, not reach the host program's
         * handlers (a test framework's, Python's) and run on in it */
        const int faults[] = {SIGILL, SIGSEGV, SIGBUS, SIGFPE, SIGABRT, SIGSYS};
        sigset_t unblock;
        sigemptyset(&unblock);
        for (size_t i = 0; i < sizeof faults / sizeof *faults; i++) {
            signal(faults[i], SIG_DFL);
            sigaddset(&unblock, faults[i]);
        }
        sigprocmask(SIG_UNBLOCK, &unblock, NULL);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) { /* nothing it might print reaches the host's output */
            dup2(devnull, STDOUT_FILENO);
            dup2(devnull, STDERR_FILENO);
        }
        /* A forked process keeps none of OpenMP's threads, only its record
         * of them: a parallel region of more than one thread (the AMX
         * repacking opens one) would wait for them forever. One thread. */
        void (*omp_threads)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "omp_set_num_threads");
        if (omp_threads) omp_threads(1);
        _exit(sm_cpu_probe_products(amx));
    }
    int status = 0;
    for (int waited = 0;; waited += 10) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) break;
        if (r < 0 || waited >= PROBE_TIMEOUT_MS) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            amx_usable = false;
            return;
        }
        nanosleep(&(struct timespec){.tv_nsec = 10 * 1000000L}, NULL);
    }
    amx_usable = WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

bool sm_cpu_extra_buffers_work(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, probe_once);
    return amx_usable;
}
