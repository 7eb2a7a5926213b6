/*
 * make_random_model - writes a random-weight Llama-architecture GGUF of a
 * realistic size, for speed benchmarks (what it says is noise; how fast it
 * says it is what matters).
 *
 *   make_random_model VOCAB.gguf OUT.gguf [--layers N] [--embd N] [--ff N]
 *                     [--heads N] [--ctx N] [--seed N] [--type T] [--untied] [--fim]
 *
 * The vocabulary and tokenizer come from VOCAB.gguf (a vocab-only file such
 * as ggml-vocab-llama-spm.gguf or ggml-vocab-gpt-2.gguf); every key of it is
 * copied, then the architecture (llama) and the shape are written over it. The default shape is that of llama2.c's
 * stories110M: 768 wide, 12 layers of 12 heads, feed-forward 2048, context
 * 2048, and with the 32000-token Llama vocabulary about 110M parameters.
 * Like stories110M, the output projection is tied to the token embeddings
 * (llama.cpp reuses token_embd when output.weight is absent); --untied writes
 * a separate output.weight. Matrices are F16 (--type f32, q8_0, q4_0 or
 * q4_k: the same numbers in that type, quantized as llama-quantize
 * would, as most users' files are), drawn from
 * N(0, 0.02^2) with a fixed seed; norm weights are 1.
 *
 * --fim makes it a code model's vocabulary: its last five tokens become
 * Qwen2.5-Coder's fill-in-the-middle control tokens (<|fim_prefix|>,
 * <|fim_suffix|>, <|fim_middle|>, <|repo_name|>, <|file_sep|>), named as
 * such in the metadata, for testing /infill.
 *
 * The file is written next to OUT.gguf and renamed into place, so an
 * interrupted run never leaves a truncated model behind.
 */
#include <ggml.h>
#include <gguf.h>

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WEIGHT_STDDEV 0.02f
#define MAX_TENSORS 1024

typedef struct model_shape {
    uint32_t n_vocab;
    uint32_t n_embd;
    uint32_t n_layer;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t n_ff;
    uint32_t n_ctx;
    uint64_t seed;
    enum ggml_type type;    /* of the matrices */
    bool untied;
    bool fim;               /* the last tokens become FIM control tokens */
} model_shape;

typedef struct options {
    const char *vocab_path;
    const char *out_path;
    model_shape shape;
} options;

/* ------------------------------------------------------------------ */
/* Deterministic normal numbers (splitmix64 + Box-Muller)              */
/* ------------------------------------------------------------------ */

typedef struct rng {
    uint64_t state;
    float spare;
    bool has_spare;
} rng;

