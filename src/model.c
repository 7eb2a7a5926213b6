/* Loading models, tokenizing, and llama.cpp's logging. */
#include "internal.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* llama.cpp's logger is process-wide, so this switch is too. The last
 * error line is kept per thread so a failed load can say why. */
static atomic_bool llama_logging_enabled = false;
static _Thread_local char last_log_error[256];

static void log_callback(enum ggml_log_level level, const char *text, void *user_data) {
    (void)user_data;
    /* The first error line since the last clear says why; later ones only
     * say that loading failed. */
    if (level == GGML_LOG_LEVEL_ERROR && last_log_error[0] == '\0') {
        snprintf(last_log_error, sizeof last_log_error, "%s", text);
        size_t n = strlen(last_log_error);
        while (n > 0 && (last_log_error[n - 1] == '\n' || last_log_error[n - 1] == '\r'))
            last_log_error[--n] = '\0';
    }
    /* Warnings and errors only: llama.cpp's INFO lines describe every
     * tensor and would bury the generation. CONT continues the last line. */
    static _Thread_local bool last_shown;
    bool show = level == GGML_LOG_LEVEL_CONT ? last_shown : level >= GGML_LOG_LEVEL_WARN;
    last_shown = show;
    if (atomic_load(&llama_logging_enabled) && show) fputs(text, stderr);
}

void sm_set_llama_logging(bool enabled) {
    atomic_store(&llama_logging_enabled, enabled);
    llama_log_set(log_callback, NULL);
}

const char *sm_llama_last_log_error(void) { return last_log_error; }
void sm_llama_clear_log_error(void) { last_log_error[0] = '\0'; }

sm_model_params sm_model_default_params(void) {
    return (sm_model_params){.n_gpu_layers = 0};
}

static sm_token find_unknown_token(const struct llama_vocab *vocab, int32_t n_vocab);

/* Says precisely what is wrong with a path before llama.cpp tries it. */
static bool check_gguf_file(const char *path, sm_error *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        sm_error_set(err, SM_ERR_IO, "cannot open model '%s': %s", path, strerror(errno));
        return false;
    }
    if (S_ISDIR(st.st_mode)) {
        sm_error_set(err, SM_ERR_IO, "model path '%s' is a directory, not a GGUF file", path);
        return false;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        sm_error_set(err, SM_ERR_IO, "cannot read model '%s': %s", path, strerror(errno));
        return false;
    }
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    if (got < 4 || memcmp(magic, "GGUF", 4) != 0) {
        sm_error_set(err, SM_ERR_MODEL, "'%s' is not a GGUF model file (%s)", path,
                     got < 4 ? "file is shorter than the 4-byte GGUF magic" : "wrong magic bytes");
        return false;
    }
    return true;
}

typedef struct progress_bridge {
    sm_progress_fn fn;
    void *user_data;
} progress_bridge;

static bool on_load_progress(float progress, void *user_data) {
    progress_bridge *b = user_data;
    b->fn(progress, b->user_data);
    return true;
}

/* Whether a TCP connection to "host:port" opens within 3 s: ggml's RPC
 * client aborts the process on a server it cannot reach, so it is only
 * asked about one that answers. */
static bool rpc_server_answers(const char *endpoint, sm_error *err) {
    char host[256];
    const char *colon = strrchr(endpoint, ':');
    if (!colon || colon == endpoint || !colon[1] || (size_t)(colon - endpoint) >= sizeof host) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "RPC server '%s': give HOST:PORT", endpoint);
        return false;
    }
    memcpy(host, endpoint, (size_t)(colon - endpoint));
    host[colon - endpoint] = '\0';
    if (host[0] == '[' && host[strlen(host) - 1] == ']') { /* [::1]:50052 */
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = '\0';
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0) {
        sm_error_set(err, SM_ERR_IO, "RPC server '%s': %s", endpoint, gai_strerror(rc));
        return false;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    bool ok = fd >= 0 && (connect(fd, res->ai_addr, res->ai_addrlen) == 0 || errno == EINPROGRESS);
    if (ok) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int so_error = 0;
        socklen_t len = sizeof so_error;
        ok = poll(&p, 1, 3000) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) == 0 && so_error == 0;
        if (!ok) errno = so_error ? so_error : ETIMEDOUT;
    }
    int saved = errno;
    if (fd >= 0) close(fd);
    freeaddrinfo(res);
    if (!ok) sm_error_set(err, SM_ERR_IO, "cannot reach the RPC server %s: %s", endpoint, strerror(saved));
    return ok;
}

