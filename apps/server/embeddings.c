/*
 * POST /v1/embeddings (and /embeddings): OpenAI's embeddings API over
 * sm_embed. input: a string, an array of strings, an array of token ids,
 * or an array of such arrays; encoding_format "float" (default) or
 * "base64" (little-endian float32, what the openai Python client asks for).
 */
#include "server/api.h"
#include "server/json_util.h"
#include "server/request.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUTS 256

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* The floats' bytes (little-endian on every machine this builds for) in base64. */
static char *base64_floats(const float *v, int32_t n) {
    const unsigned char *b = (const unsigned char *)v;
    size_t len = (size_t)n * sizeof *v, out_len = 4 * ((len + 2) / 3);
    char *out = malloc(out_len + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < len; i += 3) {
        unsigned x = (unsigned)b[i] << 16 | (i + 1 < len ? (unsigned)b[i + 1] << 8 : 0) | (i + 2 < len ? b[i + 2] : 0);
        *o++ = B64[x >> 18 & 63];
        *o++ = B64[x >> 12 & 63];
        *o++ = i + 1 < len ? B64[x >> 6 & 63] : '=';
        *o++ = i + 2 < len ? B64[x & 63] : '=';
    }
    *o = '\0';
    return out;
}

typedef struct inputs {
    const char *texts[MAX_INPUTS];  /* NULL where the input is token ids */
    sm_token *ids[MAX_INPUTS];
    int32_t n_ids[MAX_INPUTS];
    int32_t n;
} inputs;

static void inputs_free(inputs *in) {
    for (int32_t i = 0; i < in->n; i++) free(in->ids[i]);
}

static bool token_array(const cJSON *a, inputs *in, api_error *err) {
    int32_t n = cJSON_GetArraySize(a), k = 0;
    sm_token *ids = n > 0 ? malloc(sizeof *ids * (size_t)n) : NULL;
    if (n > 0 && !ids) return api_fail(err, 500, NULL, "out of memory");
    const cJSON *t;
    cJSON_ArrayForEach(t, a) {
        if (!json_is_int32(t)) {
            free(ids);
            return api_fail(err, 400, "input", "token ids must be integers");
        }
        ids[k++] = (sm_token)t->valuedouble;
    }
    in->texts[in->n] = NULL;
    in->ids[in->n] = ids;
    in->n_ids[in->n++] = n;
    return true;
}

static bool parse_input(const cJSON *input, inputs *in, api_error *err) {
    if (cJSON_IsString(input)) {
        in->texts[in->n++] = input->valuestring;
        return true;
    }
    if (!cJSON_IsArray(input) || cJSON_GetArraySize(input) == 0)
        return api_fail(err, 400, "input", "'input' must be a string, an array of strings, or token ids");
    if (cJSON_IsNumber(input->child)) return token_array(input, in, err);
    const cJSON *item;
    cJSON_ArrayForEach(item, input) {
        if (in->n == MAX_INPUTS) return api_fail(err, 400, "input", "at most %d inputs in one request", MAX_INPUTS);
        if (cJSON_IsString(item)) in->texts[in->n++] = item->valuestring;
        else if (cJSON_IsArray(item) && cJSON_GetArraySize(item) > 0 && cJSON_IsNumber(item->child)) {
            if (!token_array(item, in, err)) return false;
        } else return api_fail(err, 400, "input", "each input must be a string or an array of token ids");
    }
    return true;
}

/* sm_embed_tokens' arguments. */
typedef struct embed_job {
    const sm_model *model;
    const sm_token *const *inputs;
    const int32_t *lens;
    int32_t n;
    int32_t n_threads;
    float *out;
    sm_error *err;
    sm_status status;
} embed_job;

static void *embed_thread(void *arg) {
    embed_job *j = arg;
    j->status = sm_embed_tokens(j->model, j->inputs, j->lens, j->n, j->n_threads, j->out, j->err);
    return NULL;
}

/* Embeds on a thread that ends with it. llama.cpp's OpenMP workers belong
 * to the thread that decodes and live as long as it, and a connection's
 * thread lives as long as its client keeps it open (clients pool them):
 * a second team beside the batch's decoder makes OpenMP's barriers sleep
 * instead of spin (8 streams measured 199-210 -> 146 tokens/s for as long
 * as a connection that had asked for embeddings stayed open). */
static sm_status embed_apart(embed_job *j) {
    pthread_t t;
    if (pthread_create(&t, NULL, embed_thread, j) != 0) return embed_thread(j), j->status;
    pthread_join(t, NULL);
    return j->status;
}

