/*
 * gguf_check.c - refuse model files that would make llama.cpp assert.
 *
 * llama.cpp validates a GGUF file's structure and throws (which guard.cpp
 * catches) for most problems, but some hyperparameters reach GGML_ASSERT,
 * which aborts the process: a layer count of 0 or above its table, a head
 * count of 0, a width that must divide and does not, a NaN epsilon.
 * This module reads the metadata with gguf.h before llama.cpp loads the
 * file and names the first such field and its value.
 *
 * Invariant: a check only rejects what llama.cpp cannot run; any model
 * llama.cpp loads and runs correctly passes.
 */
#include "internal.h"

#include "gguf.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_LAYERS 512   /* llama.cpp's LLAMA_MAX_LAYERS  */
#define MAX_EXPERTS 1024 /* llama.cpp's LLAMA_MAX_EXPERTS */

typedef struct checker {
    const struct gguf_context *g;
    const char *arch;
    const char *path;
    sm_error *err;
    bool failed;
} checker;

static bool is_integer_type(enum gguf_type t) {
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_INT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_INT16 ||
           t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_UINT64 || t == GGUF_TYPE_INT64;
}

/* An integer of any width at element i of raw data of type t. */
static long long integer_at(enum gguf_type t, const void *data, size_t i) {
    switch (t) {
    case GGUF_TYPE_UINT8: return ((const uint8_t *)data)[i];
    case GGUF_TYPE_INT8: return ((const int8_t *)data)[i];
    case GGUF_TYPE_UINT16: return ((const uint16_t *)data)[i];
    case GGUF_TYPE_INT16: return ((const int16_t *)data)[i];
    case GGUF_TYPE_UINT32: return ((const uint32_t *)data)[i];
    case GGUF_TYPE_INT32: return ((const int32_t *)data)[i];
    case GGUF_TYPE_UINT64: return (long long)(((const uint64_t *)data)[i] > (uint64_t)LLONG_MAX ? LLONG_MAX : ((const uint64_t *)data)[i]);
    case GGUF_TYPE_INT64: return ((const int64_t *)data)[i];
    default: return 0;
    }
}