/* The devices of every server in the list, NULL-terminated into devs. */
static bool rpc_devices(const char *list, ggml_backend_dev_t *devs, int32_t max, sm_error *err) {
    char copy[1024];
    if (strlen(list) >= sizeof copy) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "the RPC server list is longer than %zu bytes", sizeof copy - 1);
        return false;
    }
    snprintf(copy, sizeof copy, "%s", list);
    int32_t n = 0;
    char *save = NULL;
    for (char *ep = strtok_r(copy, ",", &save); ep; ep = strtok_r(NULL, ",", &save)) {
        if (!rpc_server_answers(ep, err)) return false;
        int32_t got = smx_rpc_devices(ep, devs + n, max - 1 - n, err);
        if (got < 0) return false;
        if (got == 0) {
            sm_error_set(err, SM_ERR_MODEL, "the RPC server %s offers no device", ep);
            return false;
        }
        n += got;
    }
    if (n == 0) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "no RPC server given (HOST:PORT[,HOST:PORT...])");
        return false;
    }
    devs[n] = NULL;
    return true;
}

sm_model *sm_model_load(const char *path, const sm_model_params *params, sm_error *err) {
    if (!path || !*path) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "no model path given");
        return NULL;
    }
    if (!check_gguf_file(path, err)) return NULL;
    sm_model_params defaults = sm_model_default_params();
    if (!params) params = &defaults;

    llama_backend_init();
    llama_log_set(log_callback, NULL);
    sm_llama_clear_log_error();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = params->n_gpu_layers < 0 ? INT32_MAX : params->n_gpu_layers;
    /* an AMX that would kill the process on the first product: no extra buffers (cpu_probe.c) */
    const bool amx_refused = !params->no_repack && !sm_cpu_extra_buffers_work();
    mp.use_extra_bufts = !params->no_repack && !amx_refused;
    ggml_backend_dev_t rpc[64];
    if (params->rpc_servers) {
        if (params->n_gpu_layers == 0) {
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT,
                         "RPC servers with n_gpu_layers 0 would hold no layer: give -1 (all) or a count");
            return NULL;
        }
        if (!rpc_devices(params->rpc_servers, rpc, 64, err)) return NULL;
        mp.devices = rpc;
    }
    progress_bridge bridge = {params->progress, params->progress_user_data};
    if (params->progress) {
        mp.progress_callback = on_load_progress;
        mp.progress_callback_user_data = &bridge;
    }
    if (!sm_gguf_check(path, err)) return NULL;
    struct llama_model *lm = smx_model_load(path, mp, err);
    if (!lm) {
        const char *why = sm_llama_last_log_error();
        sm_error_set(err, SM_ERR_MODEL, "failed to load model '%s': %s", path,
                     *why ? why : "llama.cpp could not read it (truncated or corrupt file?)");
        return NULL;
    }
    sm_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        llama_model_free(lm);
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory loading '%s'", path);
        return NULL;
    }
    m->lm = lm;
    m->vocab = llama_model_get_vocab(lm);
    m->n_vocab = llama_vocab_n_tokens(m->vocab);
    m->unk_token = find_unknown_token(m->vocab, m->n_vocab);
    m->unknown_chars = params->unknown_chars;
    m->amx_refused = amx_refused;
    llama_model_desc(lm, m->description, sizeof m->description);
    return m;
}

bool sm_model_amx_refused(const sm_model *model) { return model && model->amx_refused; }

void sm_model_free(sm_model *model) {
    if (!model) return;
    llama_model_free(model->lm);
    free(model->path);
    free(model);
}

const char *sm_model_path(const sm_model *m) { return m->path; }
const char *sm_model_description(const sm_model *m) { return m->description; }
int32_t sm_model_n_vocab(const sm_model *m) { return m->n_vocab; }

bool sm_model_token_is_eog(const sm_model *m, sm_token token) {
    return m && token >= 0 && token < m->n_vocab && llama_vocab_is_eog(m->vocab, token);
}
int32_t sm_model_n_ctx_train(const sm_model *m) { return llama_model_n_ctx_train(m->lm); }

