/* /health, /v1/models, /props, the three completion endpoints, /tokenize
 * and /detokenize. */
#include "server/api.h"
#include "server/generate.h"
#include "server/json_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

cJSON *api_parse_body(const char *body, size_t len, reply *error_reply) {
    const char *end = NULL;
    cJSON *json = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!json) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        char msg[160];
        snprintf(msg, sizeof msg, "malformed JSON in the request body (near byte %zu)", at);
        *error_reply = reply_error_simple(400, NULL, msg);
        return NULL;
    }
    if (!cJSON_IsObject(json)) {
        cJSON_Delete(json);
        *error_reply = reply_error_simple(400, NULL, "the request body must be a JSON object");
        return NULL;
    }
    return json;
}

reply api_health(server *srv) {
    int busy, waiting;
    slot_pool_counts(&srv->slots, &busy, &waiting);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    cJSON_AddNumberToObject(o, "slots_idle", srv->slots.n_slots - busy);
    cJSON_AddNumberToObject(o, "slots_processing", busy);
    cJSON_AddNumberToObject(o, "requests_waiting", waiting);
    cJSON_AddNumberToObject(o, "requests_total", (double)atomic_load(&srv->n_requests));
    cJSON_AddNumberToObject(o, "generations_cancelled", (double)atomic_load(&srv->n_cancelled));
    /* continuous batching: how many sessions' decodes each llama_decode took */
    sm_batch_stats total = {0};
    for (int t = 0; t < 1 + SM_MAX_MODELS; t++) {
        if (!srv->slots.batches[t]) continue;
        sm_batch_stats st = sm_batch_get_stats(srv->slots.batches[t]);
        total.n_decodes += st.n_decodes;
        total.n_requests += st.n_requests;
        total.n_tokens += st.n_tokens;
        total.ms_decoding += st.ms_decoding;
        total.n_other_decodes += st.n_other_decodes;
    }
    cJSON_AddNumberToObject(o, "batch_decodes", (double)total.n_decodes);
    cJSON_AddNumberToObject(o, "batch_requests", (double)total.n_requests);
    cJSON_AddNumberToObject(o, "batch_tokens", (double)total.n_tokens);
    cJSON_AddNumberToObject(o, "batch_ms_decoding", total.ms_decoding);
    /* the LLooM's trees decode on the batch's thread, taking turns with it */
    cJSON_AddNumberToObject(o, "batch_tree_decodes", (double)total.n_other_decodes);
    return reply_json(200, o);
}

static cJSON *model_entry(server *srv, int target) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", model_set_target_id(&srv->models, target));
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)srv->models.created);
    cJSON_AddStringToObject(m, "owned_by", "llama_selfmod");
    if (target == 0) { /* llama-server's: every name it answers to, and its labels */
        cJSON *aliases = cJSON_AddArrayToObject(m, "aliases"), *tags = cJSON_AddArrayToObject(m, "tags");
        for (int i = 0; i < srv->models.n_aliases; i++) cJSON_AddItemToArray(aliases, cJSON_CreateString(srv->models.aliases[i]));
        for (int i = 0; i < srv->models.n_tags; i++) cJSON_AddItemToArray(tags, cJSON_CreateString(srv->models.tags[i]));
    }
    cJSON *meta = cJSON_AddObjectToObject(m, "meta");
    sm_model *models[SM_MAX_MODELS];
    int n = model_set_target_models(&srv->models, target, models);
    cJSON *parts = cJSON_AddArrayToObject(meta, "models");
    for (int i = 0; i < n; i++) {
        cJSON *p = cJSON_CreateObject();
        cJSON_AddStringToObject(p, "path", sm_model_path(models[i]));
        cJSON_AddStringToObject(p, "description", sm_model_description(models[i]));
        cJSON_AddNumberToObject(p, "n_vocab", sm_model_n_vocab(models[i]));
        cJSON_AddNumberToObject(p, "n_ctx_train", sm_model_n_ctx_train(models[i]));
        cJSON_AddItemToArray(parts, p);
    }
    cJSON_AddBoolToObject(meta, "fused", n > 1);
    cJSON_AddNumberToObject(meta, "n_ctx", srv->slots.session_params.n_ctx);
    return m;
}

reply api_models(server *srv) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(o, "data");
    for (int t = 0; t < model_set_n_targets(&srv->models); t++) cJSON_AddItemToArray(data, model_entry(srv, t));
    return reply_json(200, o);
}