static void fail(checker *c, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(checker *c, const char *key, const char *fmt, ...) {
    if (c->failed) return;
    c->failed = true;
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    sm_error_set(c->err, SM_ERR_MODEL, "model '%s' is corrupt: %s %s", c->path, key, why);
}

static int64_t find_arch_key(const checker *c, const char *suffix, char *key, size_t size) {
    snprintf(key, size, "%s.%s", c->arch, suffix);
    return gguf_find_key(c->g, key);
}

/*
 * The values of an integer key that may be a scalar or a per-layer array.
 * Returns how many were written to out (0 when the key is absent), or -1
 * after failing the check for a wrong type.
 */
static int64_t integer_values(checker *c, const char *suffix, char *key, size_t key_size, long long *out,
                              int64_t max_out) {
    int64_t id = find_arch_key(c, suffix, key, key_size);
    if (id < 0) return 0;
    enum gguf_type t = gguf_get_kv_type(c->g, id);
    if (is_integer_type(t)) {
        out[0] = integer_at(t, gguf_get_val_data(c->g, id), 0);
        return 1;
    }
    if (t == GGUF_TYPE_ARRAY && is_integer_type(gguf_get_arr_type(c->g, id))) {
        int64_t n = (int64_t)gguf_get_arr_n(c->g, id);
        if (n > max_out) {
            fail(c, key, "has %lld entries, more than %d layers", (long long)n, MAX_LAYERS);
            return -1;
        }
        const void *data = gguf_get_arr_data(c->g, id);
        for (int64_t i = 0; i < n; i++) out[i] = integer_at(gguf_get_arr_type(c->g, id), data, (size_t)i);
        return n;
    }
    fail(c, key, "has type %s, not an integer", gguf_type_name(t));
    return -1;
}

/* One integer key: absent (returns false) or in [lo, hi]. */
static bool integer_in_range(checker *c, const char *suffix, long long lo, long long hi, long long *value) {
    char key[160];
    long long v[MAX_LAYERS];
    int64_t n = integer_values(c, suffix, key, sizeof key, v, MAX_LAYERS);
    if (n <= 0) return false;
    for (int64_t i = 0; i < n; i++)
        if (v[i] < lo || v[i] > hi) {
            if (n == 1) fail(c, key, "is %lld, outside [%lld, %lld]", v[i], lo, hi);
            else fail(c, key, "is %lld for layer %lld, outside [%lld, %lld]", v[i], (long long)i, lo, hi);
            return false;
        }
    *value = v[0];
    return true;
}

static void check_epsilon(checker *c, const char *suffix) {
    char key[160];
    int64_t id = find_arch_key(c, suffix, key, sizeof key);
    if (id < 0) return;
    enum gguf_type t = gguf_get_kv_type(c->g, id);
    double v = t == GGUF_TYPE_FLOAT32 ? gguf_get_val_f32(c->g, id)
             : t == GGUF_TYPE_FLOAT64 ? gguf_get_val_f64(c->g, id)
                                      : NAN;
    if (t != GGUF_TYPE_FLOAT32 && t != GGUF_TYPE_FLOAT64) fail(c, key, "has type %s, not a float", gguf_type_name(t));
    else if (!isfinite(v) || v < 0) fail(c, key, "is %g; it must be finite and >= 0", v);
}

static void check_attention(checker *c, long long n_layer, long long n_embd) {
    char key[160], key_kv[160];
    long long head[MAX_LAYERS], head_kv[MAX_LAYERS];
    int64_t n_head = integer_values(c, "attention.head_count", key, sizeof key, head, MAX_LAYERS);
    if (n_head <= 0) return;
    int64_t n_kv = integer_values(c, "attention.head_count_kv", key_kv, sizeof key_kv, head_kv, MAX_LAYERS);
    if (n_kv < 0) return;
    if (n_head > 1 && n_head != n_layer) return fail(c, key, "has %lld entries for %lld layers", (long long)n_head, n_layer);
    if (n_kv > 1 && n_kv != n_layer) return fail(c, key_kv, "has %lld entries for %lld layers", (long long)n_kv, n_layer);
    long long k_len = 0, v_len = 0;
    bool has_k = integer_in_range(c, "attention.key_length", 1, 1 << 20, &k_len);
    bool has_v = integer_in_range(c, "attention.value_length", 1, 1 << 20, &v_len);
    if (c->failed) return;
    for (int64_t i = 0; i < (n_head > 1 ? n_head : 1); i++) {
        long long h = head[i];
        /* A scalar head count of 0 makes llama.cpp treat the model as
         * attention-free; only per-layer arrays may switch layers off. */
        if (h < 0 || h > n_embd || (h == 0 && n_head == 1))
            return fail(c, key, "is %lld; it must be in [1, %lld] (embedding_length)", h, n_embd);
        if (h == 0) continue;
        if (!has_k && n_embd % h != 0)
            return fail(c, key, "is %lld, which does not divide embedding_length %lld", h, n_embd);
        if (!has_v && n_embd % h != 0)
            return fail(c, key, "is %lld, which does not divide embedding_length %lld", h, n_embd);
        if (n_kv > 0) {
            long long kv = head_kv[n_kv > 1 ? i : 0];
            if (kv <= 0 || kv > h || h % kv != 0)
                return fail(c, key_kv, "is %lld; it must divide head_count %lld", kv, h);
        }
    }
    long long n_rot = 0;
    long long head_dim = has_k ? k_len : n_embd / head[0];
    if (head[0] > 0 && integer_in_range(c, "rope.dimension_count", 0, head_dim, &n_rot) && n_rot % 2 != 0) {
        find_arch_key(c, "rope.dimension_count", key, sizeof key);
        fail(c, key, "is %lld; it must be even", n_rot);
    }
    (void)v_len;
}

/* Every tokenizer.ggml.*_token_id must name a token that exists. */
static void check_special_tokens(checker *c, long long n_vocab) {
    int64_t n_kv = gguf_get_n_kv(c->g);
    for (int64_t i = 0; i < n_kv && !c->failed; i++) {
        const char *key = gguf_get_key(c->g, i);
        size_t len = strlen(key);
        if (strncmp(key, "tokenizer.ggml.", 15) != 0 || len < 9 || strcmp(key + len - 9, "_token_id") != 0) continue;
        enum gguf_type t = gguf_get_kv_type(c->g, i);
        if (!is_integer_type(t)) {
            fail(c, key, "has type %s, not an integer", gguf_type_name(t));
            break;
        }
        long long id = integer_at(t, gguf_get_val_data(c->g, i), 0);
        /* -1 (as any width) means "none" to llama.cpp. */
        if (id == -1 || (t == GGUF_TYPE_UINT32 && id == 0xFFFFFFFFLL)) continue;
        if (id < 0 || id >= n_vocab) fail(c, key, "is %lld, outside the vocabulary of %lld tokens", id, n_vocab);
    }
}

/* The token embedding must be n_embd wide and one row per token. */
static void check_embedding_shape(checker *c, long long n_embd, long long n_vocab) {
    int64_t t = gguf_find_tensor(c->g, "token_embd.weight");
    if (t < 0) return;
    const int64_t *ne = gguf_get_tensor_ne(c->g, t);
    if (ne[0] != n_embd || (n_vocab > 0 && ne[1] != n_vocab))
        fail(c, "tensor token_embd.weight", "is %lld x %lld, expected %lld x %lld (embedding_length x vocabulary)",
             (long long)ne[0], (long long)ne[1], n_embd, n_vocab);
}

static bool check_metadata(checker *c) {
    int64_t arch_id = gguf_find_key(c->g, "general.architecture");
    if (arch_id < 0 || gguf_get_kv_type(c->g, arch_id) != GGUF_TYPE_STRING) return true; /* llama.cpp says why */
    c->arch = gguf_get_val_str(c->g, arch_id);

    long long n_vocab = 0;
    int64_t tok = gguf_find_key(c->g, "tokenizer.ggml.tokens");
    if (tok >= 0 && gguf_get_kv_type(c->g, tok) == GGUF_TYPE_ARRAY) n_vocab = (long long)gguf_get_arr_n(c->g, tok);
    check_special_tokens(c, n_vocab > 0 ? n_vocab : LLONG_MAX);

    long long n_layer = 0, n_embd = 0, v = 0;
    char key[160];
    if (find_arch_key(c, "block_count", key, sizeof key) < 0) return !c->failed; /* not a text model llama.cpp knows */
    integer_in_range(c, "block_count", 1, MAX_LAYERS, &n_layer);
    integer_in_range(c, "embedding_length", 1, 1 << 20, &n_embd);
    integer_in_range(c, "context_length", 1, INT32_MAX, &v);
    integer_in_range(c, "feed_forward_length", 0, 1 << 24, &v);
    long long n_expert = 0, n_used = 0;
    integer_in_range(c, "expert_count", 0, MAX_EXPERTS, &n_expert);
    if (integer_in_range(c, "expert_used_count", 0, n_expert, &n_used) && n_expert > 0 && n_used == 0)
        fail(c, "expert_used_count", "is 0 with %lld experts", n_expert); /* llama.cpp asserts */
    check_epsilon(c, "attention.layer_norm_rms_epsilon");
    check_epsilon(c, "attention.layer_norm_epsilon");
    if (!c->failed && n_layer > 0 && n_embd > 0) check_attention(c, n_layer, n_embd);
    if (!c->failed && n_embd > 0) check_embedding_shape(c, n_embd, n_vocab);
    return !c->failed;
}

bool sm_gguf_check(const char *path, sm_error *err) {
    struct gguf_init_params params = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_file(path, params);
    if (!g) return true; /* structurally broken: llama.cpp's loader says how */
    checker c = {.g = g, .path = path, .err = err};
    bool ok = check_metadata(&c);
    gguf_free(g);
    return ok;
}
