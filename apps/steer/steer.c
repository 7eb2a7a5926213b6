/*
 * llama_selfmod steer -m MODEL --positive FILE --negative FILE -o VEC.gguf
 *
 * Each file holds one prompt per line (empty lines are skipped). Every
 * prompt is decoded alone; the chosen layers' outputs are averaged over its
 * tokens, then over the prompts of each file; the control vector is the
 * positive mean minus the negative mean per layer, written in llama.cpp's
 * control-vector GGUF format (docs/INTROSPECTION.md).
 */
#include "steer.h"

#include "selfmod.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STEER_MAX_LAYERS 256
#define STEER_EXIT_USAGE 2

typedef struct prompt_list {
    char *text;            /* the file, its newlines turned into NULs       */
    const char **lines;
    int32_t n;
} prompt_list;

typedef struct steer_options {
    const char *model;
    const char *positive, *negative, *out;
    int32_t layers[STEER_MAX_LAYERS];
    int32_t n_layers;
    int32_t n_threads;
    int32_t n_ctx;
    bool quiet;
} steer_options;

static void usage(FILE *out) {
    fputs("usage: llama_selfmod steer -m MODEL --positive FILE --negative FILE -o VEC.gguf [options]\n"
          "Computes a control vector: the mean layer outputs of the positive prompts minus those of\n"
          "the negative prompts (one prompt per line). Apply it with --control-vector VEC.gguf[:SCALE].\n"
          "\n"
          "  -m, --model PATH       GGUF model file\n"
          "      --positive FILE    prompts showing the wanted direction, one per line\n"
          "      --negative FILE    prompts showing its opposite, one per line\n"
          "  -o, --output FILE      the control vector to write (GGUF)\n"
          "      --layers L,..      layers to steer, >= 1, negative from the end (default: 1 to the last)\n"
          "      --threads N        CPU threads; 0 = all online cores (default: 0)\n"
          "      --ctx-size N       context for one prompt; 0 = the model's, at most 4096 (default: 0)\n"
          "      --quiet            no progress lines or llama.cpp logging\n"
          "  -h, --help             this help\n",
          out);
}

static int usage_error(const char *fmt, const char *value) {
    fputs("llama_selfmod steer: error: ", stderr);
    fprintf(stderr, fmt, value);
    fputs(" (see steer --help)\n", stderr);
    return STEER_EXIT_USAGE;
}

static bool parse_int(const char *text, long lo, long hi, int32_t *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi) return false;
    *out = (int32_t)v;
    return true;
}

