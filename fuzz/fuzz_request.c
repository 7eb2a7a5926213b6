/*
 * libFuzzer target: what a client's request body goes through before any
 * generation. The first byte picks the model (stories260K, or the
 * byte-less tinystories-656K whose tokenizer throws on unknown
 * characters) and the endpoint; the rest is the body: parsed as JSON,
 * validated field by field, its prompt or conversation tokenized and
 * measured against the context, or tokenized/detokenized, or embedded
 * (/v1/embeddings: parsed, then its inputs decoded), or /infill's
 * pieces built into a fill-in-the-middle prompt on a code vocabulary.
 *   SM_MODELS names the models folder; SM_FIM_MODEL a model with FIM
 *   tokens (scripts/fuzz.sh makes one; without it /infill answers 501).
 */
#include "server/api.h"
#include "server/generate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static server servers[3];

static void load(server *srv, const char *name) {
    const char *dir = getenv("SM_MODELS") ? getenv("SM_MODELS") : "../shared/models";
    char path[4096], err[512];
    if (name[0] == '/') snprintf(path, sizeof path, "%s", name);
    else snprintf(path, sizeof path, "%s/%s", dir, name);
    char *paths[1] = {path};
    const sm_model_params mp = sm_model_default_params();
    if (!model_set_load(&srv->models, paths, 1, NULL, NULL, &mp, err, sizeof err)) {
        fprintf(stderr, "fuzz_request: %s\n", err);
        exit(1);
    }
    srv->slots.chat_params = sm_chat_default_params();
    srv->slots.session_params = sm_session_default_params();
    srv->slots.session_params.n_ctx = 256;
    srv->opt.max_body = 1 << 20;
    srv->opt.base = sm_gen_default_params();
    srv->opt.base.sampling.repeat_penalty = 1.0f;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    sm_set_llama_logging(false);
    load(&servers[0], "stories260K.gguf");
    load(&servers[1], "tinystories-656K.gguf");
    const char *fim = getenv("SM_FIM_MODEL");
    load(&servers[2], fim && fim[0] == '/' ? fim : "stories260K.gguf");
    return 0;
}

static void drop(reply r) {
    if (r.response) MHD_destroy_response(r.response);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (size < 1) return 0;
    int kind = (data[0] >> 1) % 7;
    server *srv = &servers[kind == 6 ? 2 : data[0] & 1];
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    if (kind < 3 || kind == 6) {
        static const api_kind apis[7] = {API_COMPLETIONS, API_CHAT, API_LLAMA, [6] = API_INFILL};
        reply bad;
        cJSON *json = api_parse_body(body, len, &bad);
        if (!json) {
            drop(bad);
            return 0;
        }
        gen_request req;
        api_error err;
        request_defaults defaults = {.base = &srv->opt.base, .selfmod = kind >= 2};
        bool ok = gen_request_parse(json, apis[kind], &srv->models, &defaults, &req, &err);
        cJSON_Delete(json);
        if (ok) generation_validate(srv, &req, &err);
        else gen_request_free(&req);
        return 0;
    }
    drop(kind == 3 ? api_tokenize(srv, -1, body, len)
         : kind == 4 ? api_detokenize(srv, -1, body, len)
                     : api_embeddings(srv, -1, body, len)); /* parsed, then embedded: inputs of any shape */
    return 0;
}