static uint64_t rng_next_u64(rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in (0, 1]: never 0, so log() below stays finite. */
static double rng_uniform(rng *r) {
    return ((double)(rng_next_u64(r) >> 11) + 1.0) / 9007199254740992.0;
}

static float rng_normal(rng *r) {
    if (r->has_spare) {
        r->has_spare = false;
        return r->spare;
    }
    const double radius = sqrt(-2.0 * log(rng_uniform(r)));
    const double angle = 2.0 * M_PI * rng_uniform(r);
    r->spare = (float)(radius * sin(angle));
    r->has_spare = true;
    return (float)(radius * cos(angle));
}

/* Each tensor gets its own stream from the seed and its name, so its
 * values do not depend on which tensors come before it. */
static rng rng_for_tensor(uint64_t seed, const char *name) {
    uint64_t hash = 0xCBF29CE484222325ull; /* FNV-1a */
    for (const char *c = name; *c; c++) {
        hash = (hash ^ (unsigned char)*c) * 0x100000001B3ull;
    }
    return (rng){.state = seed ^ hash};
}

/* ------------------------------------------------------------------ */
/* Command line                                                        */
/* ------------------------------------------------------------------ */

static void print_usage(FILE *out) {
    fprintf(out,
            "usage: make_random_model VOCAB.gguf OUT.gguf [--layers N] [--embd N] [--ff N]\n"
            "                         [--heads N] [--ctx N] [--seed N] [--type f16|f32|q8_0|q4_0|q4_k]\n"
            "                         [--untied] [--fim]\n"
            "defaults: --layers 12 --embd 768 --ff 2048 --heads 12 --ctx 2048 --seed 42,\n"
            "F16 weights, output tied to token_embd (the stories110M shape)\n");
}

static bool parse_positive(const char *flag, const char *text, uint32_t *value) {
    char *end = NULL;
    errno = 0;
    const unsigned long parsed = text ? strtoul(text, &end, 10) : 0;
    if (!text || *end != '\0' || errno != 0 || parsed == 0 || parsed > 1000000ul) {
        fprintf(stderr, "make_random_model: %s needs a positive integer, got '%s'\n", flag,
                text ? text : "(nothing)");
        return false;
    }
    *value = (uint32_t)parsed;
    return true;
}

static bool parse_options(int argc, char **argv, options *opt) {
    opt->shape = (model_shape){
        .n_embd = 768, .n_layer = 12, .n_head = 12, .n_ff = 2048, .n_ctx = 2048, .seed = 42, .type = GGML_TYPE_F16};
    int n_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        uint32_t seed = 0;
        bool ok = true;
        if (strcmp(arg, "--layers") == 0) {
            ok = parse_positive(arg, next, &opt->shape.n_layer), i++;
        } else if (strcmp(arg, "--embd") == 0) {
            ok = parse_positive(arg, next, &opt->shape.n_embd), i++;
        } else if (strcmp(arg, "--ff") == 0) {
            ok = parse_positive(arg, next, &opt->shape.n_ff), i++;
        } else if (strcmp(arg, "--heads") == 0) {
            ok = parse_positive(arg, next, &opt->shape.n_head), i++;
        } else if (strcmp(arg, "--ctx") == 0) {
            ok = parse_positive(arg, next, &opt->shape.n_ctx), i++;
        } else if (strcmp(arg, "--seed") == 0) {
            ok = parse_positive(arg, next, &seed), i++;
            opt->shape.seed = seed;
        } else if (strcmp(arg, "--type") == 0) {
            const char *name = i + 1 < argc ? argv[++i] : "";
            const struct { const char *name; enum ggml_type type; } types[] = {
                {"f16", GGML_TYPE_F16}, {"f32", GGML_TYPE_F32}, {"q8_0", GGML_TYPE_Q8_0},
                {"q4_0", GGML_TYPE_Q4_0}, {"q4_k", GGML_TYPE_Q4_K}};
            ok = false;
            for (size_t t = 0; t < sizeof types / sizeof *types; t++)
                if (strcmp(name, types[t].name) == 0) opt->shape.type = types[t].type, ok = true;
            if (!ok) fprintf(stderr, "make_random_model: --type is one of f16, f32, q8_0, q4_0, q4_k (got '%s')\n", name);
        } else if (strcmp(arg, "--untied") == 0) {
            opt->shape.untied = true;
        } else if (strcmp(arg, "--fim") == 0) {
            opt->shape.fim = true;
        } else if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_usage(stdout);
            exit(0);
        } else if (arg[0] == '-') {
            fprintf(stderr, "make_random_model: unknown option '%s'\n", arg);
            ok = false;
        } else if (n_positional == 0) {
            opt->vocab_path = arg, n_positional++;
        } else if (n_positional == 1) {
            opt->out_path = arg, n_positional++;
        } else {
            fprintf(stderr, "make_random_model: unexpected argument '%s'\n", arg);
            ok = false;
        }
        if (!ok) {
            return false;
        }
    }
    if (n_positional != 2) {
        fprintf(stderr, "make_random_model: need VOCAB.gguf and OUT.gguf\n");
        return false;
    }
    if (opt->shape.n_embd % opt->shape.n_head != 0 || (opt->shape.n_embd / opt->shape.n_head) % 2) {
        fprintf(stderr, "make_random_model: --embd %u must split into --heads %u heads of even size\n",
                opt->shape.n_embd, opt->shape.n_head);
        return false;
    }
    const int64_t block = ggml_blck_size(opt->shape.type); /* rows are n_embd or n_ff wide */
    if (opt->shape.n_embd % block || opt->shape.n_ff % block) {
        fprintf(stderr, "make_random_model: --type %s needs --embd and --ff to be multiples of %lld\n",
                ggml_type_name(opt->shape.type), (long long)block);
        return false;
    }
    opt->shape.n_head_kv = opt->shape.n_head;
    return true;
}

