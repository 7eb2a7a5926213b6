/*
 * bench_tree - the LLooM's tree expansion with batched decoding (every live
 * beam of a level in one llama_decode) against beam by beam (one
 * llama_decode per beam per level), on the same tree.
 *
 *   bench_tree MODEL.gguf [-t THREADS] [-c CTX] [-p PREFIX] [--reps R]
 *              [--cutoff F] [--split N] [--depth N] [--beams N]
 *
 * One untimed expansion of each kind warms up (and decodes the prefix, which
 * every later expansion reuses, so the timings are the tree's own). Then the
 * two kinds alternate R times; the medians are reported in one line:
 *
 *   tree model=stories260K live_beams=13 mean_live=5.6 levels=7 nodes=64
 *        suggestions=25 threads=2 batched_ms=5.3 sequential_ms=13.4 speedup=2.53
 *
 * live_beams is the most beams decoded in one level, mean_live the beams
 * per level on average. The program fails when the two trees differ in
 * shape (a different node count), since the speedup would then compare
 * different work.
 */
#include "bench_common.h"

#include "selfmod.h"

typedef struct tree_options {
    const char *model_path;
    const char *prefix;
    int32_t n_threads;
    int32_t n_ctx;
    int32_t reps;
    sm_tree_params params;
} tree_options;

static void usage(const char *program) {
    fprintf(stderr,
            "usage: %s MODEL.gguf [-t THREADS] [-c CTX] [-p PREFIX] [--reps R]\n"
            "          [--cutoff F] [--split N] [--depth N] [--beams N]\n"
            "  -t THREADS   threads for decoding (2)\n"
            "  -c CTX       context size (512, capped at the model's training context)\n"
            "  -p PREFIX    the story so far (\"Once upon a time, there was a little\")\n"
            "  --reps R     timed expansions of each kind, alternating; medians reported (20)\n"
            "  --cutoff F   split cutoff (0.05)\n"
            "  --split N    split limit (3)\n"
            "  --depth N    max depth (8)\n"
            "  --beams N    beam limit (25)\n",
            program);
}

static bool parse_float(const char *flag, const char *text, float *value) {
    char *end = NULL;
    *value = text ? strtof(text, &end) : -1.0f;
    if (!text || *end != '\0' || *value < 0.0f || *value > 1.0f) {
        fprintf(stderr, "%s needs a number in [0, 1], got '%s'\n", flag, text ? text : "(nothing)");
        return false;
    }
    return true;
}

static bool parse_options(int argc, char **argv, tree_options *opt) {
    *opt = (tree_options){.prefix = "Once upon a time, there was a little", .n_threads = 2, .n_ctx = 512,
                          .reps = 20, .params = sm_tree_default_params()};
    opt->params.cutoff = 0.05f;
    opt->params.split_limit = 3;
    opt->params.max_depth = 8;
    opt->params.beam_limit = 25;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (strcmp(arg, "-t") == 0) ok = bench_parse_int(arg, next, 1, 1024, &opt->n_threads), i++;
        else if (strcmp(arg, "-c") == 0) ok = bench_parse_int(arg, next, 16, 1 << 20, &opt->n_ctx), i++;
        else if (strcmp(arg, "--reps") == 0) ok = bench_parse_int(arg, next, 1, BENCH_MAX_REPS, &opt->reps), i++;
        else if (strcmp(arg, "--split") == 0) ok = bench_parse_int(arg, next, 0, 255, &opt->params.split_limit), i++;
        else if (strcmp(arg, "--depth") == 0) ok = bench_parse_int(arg, next, 1, 1024, &opt->params.max_depth), i++;
        else if (strcmp(arg, "--beams") == 0) ok = bench_parse_int(arg, next, 1, 255, &opt->params.beam_limit), i++;
        else if (strcmp(arg, "--cutoff") == 0) ok = parse_float(arg, next, &opt->params.cutoff), i++;
        else if (strcmp(arg, "-p") == 0) {
            opt->prefix = next, i++;
            ok = next != NULL;
            if (!ok) fprintf(stderr, "-p needs a prefix\n");
        } else if (arg[0] == '-') {
            fprintf(stderr, "unknown option '%s'\n", arg);
            ok = false;
        } else if (!opt->model_path) {
            opt->model_path = arg;
        } else {
            fprintf(stderr, "unexpected argument '%s'\n", arg);
            ok = false;
        }
        if (!ok) return false;
    }
    if (!opt->model_path) {
        fprintf(stderr, "missing MODEL.gguf\n");
        return false;
    }
    return true;
}