sm_special_tokens sm_model_special_tokens(const sm_model *m) {
    const struct llama_vocab *v = m->vocab;
    /* LLAMA_TOKEN_NULL is -1, the header's "none" */
    return (sm_special_tokens){
        .bos = llama_vocab_get_add_bos(v) ? llama_vocab_bos(v) : -1,
        .fim_prefix = llama_vocab_fim_pre(v),
        .fim_suffix = llama_vocab_fim_suf(v),
        .fim_middle = llama_vocab_fim_mid(v),
        .fim_repo = llama_vocab_fim_rep(v),
        .fim_sep = llama_vocab_fim_sep(v),
    };
}
struct llama_model *sm_model_llama(const sm_model *m) { return m->lm; }

/* ------------------------------------------------------------------ */
/* Tokenizing                                                           */
/* ------------------------------------------------------------------ */

/* The vocabulary's unknown token (attribute UNKNOWN), or -1. */
static sm_token find_unknown_token(const struct llama_vocab *vocab, int32_t n_vocab) {
    for (sm_token t = 0; t < n_vocab; t++)
        if (llama_vocab_get_attr(vocab, t) & LLAMA_TOKEN_ATTR_UNKNOWN) return t;
    return -1;
}

/* Length of the UTF-8 character at s (1 for a stray or truncated byte). */
static size_t utf8_char_len(const unsigned char *s, size_t avail) {
    size_t n = *s < 0x80 ? 1 : (*s >> 5) == 0x6 ? 2 : (*s >> 4) == 0xE ? 3 : (*s >> 3) == 0x1E ? 4 : 1;
    if (n > avail) return 1;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 1;
    return n;
}

/* Whether llama.cpp can tokenize this one character (it throws for a
 * character outside a vocabulary that has no byte tokens). */
static bool char_is_known(const sm_model *m, const char *c, size_t n) {
    int32_t got;
    sm_token buf[16];
    return smx_tokenize(m->vocab, c, (int32_t)n, buf, 16, false, false, &got, NULL);
}

/* Tokens appended to a growing array. */
typedef struct token_vec {
    sm_token *data;
    int32_t n, cap;
} token_vec;

static bool vec_reserve(token_vec *v, int64_t extra) {
    if (v->n + extra > INT32_MAX) return false;
    if (v->n + extra <= v->cap) return true;
    int64_t cap = v->cap ? v->cap : 64;
    while (cap < v->n + extra) cap *= 2;
    if (cap > INT32_MAX) cap = INT32_MAX;
    sm_token *d = realloc(v->data, sizeof *d * (size_t)cap);
    if (!d) return false;
    v->data = d;
    v->cap = (int32_t)cap;
    return true;
}

/* Tokenizes text[0..len) onto v with llama.cpp's two-call protocol. */
static sm_status tokenize_onto(const sm_model *m, const char *text, size_t len, bool add_special, bool parse_special,
                               token_vec *v, sm_error *err) {
    if (len > INT32_MAX) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "text of %zu bytes is too long to tokenize", len);
        return SM_ERR_INVALID_ARGUMENT;
    }
    /* A token never covers less than one byte, plus BOS/EOS. */
    if (!vec_reserve(v, (int64_t)len + 2)) {
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory tokenizing %zu bytes", len);
        return SM_ERR_NO_MEMORY;
    }
    int32_t got;
    if (!smx_tokenize(m->vocab, text, (int32_t)len, v->data + v->n, v->cap - v->n, add_special, parse_special, &got,
                      err))
        return err ? err->status : SM_ERR_INVALID_ARGUMENT;
    if (got < 0) { /* cannot happen with len + 2 slots; say so rather than guess */
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "tokenizer needed %d tokens for %zu bytes", -got, len);
        return SM_ERR_INVALID_ARGUMENT;
    }
    v->n += got;
    return SM_OK;
}

/*
 * The slow path, taken only when llama.cpp threw: find the characters the
 * vocabulary cannot represent and either map each to the unknown token
 * (the text between them is tokenized as llama.cpp tokenizes text after a
 * special token) or name the first one.
 */