static bool parse_layers(const char *text, steer_options *o) {
    o->n_layers = 0;
    for (const char *p = text; *p;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || (*end != ',' && *end) || o->n_layers == STEER_MAX_LAYERS || v < -100000 || v > 100000)
            return false;
        o->layers[o->n_layers++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    return o->n_layers > 0;
}

enum { OPT_POSITIVE = 1000, OPT_NEGATIVE, OPT_LAYERS, OPT_THREADS, OPT_CTX, OPT_QUIET };

/* Returns -1 to go on, else an exit code. */
static int parse(int argc, char **argv, steer_options *o) {
    static const struct option options[] = {
        {"model", required_argument, NULL, 'm'},     {"positive", required_argument, NULL, OPT_POSITIVE},
        {"negative", required_argument, NULL, OPT_NEGATIVE}, {"output", required_argument, NULL, 'o'},
        {"layers", required_argument, NULL, OPT_LAYERS}, {"threads", required_argument, NULL, OPT_THREADS},
        {"ctx-size", required_argument, NULL, OPT_CTX}, {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, 'h'},            {NULL, 0, NULL, 0},
    };
    *o = (steer_options){0};
    opterr = 0;
    optind = 0; /* 0, not 1: glibc then also forgets a short-option group left half-read */
    int c;
    while ((c = getopt_long(argc, argv, ":m:o:h", options, NULL)) != -1) {
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'o': o->out = optarg; break;
        case OPT_POSITIVE: o->positive = optarg; break;
        case OPT_NEGATIVE: o->negative = optarg; break;
        case OPT_LAYERS:
            if (!parse_layers(optarg, o)) return usage_error("invalid --layers '%s': expected numbers like 1,3,-1", optarg);
            break;
        case OPT_THREADS:
            if (!parse_int(optarg, 0, 1024, &o->n_threads)) return usage_error("invalid --threads '%s'", optarg);
            break;
        case OPT_CTX:
            if (!parse_int(optarg, 0, 1 << 20, &o->n_ctx)) return usage_error("invalid --ctx-size '%s'", optarg);
            break;
        case OPT_QUIET: o->quiet = true; break;
        case 'h': usage(stdout); return 0;
        case ':': return usage_error("%s needs a value", argv[optind - 1]);
        default: return usage_error("unknown flag '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return usage_error("unexpected argument '%s'", argv[optind]);
    if (!o->model) return usage_error("%s", "no model: give -m MODEL");
    if (!o->positive || !o->negative) return usage_error("%s", "give both --positive FILE and --negative FILE");
    if (!o->out) return usage_error("%s", "no output: give -o VEC.gguf");
    return -1;
}

static bool read_prompts(const char *path, prompt_list *list) {
    *list = (prompt_list){0};
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "llama_selfmod steer: error: cannot read '%s': %s\n", path, strerror(errno));
        return false;
    }
    size_t cap = 4096, len = 0;
    list->text = malloc(cap);
    for (size_t got; list->text && (got = fread(list->text + len, 1, cap - len - 1, f)) > 0;) {
        len += got;
        if (cap - len > 1) continue;
        char *bigger = realloc(list->text, cap *= 2);
        if (!bigger) break;
        list->text = bigger;
    }
    fclose(f);
    if (!list->text) return false;
    list->text[len] = '\0';
    list->lines = malloc(sizeof(char *) * (len + 1));
    if (!list->lines) return false;
    for (char *line = list->text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        size_t n = strlen(line);
        if (n > 0 && line[n - 1] == '\r') line[--n] = '\0';
        if (n > 0) list->lines[list->n++] = line;
        line = nl ? nl + 1 : NULL;
    }
    if (list->n == 0) fprintf(stderr, "llama_selfmod steer: error: '%s' holds no prompt (one per line)\n", path);
    return list->n > 0;
}

static void free_prompts(prompt_list *list) {
    free(list->text);
    free(list->lines);
}

static int run(const steer_options *o, const prompt_list *pos, const prompt_list *neg) {
    sm_set_llama_logging(false); /* llama.cpp's lines stay hidden; errors carry its reason */
    sm_model_params mp = sm_model_default_params();
    sm_error err = {0};
    sm_model *model = sm_model_load(o->model, &mp, &err);
    if (!model) {
        fprintf(stderr, "llama_selfmod steer: error: %s\n", err.message);
        return 1;
    }
    sm_steer_params sp = sm_steer_default_params();
    sp.positive = pos->lines;
    sp.n_positive = pos->n;
    sp.negative = neg->lines;
    sp.n_negative = neg->n;
    sp.layers = o->n_layers > 0 ? o->layers : NULL;
    sp.n_layers = o->n_layers;
    sp.n_threads = o->n_threads;
    sp.n_ctx = (uint32_t)o->n_ctx;
    sm_control_vector cv;
    int code = 1;
    if (sm_steer_compute(model, &sp, &cv, &err) != SM_OK ||
        sm_control_vector_save(&cv, o->out, sm_model_description(model), &err) != SM_OK) {
        fprintf(stderr, "llama_selfmod steer: error: %s\n", err.message);
    } else {
        code = 0;
        if (!o->quiet)
            fprintf(stderr, "[steer] %d positive and %d negative prompts: wrote %s (%d values per layer)\n", pos->n, neg->n,
                    o->out, cv.n_embd);
    }
    sm_control_vector_free(&cv);
    sm_model_free(model);
    return code;
}

int steer_main(int argc, char **argv) {
    steer_options o;
    int code = parse(argc, argv, &o);
    if (code >= 0) return code;
    prompt_list pos, neg;
    bool ok = read_prompts(o.positive, &pos);
    ok = read_prompts(o.negative, &neg) && ok;
    code = ok ? run(&o, &pos, &neg) : 1;
    free_prompts(&pos);
    free_prompts(&neg);
    return code;
}