/* The file name without directory and extension, for the result line. */
static void model_label(const char *path, char *label, size_t size) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    snprintf(label, size, "%s", base);
    char *dot = strstr(label, ".gguf");
    if (dot) *dot = '\0';
}

static bool expand_once(sm_tree *tree, const tree_options *opt, bool batched, sm_tree_result *r) {
    sm_tree_params p = opt->params;
    p.batched = batched;
    if (sm_tree_expand(tree, opt->prefix, &p, r) != SM_OK) {
        fprintf(stderr, "bench_tree: %s\n", sm_tree_last_error(tree));
        return false;
    }
    return true;
}

/* Times both kinds, alternating; fills the medians. */
static bool time_both(sm_tree *tree, const tree_options *opt, double *batched_ms, double *sequential_ms) {
    double batched[BENCH_MAX_REPS], sequential[BENCH_MAX_REPS];
    for (int32_t rep = 0; rep < opt->reps; rep++) {
        /* Alternate which kind goes first so drift in machine load hits both. */
        for (int32_t k = 0; k < 2; k++) {
            const bool as_batch = (rep + k) % 2 == 0;
            sm_tree_result r;
            if (!expand_once(tree, opt, as_batch, &r)) return false;
            (as_batch ? batched : sequential)[rep] = r.elapsed_ms;
            sm_tree_result_free(&r);
        }
    }
    *batched_ms = bench_median(batched, opt->reps);
    *sequential_ms = bench_median(sequential, opt->reps);
    return true;
}

static int run(const tree_options *opt, sm_model *model) {
    sm_error err = {0};
    uint32_t n_ctx = (uint32_t)opt->n_ctx;
    if ((int32_t)n_ctx > sm_model_n_ctx_train(model)) n_ctx = (uint32_t)sm_model_n_ctx_train(model);
    sm_tree *tree = sm_tree_new(&model, 1, n_ctx, opt->n_threads, opt->params.beam_limit, &err);
    if (!tree) {
        fprintf(stderr, "bench_tree: %s\n", err.message);
        return 1;
    }
    int rc = 1;
    sm_tree_result batched = {0}, sequential = {0};
    double b = 0.0, s = 0.0;
    if (!expand_once(tree, opt, true, &batched) || !expand_once(tree, opt, false, &sequential)) goto done;
    if (batched.n_nodes != sequential.n_nodes) {
        fprintf(stderr, "bench_tree: the batched tree has %d nodes, the beam-by-beam one %d\n", batched.n_nodes,
                sequential.n_nodes);
        goto done;
    }
    if (!time_both(tree, opt, &b, &s)) goto done;
    char label[256];
    model_label(opt->model_path, label, sizeof label);
    printf("tree model=%s live_beams=%d mean_live=%.1f levels=%d nodes=%d suggestions=%d threads=%d "
           "batched_ms=%.3f sequential_ms=%.3f speedup=%.2f\n",
           label, batched.max_live_beams,
           batched.n_levels ? (double)batched.n_tokens_decoded / batched.n_levels : 0.0, batched.n_levels,
           batched.n_nodes, batched.n_suggestions, opt->n_threads, b, s, s / b);
    rc = 0;
done:
    sm_tree_result_free(&batched);
    sm_tree_result_free(&sequential);
    sm_tree_free(tree);
    return rc;
}

int main(int argc, char **argv) {
    tree_options opt;
    if (!parse_options(argc, argv, &opt)) {
        usage(argv[0]);
        return 2;
    }
    sm_set_llama_logging(false);
    sm_model_params mp = sm_model_default_params();
    sm_error err = {0};
    sm_model *model = sm_model_load(opt.model_path, &mp, &err);
    if (!model) {
        fprintf(stderr, "bench_tree: %s\n", err.message);
        return 1;
    }
    const int rc = run(&opt, model);
    sm_model_free(model);
    return rc;
}