/* GET /v1/models/{id}: one model, as OpenAI answers it (404 in its shape). */
reply api_model_named(server *srv, const char *name) {
    for (int t = 0; t < model_set_n_targets(&srv->models); t++)
        if (strcmp(model_set_target_id(&srv->models, t), name) == 0) return reply_json(200, model_entry(srv, t));
    api_error err;
    api_fail(&err, 404, "model", "The model '%.200s' does not exist", name);
    err.code = "model_not_found";
    return reply_error(&err);
}

/* What the web page needs to build its forms. */
reply api_props(server *srv) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "version", SM_VERSION);
    cJSON_AddStringToObject(o, "default_model", srv->models.default_id);
    cJSON *models = cJSON_AddArrayToObject(o, "models");
    for (int t = 0; t < model_set_n_targets(&srv->models); t++)
        cJSON_AddItemToArray(models, cJSON_CreateString(model_set_target_id(&srv->models, t)));
    cJSON_AddNumberToObject(o, "n_models", srv->models.n_models);
    cJSON_AddNumberToObject(o, "n_ctx", srv->slots.session_params.n_ctx);
    cJSON_AddNumberToObject(o, "total_slots", srv->slots.n_slots);
    cJSON_AddNumberToObject(o, "loom_max_beams", srv->slots.tree_max_beams);
    cJSON *modes = cJSON_AddArrayToObject(o, "fusion_modes");
    for (int m = SM_FUSION_CONFIDENCE; m <= SM_FUSION_CONTRASTIVE; m++)
        cJSON_AddItemToArray(modes, cJSON_CreateString(sm_fusion_mode_name((sm_fusion_mode)m)));
    cJSON *ops = cJSON_AddArrayToObject(o, "operators");
    for (const char *const *name = sm_operator_names(); name && *name; name++)
        cJSON_AddItemToArray(ops, cJSON_CreateString(*name));
    cJSON_AddStringToObject(o, "operator_help", sm_operator_help());
    sm_gen_params g = sm_gen_default_params();
    cJSON *defaults = cJSON_AddObjectToObject(o, "defaults");
    json_add_float(defaults, "temperature", g.sampling.temperature);
    json_add_float(defaults, "top_p", g.sampling.top_p);
    cJSON_AddNumberToObject(defaults, "top_k", g.sampling.top_k);
    json_add_float(defaults, "min_p", g.sampling.min_p);
    json_add_float(defaults, "repeat_penalty", g.sampling.repeat_penalty);
    json_add_float(defaults, "confidence_threshold", g.policy.confidence_threshold);
    json_add_float(defaults, "critical_threshold", g.policy.critical_threshold);
    cJSON_AddNumberToObject(defaults, "max_retractions", g.policy.max_retractions);
    /* llama-server's fields */
    sm_model *members[SM_MAX_MODELS];
    model_set_target_models(&srv->models, 0, members);
    cJSON_AddStringToObject(o, "model_path", sm_model_path(members[0]));
    cJSON_AddStringToObject(o, "chat_template", srv->chat_template ? srv->chat_template : "");
    cJSON *dgs = cJSON_AddObjectToObject(o, "default_generation_settings");
    cJSON_AddNumberToObject(dgs, "n_ctx", srv->slots.session_params.n_ctx);
    cJSON *params = cJSON_AddObjectToObject(dgs, "params");
    const sm_gen_params *base = &srv->opt.base;
    if (base->sampling.seed != SEED_UNSET) cJSON_AddNumberToObject(params, "seed", (double)base->sampling.seed);
    else cJSON_AddNumberToObject(params, "seed", -1);
    json_add_float(params, "temperature", base->sampling.temperature);
    cJSON_AddNumberToObject(params, "top_k", base->sampling.top_k);
    json_add_float(params, "top_p", base->sampling.top_p);
    json_add_float(params, "min_p", base->sampling.min_p);
    cJSON_AddNumberToObject(params, "n_predict", base->n_predict == N_PREDICT_UNSET ? -1 : base->n_predict);
    return reply_json(200, o);
}

/* GET /slots (with --slots, as llama-server; 501 otherwise): each slot's
 * context size and whether it is generating. */