/* ------------------------------------------------------------------ */
/* Metadata                                                            */
/* ------------------------------------------------------------------ */

static bool read_vocab(const char *path, struct gguf_context *out, uint32_t *n_vocab) {
    struct gguf_init_params params = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *vocab = gguf_init_from_file(path, params);
    if (!vocab) {
        fprintf(stderr, "make_random_model: cannot read '%s' as GGUF\n", path);
        return false;
    }
    const int64_t tokens_key = gguf_find_key(vocab, "tokenizer.ggml.tokens");
    if (tokens_key >= 0) {
        *n_vocab = (uint32_t)gguf_get_arr_n(vocab, tokens_key);
        gguf_set_kv(out, vocab);
    } else {
        fprintf(stderr, "make_random_model: '%s' has no vocabulary (tokenizer.ggml.tokens)\n", path);
    }
    gguf_free(vocab);
    return tokens_key >= 0;
}

/* --fim: the vocabulary's last tokens renamed to FIM control tokens, and
 * the metadata keys llama.cpp reads them from. */
static bool make_fim_tokens(struct gguf_context *gguf, uint32_t n_vocab) {
    static const char *const names[] = {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|repo_name|>",
                                        "<|file_sep|>"};
    static const char *const keys[] = {"tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id",
                                       "tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.fim_rep_token_id",
                                       "tokenizer.ggml.fim_sep_token_id"};
    enum { N_FIM = 5, TOKEN_TYPE_CONTROL = 3 };
    const int64_t tokens_key = gguf_find_key(gguf, "tokenizer.ggml.tokens");
    const int64_t types_key = gguf_find_key(gguf, "tokenizer.ggml.token_type");
    if (n_vocab < 2 * N_FIM || types_key < 0 || gguf_get_arr_type(gguf, types_key) != GGUF_TYPE_INT32) {
        fprintf(stderr, "make_random_model: --fim needs a vocabulary with int32 token types\n");
        return false;
    }
    /* copies: gguf_set_arr_str frees the old array before it reads the new */
    char **tokens = calloc(n_vocab, sizeof *tokens);
    int32_t *types = malloc(sizeof *types * n_vocab);
    bool ok = tokens && types;
    const uint32_t first_fim = n_vocab - N_FIM;
    for (uint32_t i = 0; ok && i < n_vocab; i++)
        ok = (tokens[i] = strdup(i >= first_fim ? names[i - first_fim] : gguf_get_arr_str(gguf, tokens_key, i))) != NULL;
    if (!ok) {
        fprintf(stderr, "make_random_model: out of memory\n");
    } else {
        memcpy(types, gguf_get_arr_data(gguf, types_key), sizeof *types * n_vocab);
        for (uint32_t k = 0; k < N_FIM; k++) {
            types[first_fim + k] = TOKEN_TYPE_CONTROL;
            gguf_set_val_u32(gguf, keys[k], first_fim + k);
        }
        gguf_set_arr_str(gguf, "tokenizer.ggml.tokens", (const char **)tokens, n_vocab);
        gguf_set_arr_data(gguf, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, n_vocab);
    }
    for (uint32_t i = 0; tokens && i < n_vocab; i++) free(tokens[i]);
    free(tokens);
    free(types);
    return ok;
}

