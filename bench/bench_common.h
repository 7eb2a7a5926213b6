/*
 * bench_common.h - what plain_loop and selfmod_loop share: one command line,
 * one clock and one way to summarise repetitions, so the two measure
 * exactly the same thing.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_MAX_REPS 100

typedef struct bench_options {
    const char *model_path;
    const char *prompt;
    int32_t n_predict;
    int32_t n_threads;
    int32_t n_ctx;
    int32_t reps;
    bool show;             /* print the generated text to stderr          */
    bool no_repack;        /* weights as stored (llama.cpp's --no-repack)  */
    int32_t n_gpu_layers;  /* -ngl: layers on the GPU (0)                  */
    bool retraction_cost;  /* selfmod_loop only                            */
    float critical;        /* --retraction-cost: the critical threshold    */
} bench_options;

static inline double bench_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static inline int bench_compare_doubles(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts values in place. */
static inline double bench_median(double *values, int n) {
    qsort(values, (size_t)n, sizeof values[0], bench_compare_doubles);
    return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2.0;
}

static inline void bench_usage(const char *program, bool with_retraction_cost) {
    fprintf(stderr,
            "usage: %s MODEL.gguf [-n N] [-t THREADS] [-p PROMPT] [-c CTX] [--reps R] [--show] [--no-repack] [-ngl N]%s\n"
            "  -n N        tokens to generate per repetition (256)\n"
            "  -t THREADS  threads for decoding (2)\n"
            "  -p PROMPT   prompt (\"Once upon a time\")\n"
            "  -c CTX      context size (2048, capped at the model's training context)\n"
            "  --reps R    timed repetitions after one untimed warm-up; the median is reported (5)\n"
            "  --show      print the generated text of the first repetition to stderr\n"
            "  --no-repack weights as stored, no repacked or AMX buffers (llama.cpp's --no-repack)\n"
            "  -ngl N      layers on the GPU, as llama.cpp's -ngl (0; 99: all)\n%s",
            program, with_retraction_cost ? " [--retraction-cost]" : "",
            with_retraction_cost
                ? "  --retraction-cost  instead of timing, generate with retraction on and report\n"
                  "                     the tokens decoded against the tokens kept and removed\n"
                  "  --critical F       the critical threshold for --retraction-cost (0.35)\n"
                : "");
}

static inline bool bench_parse_int(const char *flag, const char *text, int32_t min, int32_t max,
                                   int32_t *value) {
    char *end = NULL;
    errno = 0;
    const long parsed = text ? strtol(text, &end, 10) : 0;
    if (!text || *end != '\0' || errno != 0 || parsed < min || parsed > max) {
        fprintf(stderr, "%s needs an integer in [%d, %d], got '%s'\n", flag, min, max,
                text ? text : "(nothing)");
        return false;
    }
    *value = (int32_t)parsed;
    return true;
}

static inline bool bench_parse_options(int argc, char **argv, bool allow_retraction_cost,
                                       bench_options *opt) {
    *opt = (bench_options){.prompt = "Once upon a time", .n_predict = 256, .n_threads = 2,
                           .n_ctx = 2048, .reps = 5, .critical = 0.35f};
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (strcmp(arg, "-n") == 0) {
            ok = bench_parse_int(arg, next, 1, 1 << 20, &opt->n_predict), i++;
        } else if (strcmp(arg, "-t") == 0) {
            ok = bench_parse_int(arg, next, 1, 1024, &opt->n_threads), i++;
        } else if (strcmp(arg, "-c") == 0) {
            ok = bench_parse_int(arg, next, 16, 1 << 20, &opt->n_ctx), i++;
        } else if (strcmp(arg, "--reps") == 0) {
            ok = bench_parse_int(arg, next, 1, BENCH_MAX_REPS, &opt->reps), i++;
        } else if (strcmp(arg, "-p") == 0) {
            ok = next != NULL, opt->prompt = next, i++;
            if (!ok) {
                fprintf(stderr, "-p needs a prompt\n");
            }
        } else if (strcmp(arg, "--show") == 0) {
            opt->show = true;
        } else if (strcmp(arg, "--no-repack") == 0) {
            opt->no_repack = true;
        } else if (strcmp(arg, "-ngl") == 0) {
            ok = bench_parse_int(arg, next, 0, 100000, &opt->n_gpu_layers), i++;
        } else if (allow_retraction_cost && strcmp(arg, "--retraction-cost") == 0) {
            opt->retraction_cost = true;
        } else if (allow_retraction_cost && strcmp(arg, "--critical") == 0) {
            char *end = NULL;
            opt->critical = next ? strtof(next, &end) : -1.0f;
            ok = next && *end == '\0' && opt->critical > 0.0f && opt->critical < 1.0f, i++;
            if (!ok) {
                fprintf(stderr, "--critical needs a number in (0, 1), got '%s'\n", next ? next : "(nothing)");
            }
        } else if (arg[0] == '-') {
            fprintf(stderr, "unknown option '%s'\n", arg);
            ok = false;
        } else if (!opt->model_path) {
            opt->model_path = arg;
        } else {
            fprintf(stderr, "unexpected argument '%s'\n", arg);
            ok = false;
        }
        if (!ok) {
            return false;
        }
    }
    if (!opt->model_path) {
        fprintf(stderr, "missing MODEL.gguf\n");
        return false;
    }
    return true;
}

#endif /* BENCH_COMMON_H */