static sm_status tokenize_around_unknown(sm_model *m, const char *text, size_t len, bool add_special,
                                         bool parse_special, token_vec *v, sm_tokens *out, sm_error *err) {
    const unsigned char *u = (const unsigned char *)text;
    size_t run_start = 0;
    bool first_run = true;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_char_len(u + i, len - i);
        if (char_is_known(m, text + i, n)) {
            i += n;
            continue;
        }
        if (out->n_unknown == 0) {
            out->first_unknown_at = i;
            memcpy(out->first_unknown, text + i, n);
            out->first_unknown[n] = '\0';
        }
        if (m->unknown_chars == SM_UNKNOWN_ERROR || m->unk_token < 0) {
            char shown[16];
            sm_describe_char(text + i, n, shown, sizeof shown);
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT,
                         "character %s at byte %zu is not in the vocabulary of '%s'%s", shown, i, m->path,
                         m->unk_token < 0 ? " (it has no byte tokens and no unknown token)" : "");
            return SM_ERR_INVALID_ARGUMENT;
        }
        sm_status st = tokenize_onto(m, text + run_start, i - run_start, add_special && first_run, parse_special, v, err);
        if (st != SM_OK) return st;
        if (!vec_reserve(v, 1)) {
            sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory tokenizing");
            return SM_ERR_NO_MEMORY;
        }
        v->data[v->n++] = m->unk_token;
        out->n_unknown++;
        first_run = false;
        i += n;
        run_start = i;
    }
    if (run_start < len || first_run) {
        sm_status st = tokenize_onto(m, text + run_start, len - run_start, add_special && first_run, parse_special, v, err);
        if (st != SM_OK) return st;
    }
    if (out->n_unknown > 0) {
        bool expected = false;
        if (atomic_compare_exchange_strong(&m->first_unknown_set, &expected, true))
            memcpy(m->first_unknown, out->first_unknown, sizeof m->first_unknown);
        atomic_fetch_add(&m->n_unknown_chars, out->n_unknown);
    }
    return SM_OK;
}

void sm_describe_char(const char *c, size_t n, char *buf, size_t size) {
    unsigned char b = (unsigned char)c[0];
    if (n == 1 && (b < 0x20 || b == 0x7f)) snprintf(buf, size, "U+%04X", b);
    else if (n == 1 && b >= 0x80) snprintf(buf, size, "byte 0x%02X", b);
    else snprintf(buf, size, "'%.*s'", (int)n, c);
}

sm_status sm_tokenize(const sm_model *model, const char *text, size_t len, bool add_special, bool parse_special,
                      sm_tokens *out, sm_error *err) {
    memset(out, 0, sizeof *out);
    if (!text) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "no text to tokenize");
        return SM_ERR_INVALID_ARGUMENT;
    }
    sm_model *m = (sm_model *)model; /* only its atomic counter changes */
    token_vec v = {0};
    sm_error first = {0};
    sm_status st = tokenize_onto(m, text, len, add_special, parse_special, &v, &first);
    if (st == SM_ERR_INVALID_ARGUMENT) { /* llama.cpp threw: look for what it could not represent */
        v.n = 0;
        st = tokenize_around_unknown(m, text, len, add_special, parse_special, &v, out, err);
        if (st == SM_OK && out->n_unknown == 0) { /* it threw for another reason */
            sm_error_set(err, first.status, "%s", first.message);
            st = first.status;
        }
    } else if (st != SM_OK) {
        sm_error_set(err, first.status, "%s", first.message);
    }
    if (st != SM_OK) {
        free(v.data);
        memset(out, 0, sizeof *out);
        return st;
    }
    out->data = v.data;
    out->n = v.n;
    return SM_OK;
}

/* Whether tokenizing puts a space in front of the text (SentencePiece's
 * dummy prefix): the first piece of "a" is then " a". */
static bool adds_space_prefix(const sm_model *model) {
    sm_tokens t;
    sm_error err;
    if (sm_tokenize(model, "a", 1, false, false, &t, &err) != SM_OK || t.n == 0) return false;
    char piece[16];
    int32_t n = sm_token_piece(model->vocab, t.data[0], piece, (int32_t)sizeof piece - 1);
    sm_tokens_free(&t);
    return n > 0 && piece[0] == ' ';
}

/* Drops from t the tokens that spell `prefix` exactly at its start;
 * false when no token boundary falls at its end. */
static bool drop_spelled_prefix(const sm_model *model, sm_tokens *t, const char *prefix) {
    size_t want = strlen(prefix), have = 0;
    int32_t k = 0;
    char piece[256];
    while (k < t->n && have < want) {
        int32_t n = sm_token_piece(model->vocab, t->data[k], piece, (int32_t)sizeof piece);
        if (n <= 0 || have + (size_t)n > want || memcmp(prefix + have, piece, (size_t)n) != 0) return false;
        have += (size_t)n;
        k++;
    }
    if (have != want) return false;
    memmove(t->data, t->data + k, sizeof *t->data * (size_t)(t->n - k));
    t->n -= k;
    return true;
}