reply api_slots(server *srv) {
    if (!srv->opt.slots) {
        api_error err;
        api_fail(&err, 501, NULL, "/slots is off: start the server with --slots");
        err.type = "not_supported_error";
        return reply_error(&err);
    }
    cJSON *list = cJSON_CreateArray();
    slot_pool *pool = &srv->slots;
    pthread_mutex_lock(&pool->mutex);
    for (int i = 0; i < pool->n_slots; i++) {
        cJSON *s = cJSON_CreateObject();
        cJSON_AddNumberToObject(s, "id", pool->slots[i].index);
        cJSON_AddNumberToObject(s, "n_ctx", pool->session_params.n_ctx);
        cJSON_AddBoolToObject(s, "is_processing", pool->slots[i].busy);
        cJSON_AddItemToArray(list, s);
    }
    pthread_mutex_unlock(&pool->mutex);
    return reply_json(200, list);
}

/* A slot file's name: a plain file name in --slot-save-path, never a
 * path (no separators, no leading dot, no control characters). */
static bool plain_file_name(const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > 255 || name[0] == '.') return false;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == '/' || *p == '\\' || *p == ':') return false;
    return true;
}

static double wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

reply api_slot_action(server *srv, const char *name, const char *action, const char *body, size_t len) {
    api_error err = {0};
    slot_pool *pool = &srv->slots;
    char *end = NULL;
    long id = strtol(name, &end, 10);
    char msg[600];
    if (!*name || *end || id < 0 || id >= pool->n_slots) {
        snprintf(msg, sizeof msg, "no slot '%.100s': this server has slots 0 to %d", name, pool->n_slots - 1);
        return reply_error_simple(400, "id_slot", msg);
    }
    if (!action || (strcmp(action, "save") != 0 && strcmp(action, "restore") != 0 && strcmp(action, "erase") != 0))
        return reply_error_simple(400, "action", "'action' must be save, restore or erase");
    bool erase = strcmp(action, "erase") == 0, save = strcmp(action, "save") == 0;
    if (!erase && !srv->opt.slot_save_path) {
        api_fail(&err, 501, NULL, "saving and restoring slots needs a folder: start the server with --slot-save-path DIR");
        err.type = "not_supported_error";
        return reply_error(&err);
    }
    char path[4096] = "", filename[256] = "";
    if (!erase) {
        reply bad;
        cJSON *json = len ? api_parse_body(body, len, &bad) : cJSON_CreateObject();
        if (!json) return bad;
        const cJSON *f = json_field(json, "filename");
        bool ok = cJSON_IsString(f) && plain_file_name(f->valuestring);
        if (ok) snprintf(filename, sizeof filename, "%s", f->valuestring);
        cJSON_Delete(json);
        if (!ok) return reply_error_simple(400, "filename", "'filename' must be a plain file name (no path)");
        snprintf(path, sizeof path, "%s/%s", srv->opt.slot_save_path, filename);
        if (!save && access(path, R_OK) != 0) {
            snprintf(msg, sizeof msg, "no slot file '%s' to restore (save one first)", filename);
            return reply_error_simple(404, "filename", msg);
        }
    }
    slot *s = slot_acquire_index(pool, 0, (int)id);
    char why[512] = "";
    sm_session *session = slot_session(pool, s, 0, why, sizeof why);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id_slot", (double)id);
    double t0 = wall_ms();
    sm_status st = session ? SM_OK : SM_ERR_CONTEXT;
    int32_t n = 0;
    size_t bytes = 0;
    if (st == SM_OK && erase) {
        n = sm_session_n_past(session);
        st = sm_session_clear(session);
        cJSON_AddNumberToObject(o, "n_erased", n);
    } else if (st == SM_OK) {
        /* llama-server saves the tokens whose cells are there: an answer's
         * last token, sampled but never decoded, is left to the next
         * prompt (which sends it again), and n_saved counts as it does */
        int32_t n_cells = sm_session_n_decoded(session);
        if (save && n_cells < sm_session_n_past(session)) st = sm_session_truncate(session, n_cells);
        if (st == SM_OK)
            st = save ? sm_session_save_state(session, path, &n, &bytes)
                      : sm_session_load_state(session, path, &n, &bytes);
        if (st != SM_OK) /* the file by its name: the server's folder is its own business */
            snprintf(why, sizeof why, "slot file '%s': %s", filename,
                     save ? "cannot be written" : "not a slot file of this model and context");
        cJSON_AddStringToObject(o, "filename", filename);
        cJSON_AddNumberToObject(o, save ? "n_saved" : "n_restored", n);
        cJSON_AddNumberToObject(o, save ? "n_written" : "n_read", (double)bytes);
        cJSON *timings = cJSON_AddObjectToObject(o, "timings");
        cJSON_AddNumberToObject(timings, save ? "save_ms" : "restore_ms", wall_ms() - t0);
    }
    /* What the slot's chat remembers no longer matches the context. */
    slot_set_chat_messages(s, 0, NULL, 0);
    slot_release(pool, s);
    if (st != SM_OK) {
        cJSON_Delete(o);
        return reply_error_simple(st == SM_ERR_NO_MEMORY ? 500 : 400, save || erase ? NULL : "filename", why);
    }
    return reply_json(200, o);
}