static void write_hparams(struct gguf_context *gguf, const model_shape *s) {
    /* Any tokenizer works with the llama architecture (Llama 3 uses GPT-2's
     * BPE); the vocabulary file's own hparams, if any, are left unused. */
    gguf_set_val_str(gguf, "general.architecture", "llama");
    gguf_set_val_str(gguf, "general.name", "random-llama");
    /* llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_Q4_0, MOSTLY_Q4_K_S */
    const uint32_t ftype = s->type == GGML_TYPE_F32 ? 0 : s->type == GGML_TYPE_F16 ? 1 : s->type == GGML_TYPE_Q8_0 ? 7
                           : s->type == GGML_TYPE_Q4_0 ? 2 : 14;
    gguf_set_val_u32(gguf, "general.file_type", ftype);
    gguf_set_val_u32(gguf, "llama.vocab_size", s->n_vocab);
    gguf_set_val_u32(gguf, "llama.context_length", s->n_ctx);
    gguf_set_val_u32(gguf, "llama.embedding_length", s->n_embd);
    gguf_set_val_u32(gguf, "llama.block_count", s->n_layer);
    gguf_set_val_u32(gguf, "llama.feed_forward_length", s->n_ff);
    gguf_set_val_u32(gguf, "llama.attention.head_count", s->n_head);
    gguf_set_val_u32(gguf, "llama.attention.head_count_kv", s->n_head_kv);
    gguf_set_val_u32(gguf, "llama.rope.dimension_count", s->n_embd / s->n_head);
    gguf_set_val_f32(gguf, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
}

/* ------------------------------------------------------------------ */
/* Tensors                                                             */
/* ------------------------------------------------------------------ */

typedef struct tensor_set {
    struct ggml_context *meta;  /* tensor descriptions only, no data */
    struct gguf_context *gguf;
    void *data[MAX_TENSORS];
    int n;
    uint64_t n_params;
    const model_shape *shape;
} tensor_set;

/* A quantized type: each row drawn in F32, then quantized as llama-quantize would. */
static bool fill_random_quantized(void *data, enum ggml_type type, int64_t n_per_row, int64_t n_rows, rng *r) {
    float *row = malloc(sizeof *row * (size_t)n_per_row);
    if (!row) return false;
    const size_t row_bytes = ggml_row_size(type, n_per_row);
    for (int64_t i = 0; i < n_rows; i++) {
        for (int64_t j = 0; j < n_per_row; j++) row[j] = WEIGHT_STDDEV * rng_normal(r);
        ggml_quantize_chunk(type, row, (char *)data + (size_t)i * row_bytes, 0, 1, n_per_row, NULL);
    }
    free(row);
    return true;
}

static void fill_random(void *data, enum ggml_type type, int64_t n, rng *r) {
    if (type == GGML_TYPE_F32) {
        float *out = data;
        for (int64_t i = 0; i < n; i++) {
            out[i] = WEIGHT_STDDEV * rng_normal(r);
        }
        return;
    }
    ggml_fp16_t *out = data;
    float chunk[4096];
    for (int64_t start = 0; start < n; start += 4096) {
        const int64_t len = n - start < 4096 ? n - start : 4096;
        for (int64_t i = 0; i < len; i++) {
            chunk[i] = WEIGHT_STDDEV * rng_normal(r);
        }
        ggml_fp32_to_fp16_row(chunk, out + start, len);
    }
}

static void fill_ones(float *data, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        data[i] = 1.0f;
    }
}

/* ne0 is the input width, ne1 the output width (ggml's convention);
 * ne1 == 0 makes a norm vector. */
static bool add_tensor(tensor_set *set, const char *name, int64_t ne0, int64_t ne1) {
    if (set->n == MAX_TENSORS) {
        fprintf(stderr, "make_random_model: more than %d tensors\n", MAX_TENSORS);
        return false;
    }
    const bool is_norm = ne1 == 0;
    const enum ggml_type type = is_norm ? GGML_TYPE_F32 : set->shape->type;
    struct ggml_tensor *t = is_norm ? ggml_new_tensor_1d(set->meta, type, ne0)
                                    : ggml_new_tensor_2d(set->meta, type, ne0, ne1);
    ggml_set_name(t, name);
    void *data = malloc(ggml_nbytes(t));
    if (!data) {
        fprintf(stderr, "make_random_model: out of memory for %s\n", name);
        return false;
    }
    if (is_norm) {
        fill_ones(data, ne0);
    } else {
        rng r = rng_for_tensor(set->shape->seed, name);
        if (ggml_is_quantized(type)) {
            if (!fill_random_quantized(data, type, ne0, ne1, &r)) {
                fprintf(stderr, "make_random_model: out of memory for %s\n", name);
                free(data);
                return false;
            }
        } else {
            fill_random(data, type, ggml_nelements(t), &r);
        }
    }
    gguf_add_tensor(set->gguf, t);
    gguf_set_tensor_data(set->gguf, name, data);
    set->data[set->n++] = data;
    set->n_params += (uint64_t)ggml_nelements(t);
    return true;
}