/* Whether the pieces of t spell text[0..len) byte for byte. */
static bool pieces_spell(const sm_model *model, const sm_tokens *t, const char *text, size_t len) {
    size_t at = 0;
    char piece[256];
    for (int32_t i = 0; i < t->n; i++) {
        int32_t n = sm_token_piece(model->vocab, t->data[i], piece, (int32_t)sizeof piece);
        if (n < 0 || at + (size_t)n > len || memcmp(text + at, piece, (size_t)n) != 0) return false;
        at += (size_t)n;
    }
    return at == len;
}

sm_status sm_tokenize_continuation(const sm_model *model, const char *text, size_t len, sm_tokens *out, sm_error *err) {
    bool space_prefix = text && len > 0 && adds_space_prefix(model);
    if (space_prefix && text[0] == ' ') /* the tokenizer puts that space back */
        return sm_tokenize(model, text + 1, len - 1, false, false, out, err);
    if (space_prefix) {
        /* Text that goes on from other text takes no space in front: it is
         * tokenized after a newline, the newline's tokens are dropped, and
         * the rest is kept when its pieces spell the text exactly. */
        char *framed = malloc(len + 2);
        if (!framed) {
            sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory tokenizing");
            return SM_ERR_NO_MEMORY;
        }
        framed[0] = '\n';
        memcpy(framed + 1, text, len);
        sm_status st = sm_tokenize(model, framed, len + 1, false, false, out, err);
        free(framed);
        if (st != SM_OK) return st;
        if (drop_spelled_prefix(model, out, " \n") && pieces_spell(model, out, text, len)) return SM_OK;
        sm_tokens_free(out);
    }
    return sm_tokenize(model, text, len, false, false, out, err);
}

void sm_tokens_free(sm_tokens *t) {
    if (!t) return;
    free(t->data);
    memset(t, 0, sizeof *t);
}

int64_t sm_model_n_unknown_chars(const sm_model *model, char first[8]) {
    sm_model *m = (sm_model *)model;
    int64_t n = atomic_load(&m->n_unknown_chars);
    if (first) {
        if (n > 0) memcpy(first, m->first_unknown, 8);
        else first[0] = '\0';
    }
    return n;
}

static char *detokenize(const sm_model *m, const sm_token *tokens, int32_t n_tokens, bool special, size_t *len_out,
                        sm_error *err) {
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= m->n_vocab) {
            sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "token %d at index %d is outside the vocabulary (%d)",
                         tokens[i], i, m->n_vocab);
            return NULL;
        }
    int32_t cap = 64 + n_tokens * 8;
    for (int attempt = 0; attempt < 2; attempt++) {
        char *text = malloc((size_t)cap + 1);
        if (!text) break;
        int32_t n;
        if (!smx_detokenize(m->vocab, tokens, n_tokens, text, cap, false, special, &n, err)) {
            free(text);
            return NULL;
        }
        if (n >= 0) {
            text[n] = '\0';
            if (len_out) *len_out = (size_t)n;
            return text;
        }
        free(text);
        cap = -n;
    }
    sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory detokenizing %d tokens", n_tokens);
    return NULL;
}

char *sm_detokenize(const sm_model *m, const sm_token *tokens, int32_t n_tokens, size_t *len_out, sm_error *err) {
    return detokenize(m, tokens, n_tokens, false, len_out, err);
}

char *sm_detokenize_special(const sm_model *m, const sm_token *tokens, int32_t n_tokens, size_t *len_out,
                            sm_error *err) {
    return detokenize(m, tokens, n_tokens, true, len_out, err);
}

int32_t sm_token_to_piece(const sm_model *m, sm_token token, char *buf, int32_t size, bool special) {
    if (token < 0 || token >= m->n_vocab) return 0;
    return special ? sm_token_text(m->vocab, token, buf, size) : sm_token_piece(m->vocab, token, buf, size);
}

int32_t sm_token_text(const struct llama_vocab *vocab, sm_token token, char *buf, int32_t size) {
    int32_t n;
    if (!smx_token_to_piece(vocab, token, buf, size, true, &n, NULL)) return 0;
    return n < 0 ? 0 : n;
}

int32_t sm_token_piece(const struct llama_vocab *vocab, sm_token token, char *buf, int32_t size) {
    int32_t n;
    if (!smx_token_to_piece(vocab, token, buf, size, false, &n, NULL)) return 0;
    return n < 0 ? 0 : n;
}