/* ------------------------------------------------------------------ */

/* Choice i (of n > 1, or of several prompts) joins the first answer's
 * choices and its tokens join the usage (a new prompt's prompt tokens too). */
static void merge_choice(cJSON *into, cJSON *from, int i, bool new_prompt) {
    cJSON *choice = cJSON_DetachItemFromArray(cJSON_GetObjectItemCaseSensitive(from, "choices"), 0);
    if (choice) {
        cJSON_ReplaceItemInObjectCaseSensitive(choice, "index", cJSON_CreateNumber(i));
        cJSON_AddItemToArray(cJSON_GetObjectItemCaseSensitive(into, "choices"), choice);
    }
    cJSON *u_into = cJSON_GetObjectItemCaseSensitive(into, "usage"), *u_from = cJSON_GetObjectItemCaseSensitive(from, "usage");
    cJSON *a = cJSON_GetObjectItemCaseSensitive(u_into, "completion_tokens");
    cJSON *b = cJSON_GetObjectItemCaseSensitive(u_from, "completion_tokens");
    cJSON *prompt = cJSON_GetObjectItemCaseSensitive(u_into, "prompt_tokens");
    cJSON *total = cJSON_GetObjectItemCaseSensitive(u_into, "total_tokens");
    if (cJSON_IsNumber(a) && cJSON_IsNumber(b)) cJSON_SetNumberValue(a, a->valuedouble + b->valuedouble);
    cJSON *prompt_from = cJSON_GetObjectItemCaseSensitive(u_from, "prompt_tokens");
    if (new_prompt && cJSON_IsNumber(prompt) && cJSON_IsNumber(prompt_from))
        cJSON_SetNumberValue(prompt, prompt->valuedouble + prompt_from->valuedouble);
    if (cJSON_IsNumber(total) && cJSON_IsNumber(prompt) && cJSON_IsNumber(a))
        cJSON_SetNumberValue(total, prompt->valuedouble + a->valuedouble);
}

/* What serve's flags make every request start from. */
static request_defaults defaults_of(const server *srv) {
    return (request_defaults){.base = &srv->opt.base, .selfmod = srv->opt.selfmod_default,
                              .presets = srv->opt.presets, .n_presets = srv->opt.n_presets,
                              .template_kwargs = srv->opt.chat_template_kwargs};
}

/* Answer k of a request that may ask for several (prompt k / n of
 * llama-server's prompt arrays, answer k % n of OpenAI's n), parsed as that
 * answer's request alone: with a seed, answer i of a prompt uses seed + i,
 * so they differ and each can be reproduced. Takes *req either way. */
static bool parse_answer(server *srv, const cJSON *json, api_kind api, int k, int n, gen_request *req,
                         api_error *err) {
    const cJSON *prompts = json_field(json, "prompt");
    cJSON *one = NULL;
    if (api != API_CHAT && api != API_INFILL && prompt_is_several(prompts)) {
        one = cJSON_Duplicate(json, true);
        if (!one) {
            memset(req, 0, sizeof *req);
            return api_fail(err, 500, NULL, "out of memory");
        }
        cJSON_ReplaceItemInObjectCaseSensitive(one, "prompt", cJSON_Duplicate(cJSON_GetArrayItem(prompts, k / n), true));
    }
    const request_defaults defaults = defaults_of(srv);
    bool ok = gen_request_parse(one ? one : json, api, &srv->models, &defaults, req, err);
    cJSON_Delete(one);
    if (!ok) {
        gen_request_free(req);
        return false;
    }
    if (req->seed_given) req->params.sampling.seed += (uint64_t)(k % n);
    return true;
}

/* Several answers (several prompts, OpenAI's n > 1), one after another (a
 * slot keeps each prompt cached for the next answer to it): /completion
 * answers with a list, the OpenAI endpoints with choices indexed prompt by
 * prompt. */
