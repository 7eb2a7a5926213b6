/* Prompts built from a request's pieces (prompt.h). */
#include "server/prompt.h"

#include <stdlib.h>
#include <string.h>

/* A growing token list; a failed append leaves it flagged and is freed once. */
typedef struct token_list {
    sm_token *data;
    int32_t n, cap;
    bool failed;
} token_list;

static void list_add(token_list *l, const sm_token *t, int32_t n) {
    if (l->failed || n <= 0) return;
    if (l->n + n > l->cap) {
        int32_t cap = (l->n + n) * 2;
        sm_token *grown = realloc(l->data, sizeof *grown * (size_t)cap);
        if (!grown) {
            l->failed = true;
            return;
        }
        l->data = grown;
        l->cap = cap;
    }
    memcpy(l->data + l->n, t, sizeof *t * (size_t)n);
    l->n += n;
}

static void list_add_one(token_list *l, sm_token t) { list_add(l, &t, 1); }

static sm_status list_add_text(token_list *l, const sm_model *model, const char *text, bool add_special,
                               bool parse_special, sm_error *err) {
    sm_tokens piece = {0};
    sm_status st = sm_tokenize(model, text, strlen(text), add_special, parse_special, &piece, err);
    if (st != SM_OK) return st;
    list_add(l, piece.data, piece.n);
    sm_tokens_free(&piece);
    return SM_OK;
}

static sm_status list_finish(token_list *l, sm_status st, sm_tokens *out, sm_error *err) {
    if (st == SM_OK && l->failed) {
        st = SM_ERR_NO_MEMORY;
        *err = (sm_error){.status = st, .message = "out of memory"};
    }
    if (st != SM_OK) {
        free(l->data);
        *out = (sm_tokens){0};
        return st;
    }
    *out = (sm_tokens){.data = l->data, .n = l->n};
    return SM_OK;
}

static sm_status add_mixed(token_list *l, const sm_model *model, const cJSON *parts, bool add_special,
                           bool parse_special, sm_error *err) {
    if (cJSON_IsString(parts)) return list_add_text(l, model, parts->valuestring, add_special, parse_special, err);
    const cJSON *item;
    bool first = true;
    cJSON_ArrayForEach(item, parts) {
        if (cJSON_IsString(item)) {
            sm_status st = list_add_text(l, model, item->valuestring, add_special && first, parse_special, err);
            if (st != SM_OK) return st;
        } else {
            list_add_one(l, (sm_token)item->valuedouble);
        }
        first = false;
    }
    return SM_OK;
}

sm_status prompt_tokenize_mixed(const sm_model *model, const cJSON *parts, bool add_special, bool parse_special,
                                sm_tokens *out, sm_error *err) {
    token_list l = {0};
    return list_finish(&l, add_mixed(&l, model, parts, add_special, parse_special, err), out, err);
}

/* The other files, repository-level (FIM_REP, FIM_SEP) where the vocabulary can. */
static sm_status add_extra(token_list *l, const sm_model *model, const sm_special_tokens *sp, const cJSON *extra,
                           sm_error *err) {
    /* the separator written as bytes in llama-server, "so as not to confuse the model" */
    static const char SNIPPET[] = "\n\n--- snippet ---\n\n";
    sm_status st = SM_OK;
    if (sp->fim_repo >= 0) {
        list_add_one(l, sp->fim_repo);
        st = list_add_text(l, model, "myproject\n", false, false, err);
    }
    const cJSON *chunk;
    for (chunk = extra ? extra->child : NULL; chunk && st == SM_OK; chunk = chunk->next) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(chunk, "filename");
        const char *text = cJSON_GetObjectItemCaseSensitive(chunk, "text")->valuestring;
        if (sp->fim_sep >= 0) {
            const char *file = cJSON_IsString(name) ? name->valuestring : "tmp";
            size_t n = strlen(file);
            char *line = malloc(n + 2);
            if (!line) return *err = (sm_error){.status = SM_ERR_NO_MEMORY, .message = "out of memory"}, err->status;
            memcpy(line, file, n);
            memcpy(line + n, "\n", 2);
            list_add_one(l, sp->fim_sep);
            st = list_add_text(l, model, line, false, false, err);
            free(line);
        } else {
            st = list_add_text(l, model, SNIPPET, false, false, err);
        }
        if (st == SM_OK) st = list_add_text(l, model, text, false, false, err);
    }
    if (st == SM_OK && sp->fim_sep >= 0) { /* the file being written, unnamed */
        list_add_one(l, sp->fim_sep);
        st = list_add_text(l, model, "filename\n", false, false, err);
    }
    return st;
}