static bool add_layer(tensor_set *set, uint32_t layer) {
    const model_shape *s = set->shape;
    const int64_t n_embd_kv = (int64_t)s->n_embd / s->n_head * s->n_head_kv;
    const struct {
        const char *suffix;
        int64_t ne0, ne1;
    } tensors[] = {
        {"attn_norm", s->n_embd, 0},   {"attn_q", s->n_embd, s->n_embd},
        {"attn_k", s->n_embd, n_embd_kv}, {"attn_v", s->n_embd, n_embd_kv},
        {"attn_output", s->n_embd, s->n_embd}, {"ffn_norm", s->n_embd, 0},
        {"ffn_gate", s->n_embd, s->n_ff}, {"ffn_up", s->n_embd, s->n_ff},
        {"ffn_down", s->n_ff, s->n_embd},
    };
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) {
        char name[GGML_MAX_NAME];
        snprintf(name, sizeof name, "blk.%u.%s.weight", layer, tensors[i].suffix);
        if (!add_tensor(set, name, tensors[i].ne0, tensors[i].ne1)) {
            return false;
        }
    }
    return true;
}

static bool add_all_tensors(tensor_set *set) {
    const model_shape *s = set->shape;
    if (!add_tensor(set, "token_embd.weight", s->n_embd, s->n_vocab)) {
        return false;
    }
    for (uint32_t layer = 0; layer < s->n_layer; layer++) {
        if (!add_layer(set, layer)) {
            return false;
        }
    }
    if (!add_tensor(set, "output_norm.weight", s->n_embd, 0)) {
        return false;
    }
    return !s->untied || add_tensor(set, "output.weight", s->n_embd, s->n_vocab);
}

static void free_tensor_set(tensor_set *set) {
    for (int i = 0; i < set->n; i++) {
        free(set->data[i]);
    }
    if (set->meta) {
        ggml_free(set->meta);
    }
}

/* ------------------------------------------------------------------ */

static bool write_model(const options *opt, struct gguf_context *gguf, const tensor_set *set) {
    char tmp_path[4096];
    snprintf(tmp_path, sizeof tmp_path, "%s.tmp", opt->out_path);
    if (!gguf_write_to_file(gguf, tmp_path, false)) {
        fprintf(stderr, "make_random_model: cannot write '%s'\n", tmp_path);
        remove(tmp_path);
        return false;
    }
    if (rename(tmp_path, opt->out_path) != 0) {
        fprintf(stderr, "make_random_model: cannot rename '%s' to '%s': %s\n", tmp_path,
                opt->out_path, strerror(errno));
        remove(tmp_path);
        return false;
    }
    const model_shape *s = &opt->shape;
    printf("wrote %s: llama, %.1fM parameters, %s, n_vocab %u, n_embd %u, n_layer %u, "
           "n_head %u, n_ff %u, n_ctx %u, output %s\n",
           opt->out_path, (double)set->n_params / 1e6, ggml_type_name(s->type), s->n_vocab,
           s->n_embd, s->n_layer, s->n_head, s->n_ff, s->n_ctx,
           s->untied ? "separate" : "tied to token_embd");
    return true;
}

int main(int argc, char **argv) {
    options opt = {0};
    if (!parse_options(argc, argv, &opt)) {
        print_usage(stderr);
        return 2;
    }
    struct gguf_context *gguf = gguf_init_empty();
    if (!read_vocab(opt.vocab_path, gguf, &opt.shape.n_vocab)) {
        gguf_free(gguf);
        return 1;
    }
    if (opt.shape.fim && !make_fim_tokens(gguf, opt.shape.n_vocab)) {
        gguf_free(gguf);
        return 1;
    }
    write_hparams(gguf, &opt.shape);

    struct ggml_init_params meta_params = {
        .mem_size = MAX_TENSORS * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
    tensor_set set = {.meta = ggml_init(meta_params), .gguf = gguf, .shape = &opt.shape};
    const bool ok = set.meta && add_all_tensors(&set) && write_model(&opt, gguf, &set);

    free_tensor_set(&set);
    gguf_free(gguf);
    return ok ? 0 : 1;
}