static reply generate_several(server *srv, int client_fd, const cJSON *json, api_kind api, int n, int total) {
    cJSON *merged = NULL, *list = api == API_LLAMA ? cJSON_CreateArray() : NULL;
    api_error err;
    for (int k = 0; k < total; k++) {
        gen_request req;
        cJSON *response = NULL;
        if (!parse_answer(srv, json, api, k, n, &req, &err) || !generation_run(srv, &req, client_fd, &response, &err)) {
            cJSON_Delete(merged);
            cJSON_Delete(list);
            return reply_error(&err);
        }
        if (list) {
            cJSON_ReplaceItemInObjectCaseSensitive(response, "index", cJSON_CreateNumber(k / n));
            cJSON_AddItemToArray(list, response);
        } else if (!merged) {
            merged = response;
        } else {
            merge_choice(merged, response, k, k % n == 0);
            cJSON_Delete(response);
        }
    }
    return reply_json(200, list ? list : merged);
}

/* The same streamed: every answer's request checked first, then streamed
 * in turn on one channel. */
static reply stream_several(server *srv, const cJSON *json, api_kind api, int n, int total) {
    gen_request *reqs = calloc((size_t)total, sizeof *reqs);
    api_error err;
    if (!reqs) return reply_error_simple(500, NULL, "out of memory");
    for (int k = 0; k < total; k++) {
        if (!parse_answer(srv, json, api, k, n, &reqs[k], &err)) {
            for (int i = 0; i < k; i++) gen_request_free(&reqs[i]);
            free(reqs);
            return reply_error(&err);
        }
    }
    channel *ch = NULL;
    bool ok = generation_start_stream_many(srv, reqs, total, n, &ch, &err);
    free(reqs);
    return ok ? reply_stream(ch) : reply_error(&err);
}

enum { MAX_ANSWERS = 64 }; /* prompts times n in one request */

static reply generate(server *srv, int client_fd, const char *body, size_t len, api_kind api) {
    reply bad;
    cJSON *json = api_parse_body(body, len, &bad);
    if (!json) return bad;
    gen_request req;
    api_error err;
    /* the first answer's request stands for the rest in the checks */
    bool ok = parse_answer(srv, json, api, 0, 1, &req, &err);
    const cJSON *prompts = json_field(json, "prompt");
    int n_prompts = api != API_CHAT && api != API_INFILL && prompt_is_several(prompts) ? cJSON_GetArraySize(prompts) : 1;
    if (ok && n_prompts * req.n_choices > MAX_ANSWERS) {
        gen_request_free(&req);
        ok = api_fail(&err, 400, n_prompts > 1 ? "prompt" : "n", "at most %d answers in one request (prompts times n)",
                      MAX_ANSWERS);
    } else if (ok && n_prompts * req.n_choices > 1) {
        int n = req.n_choices;
        bool stream = req.stream;
        gen_request_free(&req);
        reply r = stream ? stream_several(srv, json, api, n, n_prompts * n)
                         : generate_several(srv, client_fd, json, api, n, n_prompts * n);
        cJSON_Delete(json);
        return r;
    }
    cJSON_Delete(json);
    if (!ok) return reply_error(&err);
    if (req.stream) {
        channel *ch = NULL;
        if (!generation_start_stream(srv, &req, &ch, &err)) return reply_error(&err);
        return reply_stream(ch);
    }
    cJSON *response = NULL;
    if (!generation_run(srv, &req, client_fd, &response, &err)) return reply_error(&err);
    return reply_json(200, response);
}

/* A chat request for the two endpoints that only look at its prompt:
 * parsed as /v1/chat/completions parses it; members[0] gets the model. */
static bool parse_chat_only(server *srv, const char *body, size_t len, gen_request *req, sm_model **model,
                            reply *bad) {
    cJSON *json = api_parse_body(body, len, bad);
    if (!json) return false;
    api_error err;
    const request_defaults defaults = defaults_of(srv);
    bool ok = gen_request_parse(json, API_CHAT, &srv->models, &defaults, req, &err);
    cJSON_Delete(json);
    if (!ok) {
        gen_request_free(req);
        *bad = reply_error(&err);
        return false;
    }
    sm_model *members[SM_MAX_MODELS];
    model_set_target_models(&srv->models, req->target, members);
    *model = members[0];
    return true;
}

/* A conversation with tools as llama.cpp's tool format renders it (the
 * text a generation decodes, its markup special tokens). */