/* FIM_PRE, the prefix's last n tokens, the middle's beginning */
static void add_prefix(token_list *all, const sm_special_tokens *sp, const token_list *pre, int32_t n,
                       const token_list *mid) {
    list_add_one(all, sp->fim_prefix);
    if (n > 0) list_add(all, pre->data + pre->n - n, n);
    list_add(all, mid->data, mid->n);
}

/* FIM_SUF, the suffix's first n tokens */
static void add_suffix(token_list *all, const sm_special_tokens *sp, const token_list *suf, int32_t n) {
    list_add_one(all, sp->fim_suffix);
    list_add(all, suf->data, n);
}

static int32_t min_i32(int32_t a, int32_t b) { return a < b ? a : b; }
static int32_t max_i32(int32_t a, int32_t b) { return a > b ? a : b; }

sm_status prompt_infill(const sm_model *model, const cJSON *prefix, const cJSON *suffix, const cJSON *extra,
                        const char *prompt, const infill_limits *lim, sm_tokens *out, sm_error *err) {
    const sm_special_tokens sp = sm_model_special_tokens(model);
    token_list pre = {0}, suf = {0}, mid = {0}, files = {0}, all = {0};
    sm_status st = add_mixed(&pre, model, prefix, false, false, err);
    if (st == SM_OK) st = add_mixed(&suf, model, suffix, false, false, err);
    /* the middle's given beginning is raw model input, as a /completion prompt */
    if (st == SM_OK) st = list_add_text(&mid, model, prompt, false, true, err);
    if (st == SM_OK) st = add_extra(&files, model, &sp, extra, err);
    if (st == SM_OK) {
        /* the prefix:suffix ratio 3:1 within a batch, the other files in what the context has left */
        int32_t n_pre = min_i32(pre.n, 3 * (lim->n_batch / 4));
        int32_t n_suf = min_i32(suf.n, max_i32(0, lim->n_batch / 4 - (2 + mid.n)));
        int32_t n_files = min_i32(max_i32(0, lim->n_ctx - lim->n_batch - 2 * lim->n_predict), files.n);
        int32_t n_rest = (sp.bos >= 0) + 3 + n_pre + mid.n + n_suf; /* with FIM_PRE, FIM_SUF, FIM_MID */
        n_files = max_i32(0, min_i32(n_files, lim->n_ctx - n_rest - lim->n_answer));
        if (n_files > 0) list_add(&all, files.data + files.n - n_files, n_files);
        if (sp.bos >= 0) list_add_one(&all, sp.bos);
        if (lim->spm) { /* suffix-prefix-middle, for the models trained so */
            add_suffix(&all, &sp, &suf, n_suf);
            add_prefix(&all, &sp, &pre, n_pre, &mid);
        } else {
            add_prefix(&all, &sp, &pre, n_pre, &mid);
            add_suffix(&all, &sp, &suf, n_suf);
        }
        list_add_one(&all, sp.fim_middle);
        all.failed |= pre.failed || suf.failed || mid.failed || files.failed;
    }
    free(pre.data);
    free(suf.data);
    free(mid.data);
    free(files.data);
    return list_finish(&all, st, out, err);
}