reply api_embeddings(server *srv, int client_fd, const char *body, size_t len) {
    (void)client_fd;
    reply bad;
    cJSON *json = api_parse_body(body, len, &bad);
    if (!json) return bad;
    api_error err = {0};
    static const char *const known[] = {"input", "model", "encoding_format", "dimensions", "user"};
    inputs in = {0};
    const served_model *m = NULL;
    const cJSON *format = json_field(json, "encoding_format"), *dims = json_field(json, "dimensions");
    bool ok = check_known_fields(json, known, sizeof known / sizeof *known, &err) &&
              (m = api_vocab_for(srv, json, &bad)) != NULL;
    if (!ok && !m && err.status == 0) {
        cJSON_Delete(json);
        return bad;
    }
    bool b64 = false;
    if (ok && format && !cJSON_IsNull(format)) {
        if (cJSON_IsString(format) && strcmp(format->valuestring, "base64") == 0) b64 = true;
        else if (!cJSON_IsString(format) || strcmp(format->valuestring, "float") != 0)
            ok = api_fail(&err, 400, "encoding_format", "'encoding_format' must be \"float\" or \"base64\"");
    }
    const int32_t n_embd = m ? sm_model_n_embd(m->model) : 0;
    if (ok && dims && !cJSON_IsNull(dims) && (!cJSON_IsNumber(dims) || dims->valuedouble != n_embd))
        ok = api_fail(&err, 400, "dimensions", "this model's embeddings have %d dimensions; 'dimensions' cannot change that",
                      n_embd);
    ok = ok && parse_input(json_field(json, "input"), &in, &err);
    /* texts are tokenized here (with BOS, as sm_embed does) so that token ids and text mix */
    sm_tokens toks[MAX_INPUTS] = {{0}};
    const sm_token *ptrs[MAX_INPUTS];
    int32_t lens[MAX_INPUTS], total = 0;
    for (int32_t i = 0; ok && i < in.n; i++) {
        if (in.texts[i]) {
            sm_error e = {0};
            if (sm_tokenize(m->model, in.texts[i], strlen(in.texts[i]), true, false, &toks[i], &e) != SM_OK)
                ok = api_fail(&err, 400, "input", "input %d: %s", i, e.message);
            ptrs[i] = toks[i].data;
            lens[i] = toks[i].n;
        } else {
            ptrs[i] = in.ids[i];
            lens[i] = in.n_ids[i];
        }
        total += lens[i];
    }
    float *vectors = ok ? malloc(sizeof *vectors * (size_t)in.n * (size_t)(n_embd > 0 ? n_embd : 1)) : NULL;
    if (ok && !vectors) ok = api_fail(&err, 500, NULL, "out of memory");
    if (ok) {
        sm_error e = {0};
        sm_status st = embed_apart(&(embed_job){m->model, ptrs, lens, in.n, srv->slots.session_params.n_threads,
                                                vectors, &e, SM_OK});
        if (st != SM_OK)
            ok = api_fail(&err, st == SM_ERR_INVALID_ARGUMENT || st == SM_ERR_PROMPT_TOO_LONG ? 400 : 500, "input", "%s",
                          e.message);
    }
    cJSON *o = NULL;
    if (ok) {
        o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "object", "list");
        cJSON *data = cJSON_AddArrayToObject(o, "data");
        for (int32_t i = 0; i < in.n; i++) {
            cJSON *d = cJSON_CreateObject();
            cJSON_AddStringToObject(d, "object", "embedding");
            cJSON_AddNumberToObject(d, "index", i);
            const float *v = vectors + (size_t)i * (size_t)n_embd;
            if (b64) {
                char *s = base64_floats(v, n_embd);
                cJSON_AddStringToObject(d, "embedding", s ? s : "");
                free(s);
            } else {
                cJSON *list = cJSON_AddArrayToObject(d, "embedding");
                for (int32_t j = 0; j < n_embd; j++) cJSON_AddItemToArray(list, cJSON_CreateNumber(v[j]));
            }
            cJSON_AddItemToArray(data, d);
        }
        cJSON_AddStringToObject(o, "model", m->id);
        cJSON *usage = cJSON_AddObjectToObject(o, "usage");
        cJSON_AddNumberToObject(usage, "prompt_tokens", total);
        cJSON_AddNumberToObject(usage, "total_tokens", total);
        pthread_mutex_lock(&srv->metrics_mutex);
        srv->metrics.prompt_tokens += total;
        srv->metrics.embedding_decodes += in.n;
        pthread_mutex_unlock(&srv->metrics_mutex);
    }
    for (int32_t i = 0; i < in.n; i++) sm_tokens_free(&toks[i]);
    free(vectors);
    inputs_free(&in);
    cJSON_Delete(json);
    return ok ? reply_json(200, o) : reply_error(&err);
}