static sm_status render_tool_prompt(server *srv, const gen_request *req, sm_model *model, char **text, sm_error *why) {
    sm_chat_params cp = slot_pool_chat_params(&srv->slots, req->template_kwargs);
    sm_tool_prompt *tp = sm_tool_prompt_new(model, &cp, req->messages_json, req->tools_json, req->tool_choice,
                                            req->parallel_tool_calls, why);
    *text = tp ? strdup(sm_tool_prompt_text(tp)) : NULL;
    sm_status st = tp ? (*text ? SM_OK : SM_ERR_NO_MEMORY) : why->status;
    sm_tool_prompt_free(tp);
    return st;
}

/* POST /apply-template (llama-server's): the prompt a chat request's
 * messages render to, the assistant's turn opened (and a final assistant
 * message continued), without generating. */
reply api_apply_template(server *srv, int client_fd, const char *body, size_t len) {
    (void)client_fd;
    reply bad;
    gen_request req;
    sm_model *model;
    if (!parse_chat_only(srv, body, len, &req, &model, &bad)) return bad;
    char *text = NULL;
    sm_error why = {0};
    sm_status st;
    if (req.tool_mode) { /* a conversation with tools: llama.cpp's tool format */
        st = render_tool_prompt(srv, &req, model, &text, &why);
    } else {
        sm_chat_params cp = slot_pool_chat_params(&srv->slots, req.template_kwargs);
        st = sm_chat_render(model, &cp, req.messages, req.n_messages, &text, &why);
    }
    if (st != SM_OK) {
        gen_request_free(&req);
        return reply_error_simple(st == SM_ERR_NO_MEMORY ? 500 : 400, "messages", why.message);
    }
    cJSON *o = cJSON_CreateObject();
    size_t n = strlen(text), extra = req.prefill ? strlen(req.prefill) : 0;
    char *prompt = malloc(n + extra + 1);
    bool made = prompt != NULL;
    if (made) {
        memcpy(prompt, text, n);
        if (extra) memcpy(prompt + n, req.prefill, extra);
        prompt[n + extra] = '\0';
        cJSON_AddStringToObject(o, "prompt", prompt);
    }
    free(prompt);
    free(text);
    gen_request_free(&req);
    if (!made) {
        cJSON_Delete(o);
        return reply_error_simple(500, NULL, "out of memory");
    }
    return reply_json(200, o);
}

/* POST /chat/completions/input_tokens (llama-server's): how many tokens
 * the request's prompt takes, without generating. */
reply api_input_tokens(server *srv, int client_fd, const char *body, size_t len) {
    (void)client_fd;
    reply bad;
    gen_request req;
    sm_model *model;
    if (!parse_chat_only(srv, body, len, &req, &model, &bad)) return bad;
    int32_t n_tokens = 0;
    sm_error why = {0};
    sm_status st;
    if (req.tool_mode) { /* tokenized as a generation tokenizes it (generate.c) */
        char *text = NULL;
        sm_tokens toks = {0};
        st = render_tool_prompt(srv, &req, model, &text, &why);
        if (st == SM_OK) st = sm_tokenize(model, text, strlen(text), true, true, &toks, &why);
        n_tokens = toks.n;
        sm_tokens_free(&toks);
        free(text);
    } else {
        sm_chat_params cp = slot_pool_chat_params(&srv->slots, req.template_kwargs);
        st = sm_chat_prompt_tokens(model, &cp, req.messages, req.n_messages, &n_tokens, &why);
    }
    sm_tokens prefill = {0};
    if (st == SM_OK && req.prefill)
        st = sm_tokenize_continuation(model, req.prefill, strlen(req.prefill), &prefill, &why);
    gen_request_free(&req);
    if (st != SM_OK) return reply_error_simple(st == SM_ERR_NO_MEMORY ? 500 : 400, "messages", why.message);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "input_tokens", n_tokens + prefill.n);
    sm_tokens_free(&prefill);
    return reply_json(200, o);
}

reply api_completions(server *srv, int client_fd, const char *body, size_t len) { return generate(srv, client_fd, body, len, API_COMPLETIONS); }
reply api_chat_completions(server *srv, int client_fd, const char *body, size_t len) { return generate(srv, client_fd, body, len, API_CHAT); }
reply api_llama_completion(server *srv, int client_fd, const char *body, size_t len) { return generate(srv, client_fd, body, len, API_LLAMA); }
reply api_infill(server *srv, int client_fd, const char *body, size_t len) { return generate(srv, client_fd, body, len, API_INFILL); }

/* ------------------------------------------------------------------ */

const served_model *api_vocab_for(server *srv, const cJSON *body, reply *bad) {
    const cJSON *model = json_field(body, "model");
    if (model && !cJSON_IsString(model)) {
        *bad = reply_error_simple(400, "model", "'model' must be a string");
        return NULL;
    }
    int target = model_set_resolve(&srv->models, model ? model->valuestring : NULL);
    if (target < 0) {
        api_error err = {0};
        api_fail(&err, 404, "model", "The model '%s' does not exist", model->valuestring);
        err.code = "model_not_found";
        *bad = reply_error(&err);
        return NULL;
    }
    return model_set_target_vocab(&srv->models, target);
}

reply api_tokenize(server *srv, int client_fd, const char *body, size_t len) {
    reply bad;
    cJSON *json = api_parse_body(body, len, &bad);
    if (!json) return bad;
    api_error err = {0};
    static const char *const known[] = {"model", "content", "add_special", "parse_special", "with_pieces"};
    if (!check_known_fields(json, known, sizeof known / sizeof *known, &err)) {
        cJSON_Delete(json);
        return reply_error(&err);
    }
    const cJSON *content = json_field(json, "content");
    bool add_special = false, parse_special = true, with_pieces = false;
    const served_model *m = api_vocab_for(srv, json, &bad);
    if (!m) {
        cJSON_Delete(json);
        return bad;
    }
    if (!cJSON_IsString(content)) {
        cJSON_Delete(json);
        return reply_error_simple(400, "content", "'content' must be a string");
    }
    if (!get_bool_field(json, "add_special", "add_special", &add_special, &err) ||
        !get_bool_field(json, "parse_special", "parse_special", &parse_special, &err) ||
        !get_bool_field(json, "with_pieces", "with_pieces", &with_pieces, &err)) {
        cJSON_Delete(json);
        return reply_error(&err);
    }
    /* As llama-server: the text of special tokens becomes those tokens,
     * unless parse_special is false. */
    sm_tokens toks;
    sm_error terr = {0};
    sm_status st = sm_tokenize(m->model, content->valuestring, strlen(content->valuestring), add_special, parse_special,
                               &toks, &terr);
    cJSON_Delete(json);
    if (st == SM_ERR_NO_MEMORY) return reply_error_simple(500, NULL, "out of memory");
    if (st != SM_OK) return reply_error_simple(400, "content", terr.message);
    sm_token *tokens = toks.data;
    int32_t n = toks.n;
    cJSON *o = cJSON_CreateObject();
    cJSON *list = cJSON_AddArrayToObject(o, "tokens");
    for (int32_t i = 0; i < n; i++) {
        if (!with_pieces) {
            cJSON_AddItemToArray(list, cJSON_CreateNumber(tokens[i]));
            continue;
        }
        size_t plen;
        const char *piece = piece_of(m, tokens[i], &plen);
        cJSON *t = cJSON_CreateObject();
        cJSON_AddNumberToObject(t, "id", tokens[i]);
        if (sm_utf8_is_valid(piece, plen)) {
            json_add_text(t, "piece", piece, plen);
        } else { /* part of a character: its bytes, as llama-server gives them */
            cJSON *bytes = cJSON_AddArrayToObject(t, "piece");
            for (size_t b = 0; bytes && b < plen; b++) cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)piece[b]));
        }
        cJSON_AddItemToArray(list, t);
    }
    sm_tokens_free(&toks);
    return reply_json(200, o);
}

reply api_detokenize(server *srv, int client_fd, const char *body, size_t len) {
    reply bad;
    cJSON *json = api_parse_body(body, len, &bad);
    if (!json) return bad;
    static const char *const known[] = {"model", "tokens"};
    api_error err = {0};
    if (!check_known_fields(json, known, sizeof known / sizeof *known, &err)) {
        cJSON_Delete(json);
        return reply_error(&err);
    }
    const served_model *m = api_vocab_for(srv, json, &bad);
    if (!m) {
        cJSON_Delete(json);
        return bad;
    }
    const cJSON *list = json_field(json, "tokens");
    if (!cJSON_IsArray(list)) {
        cJSON_Delete(json);
        return reply_error_simple(400, "tokens", "'tokens' must be an array of token ids");
    }
    int32_t n = cJSON_GetArraySize(list), n_vocab = sm_model_n_vocab(m->model), i = 0;
    sm_token *tokens = malloc(sizeof *tokens * (size_t)(n > 0 ? n : 1));
    if (!tokens) {
        cJSON_Delete(json);
        return reply_error_simple(500, NULL, "out of memory");
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, list) {
        if (!json_is_token_id(item, n_vocab)) {
            char param[32], msg[128];
            snprintf(param, sizeof param, "tokens[%d]", i);
            snprintf(msg, sizeof msg, "'%s' must be a token id in [0, %d)", param, n_vocab);
            free(tokens);
            cJSON_Delete(json);
            return reply_error_simple(400, param, msg);
        }
        tokens[i++] = (sm_token)item->valuedouble;
    }
    cJSON_Delete(json);
    size_t k = 0;
    sm_error derr = {0};
    char *text = sm_detokenize(m->model, tokens, n, &k, &derr);
    free(tokens);
    if (!text) return reply_error_simple(derr.status == SM_ERR_NO_MEMORY ? 500 : 400, "tokens", derr.message);
    cJSON *o = cJSON_CreateObject();
    json_add_text(o, "content", text, k);
    free(text);
    return reply_json(200, o);
}

/* GET /metrics: llama-server's Prometheus counters and gauges, under its
 * names (only with --metrics, as there; 501 otherwise). Speculative
 * decoding is not done here: its counters stay 0. */
reply api_metrics(server *srv) {
    if (!srv->opt.metrics) {
        api_error err;
        api_fail(&err, 501, NULL, "/metrics is off: start the server with --metrics");
        err.type = "not_supported_error";
        return reply_error(&err);
    }
    int busy, waiting;
    slot_pool_counts(&srv->slots, &busy, &waiting);
    double n_decodes = 0, n_requests = 0;
    for (int t = 0; t < 1 + SM_MAX_MODELS; t++) {
        if (!srv->slots.batches[t]) continue;
        sm_batch_stats st = sm_batch_get_stats(srv->slots.batches[t]);
        n_decodes += (double)st.n_decodes;
        n_requests += (double)st.n_requests;
    }
    pthread_mutex_lock(&srv->metrics_mutex);
    __typeof__(srv->metrics) m = srv->metrics;
    pthread_mutex_unlock(&srv->metrics_mutex);
    if (n_decodes == 0) n_decodes = m.prompt_tokens > 0 || m.predicted_tokens > 0 ? m.predicted_tokens + 1 : 0;
    n_decodes += m.embedding_decodes;
    static const struct { const char *name, *type, *help; } METRICS[] = {
        {"prompt_tokens_total", "counter", "Number of prompt tokens processed."},
        {"prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache."},
        {"prompt_seconds_total", "counter", "Prompt process time"},
        {"tokens_predicted_total", "counter", "Number of generation tokens processed."},
        {"tokens_predicted_seconds_total", "counter", "Predict process time"},
        {"n_decode_total", "counter", "Total number of llama_decode() calls"},
        {"n_tokens_max", "counter", "Largest observed n_tokens."},
        {"spec_decode_num_draft_tokens_total", "counter", "Drafted tokens (no speculative decoding here)."},
        {"spec_decode_num_accepted_tokens_total", "counter", "Accepted drafted tokens."},
        {"spec_decode_num_drafts_total", "counter", "Drafts."},
        {"prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s."},
        {"predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s."},
        {"requests_processing", "gauge", "Number of requests processing."},
        {"requests_deferred", "gauge", "Number of requests deferred."},
        {"n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call"},
    };
    const double values[] = {
        m.prompt_tokens, m.prompt_cached, m.prompt_seconds, m.predicted_tokens, m.predicted_seconds, n_decodes,
        m.n_tokens_max, 0, 0, 0,
        m.prompt_seconds > 0 ? m.prompt_tokens / m.prompt_seconds : 0,
        m.predicted_seconds > 0 ? m.predicted_tokens / m.predicted_seconds : 0,
        busy, waiting, n_decodes > 0 && n_requests > 0 ? n_requests / n_decodes : 0,
    };
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    if (!out) return reply_bytes(500, "text/plain", "out of memory\n", 14);
    for (size_t i = 0; i < sizeof METRICS / sizeof *METRICS; i++)
        fprintf(out, "# HELP llamacpp:%s %s\n# TYPE llamacpp:%s %s\nllamacpp:%s %.17g\n", METRICS[i].name,
                METRICS[i].help, METRICS[i].name, METRICS[i].type, METRICS[i].name, values[i]);
    fclose(out);
    reply r = reply_bytes(200, "text/plain; version=0.0.4", text, len);
    free(text);
    if (r.response) {
        char started[32];
        snprintf(started, sizeof started, "%.0f", srv->started_unix);
        MHD_add_response_header(r.response, "Process-Start-Time-Unix", started);
    }
    return r;
}
