#include "server/response.h"
#include "server/json_util.h"

#include "json_forms.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Log-probabilities in each API's shape                               */
/* ------------------------------------------------------------------ */

static double ln_prob(float p) { return p > 0.0f ? log((double)p) : -9999.0; }

/* A candidate's text; a token that writes none (an end of text) goes by
 * its name ("</s>", "<|endoftext|>"), so that it can be told apart. */
static const char *candidate_name(const job *j, sm_token token, char *buf, int32_t size, size_t *len) {
    const char *piece = piece_of(j->vocab, token, len);
    if (*len > 0) return piece;
    int32_t n = sm_token_to_piece(j->vocab->model, token, buf, size, true);
    *len = n > 0 ? (size_t)n : 0;
    return buf;
}

static cJSON *openai_top_entry(const job *j, const sm_candidate *c, bool with_bytes) {
    size_t len;
    char name[128];
    const char *piece = candidate_name(j, c->token, name, sizeof name, &len);
    cJSON *o = cJSON_CreateObject();
    json_add_text(o, "token", piece, len);
    json_add_float(o, "logprob", ln_prob(c->prob));
    if (with_bytes) cJSON_AddItemToObject(o, "bytes", json_byte_array(piece, len));
    return o;
}

/* chat: {"content": [{token, logprob, bytes, top_logprobs: [...]}]} */
static cJSON *chat_logprobs(const job *j, int32_t from, int32_t to) {
    const tracker *t = &j->tr;
    cJSON *root = cJSON_CreateObject();
    cJSON *content = cJSON_AddArrayToObject(root, "content");
    for (int32_t i = from; i < to; i++) {
        const tracked_token *tok = &t->tokens[i];
        cJSON *o = cJSON_CreateObject();
        json_add_text(o, "token", t->text + tok->offset, tok->len);
        json_add_float(o, "logprob", tok->logprob > -INFINITY ? tok->logprob : -9999.0);
        cJSON_AddItemToObject(o, "bytes", json_byte_array(t->text + tok->offset, tok->len));
        cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
        for (int32_t k = 0; k < tok->n_top && k < j->req.n_probs; k++)
            cJSON_AddItemToArray(top, openai_top_entry(j, &t->top[tok->top_at + k], true));
        cJSON_AddItemToArray(content, o);
    }
    return root;
}

/* completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"} */
static cJSON *completion_logprobs(const job *j, int32_t from, int32_t to) {
    const tracker *t = &j->tr;
    cJSON *root = cJSON_CreateObject();
    cJSON *tokens = cJSON_AddArrayToObject(root, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(root, "token_logprobs");
    cJSON *tops = cJSON_AddArrayToObject(root, "top_logprobs");
    cJSON *offsets = cJSON_AddArrayToObject(root, "text_offset");
    for (int32_t i = from; i < to; i++) {
        const tracked_token *tok = &t->tokens[i];
        cJSON_AddItemToArray(tokens, json_text(t->text + tok->offset, tok->len));
        cJSON_AddItemToArray(lps, json_float(tok->logprob > -INFINITY ? tok->logprob : -9999.0));
        cJSON *top = cJSON_CreateObject();
        for (int32_t k = 0; k < tok->n_top && k < j->req.n_probs; k++) {
            const sm_candidate *c = &t->top[tok->top_at + k];
            size_t len;
            char name[128];
            const char *piece = candidate_name(j, c->token, name, sizeof name, &len);
            cJSON *key = json_text(piece, len);
            if (!cJSON_GetObjectItemCaseSensitive(top, key->valuestring))
                cJSON_AddItemToObject(top, key->valuestring, json_float(ln_prob(c->prob)));
            cJSON_Delete(key);
        }
        cJSON_AddItemToArray(tops, top);
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)tok->offset));
    }
    return root;
}

/* llama-server: [{id, token, bytes, logprob, top_logprobs: [{id, token, bytes, logprob}]}] */
static cJSON *llama_probabilities(const job *j, int32_t from, int32_t to) {
    const tracker *t = &j->tr;
    cJSON *list = cJSON_CreateArray();
    for (int32_t i = from; i < to; i++) {
        const tracked_token *tok = &t->tokens[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "id", tok->id);
        json_add_text(o, "token", t->text + tok->offset, tok->len);
        cJSON_AddItemToObject(o, "bytes", json_byte_array(t->text + tok->offset, tok->len));
        /* post_sampling_probs: probabilities in the draw (llama-server's
         * prob / top_probs), else the model's log-probabilities */
        bool post = j->req.params.n_probs_post_sampling;
        if (post) json_add_float(o, "prob", tok->p_sampled);
        else json_add_float(o, "logprob", tok->logprob > -INFINITY ? tok->logprob : -9999.0);
        cJSON *top = cJSON_AddArrayToObject(o, post ? "top_probs" : "top_logprobs");
        for (int32_t k = 0; k < tok->n_top && k < j->req.n_probs; k++) {
            const sm_candidate *c = &t->top[tok->top_at + k];
            cJSON *entry = openai_top_entry(j, c, true);
            cJSON_AddNumberToObject(entry, "id", c->token);
            if (post) {
                cJSON_DeleteItemFromObjectCaseSensitive(entry, "logprob");
                json_add_float(entry, "prob", c->prob);
            }
            cJSON_AddItemToArray(top, entry);
        }
        cJSON_AddItemToArray(list, o);
    }
    return list;
}

/* ------------------------------------------------------------------ */
/* Events, fusion and the selfmod summary                              */
/* ------------------------------------------------------------------ */

static cJSON *fusion_json(const job *j, const sm_fusion_info *f) {
    cJSON *o = cJSON_CreateObject();
    json_add_float(o, "top1_agreement", f->top1_agreement);
    json_add_float(o, "top3_agreement", f->top3_agreement);
    json_add_float(o, "js_divergence", f->js_divergence);
    cJSON_AddNumberToObject(o, "leading_model", f->leading_model);
    cJSON_AddBoolToObject(o, "reference_differs", f->reference_differs);
    cJSON *p_chosen = cJSON_AddArrayToObject(o, "p_chosen");
    cJSON *p_top1 = cJSON_AddArrayToObject(o, "p_top1");
    cJSON *top1 = cJSON_AddArrayToObject(o, "top1");
    cJSON *top1_piece = cJSON_AddArrayToObject(o, "top1_piece");
    for (int32_t m = 0; m < f->n_models && m < SM_MAX_MODELS; m++) {
        cJSON_AddItemToArray(p_chosen, json_float(f->p_chosen[m]));
        cJSON_AddItemToArray(p_top1, json_float(f->p_top1[m]));
        cJSON_AddItemToArray(top1, cJSON_CreateNumber(f->top1[m]));
        size_t len;
        const char *piece = piece_of(j->vocab, f->top1[m], &len);
        cJSON_AddItemToArray(top1_piece, json_text(piece, len));
    }
    return o;
}

/* The library's JSON names tokens by id; the page also wants their text. */
static void add_pieces(const job *j, cJSON *list, const char *id_key, const char *piece_key) {
    const cJSON *item;
    cJSON_ArrayForEach(item, list) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(item, id_key);
        if (!cJSON_IsNumber(id)) continue;
        size_t len;
        const char *piece = piece_of(j->vocab, (sm_token)id->valuedouble, &len);
        cJSON_AddItemToObject((cJSON *)item, piece_key, json_text(piece, len));
    }
}

static void add_top(const job *j, cJSON *o, const sm_event *e) {
    cJSON *top = cJSON_GetObjectItemCaseSensitive(o, "top");
    if (top) {
        add_pieces(j, top, "token", "piece");
        return;
    }
    top = cJSON_AddArrayToObject(o, "top");
    for (int32_t k = 0; k < e->n_top; k++) {
        size_t len;
        const char *piece = piece_of(j->vocab, e->top[k].token, &len);
        cJSON *c = cJSON_CreateObject();
        cJSON_AddNumberToObject(c, "token", e->top[k].token);
        json_add_text(c, "piece", piece, len);
        json_add_float(c, "prob", e->top[k].prob);
        cJSON_AddItemToArray(top, c);
    }
}

static void add_fusion(const job *j, cJSON *o, const sm_fusion_info *f) {
    cJSON *fusion = cJSON_GetObjectItemCaseSensitive(o, "fusion");
    if (!fusion) {
        cJSON_AddItemToObject(o, "fusion", fusion_json(j, f));
        return;
    }
    cJSON *pieces = cJSON_AddArrayToObject(fusion, "top1_piece");
    for (int32_t m = 0; m < f->n_models && m < SM_MAX_MODELS; m++) {
        size_t len;
        const char *piece = piece_of(j->vocab, f->top1[m], &len);
        cJSON_AddItemToArray(pieces, json_text(piece, len));
    }
    const cJSON *list;
    cJSON_ArrayForEach(list, cJSON_GetObjectItemCaseSensitive(fusion, "top3")) add_pieces(j, (cJSON *)list, "token", "piece");
}

cJSON *response_event(const job *j, const sm_event *e) {
    char *text = sm_event_to_json(e);
    cJSON *o = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!o) o = cJSON_CreateObject();
    if (e->type != SM_EVENT_TOKEN) return o;
    json_add_float(o, "logprob", ln_prob(e->signals.p_chosen));
    if (e->top && e->n_top > 0) add_top(j, o, e);
    if (e->fusion) add_fusion(j, o, e->fusion);
    return o;
}

static cJSON *stored_event_json(const sm_event *e) {
    char *text = sm_event_to_json(e);
    cJSON *o = text ? cJSON_Parse(text) : NULL;
    free(text);
    return o ? o : cJSON_CreateObject();
}

static void add_fusion_summary(cJSON *o, const job *j, const sm_result *res) {
    const sm_fusion_params *fp = &j->req.params.fusion;
    cJSON_AddStringToObject(o, "fusion_mode", sm_fusion_mode_name(fp->mode));
    cJSON *models = cJSON_AddArrayToObject(o, "models");
    sm_model *list[SM_MAX_MODELS];
    int n = model_set_target_models(&j->srv->models, j->req.target, list);
    for (int m = 0; m < n; m++) cJSON_AddItemToArray(models, cJSON_CreateString(j->srv->models.models[m].id));
    if (!res->fusion) return;
    double sum = 0;
    cJSON *per_token = cJSON_AddArrayToObject(o, "fusion");
    cJSON *disagree = cJSON_AddArrayToObject(o, "reference_disagreements");
    for (int32_t i = 0; i < res->n_tokens; i++) {
        sum += res->fusion[i].top1_agreement;
        cJSON_AddItemToArray(per_token, fusion_json(j, &res->fusion[i]));
        if (res->fusion[i].reference_differs) cJSON_AddItemToArray(disagree, cJSON_CreateNumber(i));
    }
    json_add_float(o, "mean_top1_agreement", res->n_tokens ? sum / res->n_tokens : NAN);
}

/* events: false when the stream already carried them one by one. */
static cJSON *selfmod_summary(const job *j, const sm_result *res, bool events) {
    const sm_policy_params *p = &j->req.params.policy;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "enabled", p->enabled);
    cJSON_AddBoolToObject(o, "aggressive", p->aggressive);
    cJSON_AddStringToObject(o, "stop_reason", sm_stop_reason_name(res->stop_reason));
    cJSON_AddNumberToObject(o, "retractions", res->n_retractions);
    cJSON_AddNumberToObject(o, "backtracks", res->n_backtracks);
    cJSON_AddNumberToObject(o, "tokens_removed", res->n_tokens_removed);
    cJSON_AddNumberToObject(o, "tokens_sampled", res->n_sampled);
    json_add_float(o, "avg_confidence", res->avg_confidence);
    json_add_float(o, "final_temperature", res->final_temperature);
    json_add_float(o, "final_repeat_penalty", res->final_repeat_penalty);
    cJSON_AddNumberToObject(o, "seed", (double)j->req.params.sampling.seed);
    cJSON *ops = cJSON_AddArrayToObject(o, "operators");
    for (int i = 0; i < j->req.n_operators; i++)
        cJSON_AddItemToArray(ops, cJSON_CreateString(j->req.operators[i]->vt->name ? j->req.operators[i]->vt->name : "operator"));
    if (events) {
        cJSON *list = cJSON_AddArrayToObject(o, "events");
        for (int32_t i = 0; i < res->n_events; i++) cJSON_AddItemToArray(list, stored_event_json(&res->events[i]));
    }
    cJSON_AddNumberToObject(o, "n_models", res->n_models ? res->n_models : 1);
    if (res->n_models > 1) add_fusion_summary(o, j, res);
    return o;
}

static cJSON *timings(const job *j, const sm_result *res) {
    cJSON *o = cJSON_CreateObject();
    int32_t prompt_n = j->n_prompt - j->n_cached;
    cJSON_AddNumberToObject(o, "prompt_n", prompt_n);
    cJSON_AddNumberToObject(o, "cached_n", j->n_cached);
    cJSON_AddNumberToObject(o, "cache_n", j->n_cached); /* llama-server's name */
    json_add_float(o, "prompt_ms", j->t_prompt_ms);
    json_add_float(o, "prompt_per_token_ms", prompt_n > 0 ? j->t_prompt_ms / prompt_n : 0.0);
    json_add_float(o, "prompt_per_second", j->t_prompt_ms > 0 ? prompt_n * 1000.0 / j->t_prompt_ms : 0.0);
    cJSON_AddNumberToObject(o, "predicted_n", res->n_tokens);
    /* As llama-server: the first token comes from the prompt's last decode,
     * so the rate is over the n - 1 decode steps after it (full doubles:
     * a client can recompute the rate from the time). */
    cJSON_AddNumberToObject(o, "predicted_ms", res->t_generate_ms);
    int32_t steps = res->n_tokens > 1 ? res->n_tokens - 1 : 0;
    cJSON_AddNumberToObject(o, "predicted_per_token_ms", steps > 0 ? res->t_generate_ms / steps : 0.0);
    cJSON_AddNumberToObject(o, "predicted_per_second",
                            steps > 0 && res->t_generate_ms > 0 ? 1e3 / res->t_generate_ms * steps : 0.0);
    return o;
}

static cJSON *usage(const job *j, const sm_result *res) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "prompt_tokens", j->n_prompt);
    cJSON_AddNumberToObject(o, "completion_tokens", res->n_tokens);
    cJSON_AddNumberToObject(o, "total_tokens", j->n_prompt + res->n_tokens);
    cJSON *details = cJSON_AddObjectToObject(o, "prompt_tokens_details");
    cJSON_AddNumberToObject(details, "cached_tokens", j->n_cached);
    return o;
}

static const char *finish_reason(sm_stop_reason r) {
    switch (r) {
    case SM_STOP_N_PREDICT:
    case SM_STOP_INDENT:      /* llama-server's limits, as its n_predict */
    case SM_STOP_TIME_LIMIT:
    case SM_STOP_CONTEXT_FULL: return "length";
    default: return "stop";
    }
}

static const char *llama_stop_type(sm_stop_reason r) {
    switch (r) {
    case SM_STOP_EOG:
    case SM_STOP_BOS: return "eos"; /* --stop-at-bos: BOS ends the text as an end-of-generation would */
    case SM_STOP_STOP_STRING: return "word";
    case SM_STOP_N_PREDICT:
    case SM_STOP_INDENT:
    case SM_STOP_TIME_LIMIT:
    case SM_STOP_CONTEXT_FULL: return "limit";
    default: return "none";
    }
}

/* The stop string the text ended at, for llama-server's stopping_word. */
static const char *stopping_word(const job *j, const sm_result *res) {
    if (res->stop_reason != SM_STOP_STOP_STRING) return "";
    const char *best = "";
    const char *at = NULL;
    for (int i = 0; i < j->req.n_stops; i++) {
        const char *hit = strstr(j->tr.text, j->req.stops[i]);
        if (hit && (!at || hit < at)) {
            at = hit;
            best = j->req.stops[i];
        }
    }
    return best;
}

/* The request's settings, with llama-server's logit_bias list: the
 * request's biases and, with ignore_eos, every end-of-generation token at
 * -inf (null). */
static cJSON *generation_settings(const job *j) {
    cJSON *o = sm_gen_params_to_cjson(&j->req.params);
    if (!o) return NULL;
    /* llama.cpp's adaptive-p sampler, which is off here as in llama-server's
     * defaults (not implemented: a request that sets it is refused) */
    cJSON_AddNumberToObject(o, "adaptive_target", -1.0);
    cJSON_AddNumberToObject(o, "adaptive_decay", 0.9);
    cJSON_DeleteItemFromObjectCaseSensitive(o, "logit_bias");
    cJSON *list = cJSON_AddArrayToObject(o, "logit_bias");
    for (int i = 0; i < j->req.n_logit_bias; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "token", j->req.logit_bias[i].token);
        if (isinf(j->req.logit_bias[i].bias)) cJSON_AddNullToObject(e, "bias");
        else cJSON_AddNumberToObject(e, "bias", j->req.logit_bias[i].bias);
        cJSON_AddItemToArray(list, e);
    }
    const sm_model *model = j->vocab->model;
    for (sm_token t = 0; j->req.params.ignore_eos && t < sm_model_n_vocab(model); t++) {
        if (!sm_model_token_is_eog(model, t)) continue;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "token", t);
        cJSON_AddNullToObject(e, "bias");
        cJSON_AddItemToArray(list, e);
    }
    return o;
}

/* ------------------------------------------------------------------ */
/* Chunks and responses                                                */
/* ------------------------------------------------------------------ */

static cJSON *openai_envelope(const job *j, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)j->created);
    cJSON_AddStringToObject(o, "model", j->model_id);
    /* llama-server's form, "b" and a build, which clients match on */
    cJSON_AddStringToObject(o, "system_fingerprint", "b" SM_VERSION "-llama_selfmod");
    return o;
}

/* A conversation with tools: the whole answer parsed into the message's
 * content and tool_calls (in a stream's delta each call has its index).
 * Returns whether it holds tool calls. */
static bool add_tool_message(const job *j, cJSON *msg, const char *text, size_t len, bool stream) {
    char *copy = malloc(len + 1);
    if (copy) {
        memcpy(copy, text ? text : "", len);
        copy[len] = '\0';
    }
    sm_error err = {0};
    char *json = copy ? sm_tool_prompt_parse(j->tools, copy, &err) : NULL;
    cJSON *parsed = json ? cJSON_Parse(json) : NULL;
    free(json);
    free(copy);
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(parsed, "content");
    cJSON *calls = cJSON_DetachItemFromObjectCaseSensitive(parsed, "tool_calls");
    bool has_calls = cJSON_IsArray(calls) && cJSON_GetArraySize(calls) > 0;
    if (!parsed) json_add_text(msg, "content", text, len); /* unparsable: the text as it is */
    else if (cJSON_IsString(content) && (*content->valuestring || !has_calls))
        cJSON_AddStringToObject(msg, "content", content->valuestring);
    else cJSON_AddNullToObject(msg, "content");
    if (has_calls) {
        int index = 0;
        cJSON *call;
        cJSON_ArrayForEach(call, calls) if (stream) cJSON_AddNumberToObject(call, "index", index++);
        cJSON_AddItemToObject(msg, "tool_calls", calls);
    } else {
        cJSON_Delete(calls);
    }
    cJSON_Delete(parsed);
    return has_calls;
}

/* choices[0] of a chunk or response; `text` NULL leaves the content out. */
static cJSON *openai_choice(const job *j, const char *text, size_t len, int32_t tok_from, int32_t tok_to,
                            bool stream, const char *finish) {
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", j->choice_index);
    if (j->req.api == API_CHAT && j->tools && finish && stream) {
        /* the content and the calls went out as deltas: the last chunk
         * only says how it ended (the whole answer's calls decide) */
        cJSON_AddObjectToObject(c, "delta");
        cJSON *whole = cJSON_CreateObject();
        if (add_tool_message(j, whole, text, len, false) && strcmp(finish, "length") != 0) finish = "tool_calls";
        cJSON_Delete(whole);
    } else if (j->req.api == API_CHAT && j->tools && finish) {
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        /* a call cut short by the length limit still ends in "length", as with llama-server */
        if (add_tool_message(j, msg, text, len, false) && strcmp(finish, "length") != 0) finish = "tool_calls";
    } else if (j->req.api == API_CHAT) {
        cJSON *msg = cJSON_AddObjectToObject(c, stream ? "delta" : "message");
        if (!stream) cJSON_AddStringToObject(msg, "role", "assistant");
        if (text) json_add_text(msg, "content", text, len);
    } else {
        json_add_text(c, "text", text ? text : "", text ? len : 0);
    }
    if (j->req.logprobs && (tok_to > tok_from || !stream))
        cJSON_AddItemToObject(c, "logprobs", j->req.api == API_CHAT ? chat_logprobs(j, tok_from, tok_to)
                                                                    : completion_logprobs(j, tok_from, tok_to));
    else cJSON_AddNullToObject(c, "logprobs");
    if (finish) cJSON_AddStringToObject(c, "finish_reason", finish);
    else cJSON_AddNullToObject(c, "finish_reason");
    return c;
}

static cJSON *llama_body(const job *j, const char *text, size_t len, int32_t tok_from, int32_t tok_to, bool stop) {
    cJSON *o = cJSON_CreateObject();
    json_add_text(o, "content", text, len);
    /* llama-server: a stream's chunks always carry their token ids, the
     * whole answer only when return_tokens asks */
    cJSON *ids = cJSON_AddArrayToObject(o, "tokens");
    for (int32_t i = tok_from; (j->req.return_tokens || !stop) && i < tok_to; i++)
        cJSON_AddItemToArray(ids, cJSON_CreateNumber(j->tr.tokens[i].id));
    cJSON_AddBoolToObject(o, "stop", stop);
    cJSON_AddNumberToObject(o, "id_slot", j->slot ? j->slot->index : -1);
    cJSON_AddNumberToObject(o, "index", j->choice_index);
    if (j->req.n_probs > 0) cJSON_AddItemToObject(o, "completion_probabilities", llama_probabilities(j, tok_from, tok_to));
    return o;
}

cJSON *response_chunk(const job *j, const char *text, size_t len, int32_t tok_from, int32_t tok_to, cJSON *events) {
    cJSON *o;
    if (j->req.api == API_LLAMA) {
        o = llama_body(j, text, len, tok_from, tok_to, false);
    } else {
        o = openai_envelope(j, j->req.api == API_CHAT ? "chat.completion.chunk" : "text_completion");
        cJSON *choices = cJSON_AddArrayToObject(o, "choices");
        cJSON_AddItemToArray(choices, openai_choice(j, len || j->req.api != API_CHAT ? text : NULL, len, tok_from,
                                                    tok_to, true, NULL));
    }
    if (j->req.timings_per_token) { /* llama-server's: where the generation stands, chunk by chunk */
        cJSON *t = cJSON_AddObjectToObject(o, "timings");
        cJSON_AddNumberToObject(t, "prompt_n", j->n_prompt - j->n_cached);
        cJSON_AddNumberToObject(t, "cached_n", j->n_cached);
        json_add_float(t, "prompt_ms", j->t_prompt_ms);
        cJSON_AddNumberToObject(t, "predicted_n", tok_to);
    }
    if (events) {
        cJSON *sm = cJSON_AddObjectToObject(o, "selfmod");
        cJSON_AddItemToObject(sm, "events", events);
    }
    return o;
}

cJSON *response_progress_chunk(const job *j, int32_t total, int32_t cached, int32_t processed, double elapsed_ms) {
    cJSON *o;
    if (j->req.api == API_LLAMA) {
        o = llama_body(j, "", 0, 0, 0, false);
    } else if (j->req.api == API_CHAT) {
        o = response_role_chunk(j); /* as llama-server: the role, no content, and the progress */
    } else {
        o = openai_envelope(j, "text_completion");
        cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), openai_choice(j, "", 0, 0, 0, true, NULL));
    }
    cJSON *p = cJSON_AddObjectToObject(o, "prompt_progress");
    cJSON_AddNumberToObject(p, "total", total);
    cJSON_AddNumberToObject(p, "cache", cached);
    cJSON_AddNumberToObject(p, "processed", processed);
    cJSON_AddNumberToObject(p, "time_ms", (double)(int64_t)elapsed_ms);
    if (j->req.timings_per_token) {
        cJSON *t = cJSON_AddObjectToObject(o, "timings");
        cJSON_AddNumberToObject(t, "cache_n", cached);
        cJSON_AddNumberToObject(t, "prompt_n", processed - cached);
        json_add_float(t, "prompt_ms", elapsed_ms);
        json_add_float(t, "prompt_per_token_ms", processed > cached ? elapsed_ms / (processed - cached) : 0.0);
        json_add_float(t, "prompt_per_second", elapsed_ms > 0 ? (processed - cached) * 1e3 / elapsed_ms : 0.0);
        cJSON_AddNumberToObject(t, "predicted_n", 0);
        json_add_float(t, "predicted_ms", 0.0);
        json_add_float(t, "predicted_per_token_ms", 0.0);
        json_add_float(t, "predicted_per_second", 0.0);
    }
    return o;
}

cJSON *response_delta_chunk(const job *j, cJSON *delta, cJSON *events) {
    cJSON *o = openai_envelope(j, "chat.completion.chunk");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", j->choice_index);
    cJSON_AddItemToObject(c, "delta", delta ? delta : cJSON_CreateObject());
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    if (events) cJSON_AddItemToObject(cJSON_AddObjectToObject(o, "selfmod"), "events", events);
    return o;
}

cJSON *response_role_chunk(const job *j) {
    cJSON *o = openai_envelope(j, "chat.completion.chunk");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", j->choice_index);
    cJSON *delta = cJSON_AddObjectToObject(c, "delta");
    cJSON_AddStringToObject(delta, "role", "assistant");
    cJSON_AddNullToObject(delta, "content"); /* as llama-server */
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    return o;
}

cJSON *response_final_chunk(const job *j, const sm_result *res, const char *text, size_t len, int32_t tok_from,
                            int32_t tok_to) {
    cJSON *o;
    if (j->req.api == API_LLAMA) {
        o = llama_body(j, text, len, tok_from, tok_to, true);
        cJSON_AddStringToObject(o, "model", j->model_id);
        cJSON_AddNumberToObject(o, "tokens_predicted", res->n_tokens);
        cJSON_AddNumberToObject(o, "tokens_evaluated", j->n_prompt);
        cJSON_AddNumberToObject(o, "tokens_cached", j->n_cached);
        cJSON_AddStringToObject(o, "stop_type", llama_stop_type(res->stop_reason));
        cJSON_AddStringToObject(o, "stopping_word", stopping_word(j, res));
        cJSON_AddItemToObject(o, "timings", timings(j, res));
        /* As llama-server: the answer ran into the end of the context (a
         * prompt that does not fit is refused, never cut). */
        cJSON_AddBoolToObject(o, "truncated", res->stop_reason == SM_STOP_CONTEXT_FULL || res->n_context_shifts > 0);
        cJSON_AddBoolToObject(o, "has_new_line", res->text && memchr(res->text, '\n', res->text_len) != NULL);
        cJSON_AddItemToObject(o, "generation_settings", generation_settings(j));
    } else {
        o = openai_envelope(j, j->req.api == API_CHAT ? "chat.completion.chunk" : "text_completion");
        cJSON *choices = cJSON_AddArrayToObject(o, "choices");
        cJSON_AddItemToArray(choices, openai_choice(j, len || j->req.api != API_CHAT ? text : NULL, len, tok_from,
                                                    tok_to, true, finish_reason(res->stop_reason)));
        cJSON_AddItemToObject(o, "timings", timings(j, res));
    }
    cJSON_AddItemToObject(o, "selfmod", selfmod_summary(j, res, !(j->ch && j->req.live_events)));
    return o;
}

cJSON *response_usage_chunk(const job *j, const sm_result *res) {
    cJSON *o = openai_envelope(j, j->req.api == API_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToObject(o, "usage", usage(j, res));
    if (j->req.timings_per_token) cJSON_AddItemToObject(o, "timings", timings(j, res)); /* the whole answer's */
    return o;
}

/* llama-server's --verbose object: the reply in its own form, with the
 * prompt as the model saw it. */
static cJSON *verbose_json(const job *j, const sm_result *res) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "prompt", j->verbose_prompt ? j->verbose_prompt : "");
    cJSON_AddStringToObject(o, "content", res->text ? res->text : "");
    cJSON_AddNumberToObject(o, "tokens_predicted", res->n_tokens);
    cJSON_AddNumberToObject(o, "tokens_evaluated", j->n_prompt);
    cJSON_AddStringToObject(o, "stop_type", llama_stop_type(res->stop_reason));
    cJSON_AddItemToObject(o, "generation_settings", generation_settings(j));
    return o;
}

/* llama-server's response_fields: only the fields asked for, each under
 * its path ("generation_settings/n_predict"); paths that lead nowhere are
 * left out. */
static cJSON *select_fields(cJSON *full, const cJSON *fields) {
    cJSON *out = cJSON_CreateObject();
    const cJSON *field;
    cJSON_ArrayForEach(field, fields) {
        /* every part names a member, an empty one too (llama-server's
         * split): "" and "a//b" lead nowhere */
        const cJSON *at = full;
        for (const char *part = field->valuestring; at;) {
            const char *slash = strchr(part, '/');
            size_t n = slash ? (size_t)(slash - part) : strlen(part);
            char key[256];
            if (n >= sizeof key) {
                at = NULL;
                break;
            }
            memcpy(key, part, n);
            key[n] = '\0';
            at = cJSON_IsObject(at) ? cJSON_GetObjectItemCaseSensitive(at, key) : NULL;
            if (!slash) break;
            part = slash + 1;
        }
        if (at) cJSON_AddItemToObject(out, field->valuestring, cJSON_Duplicate(at, true));
    }
    cJSON_Delete(full);
    return out;
}

cJSON *response_complete(const job *j, const sm_result *res) {
    int32_t n_tok = tracker_tokens_touching(&j->tr, res->text_len);
    if (j->req.api == API_LLAMA) {
        cJSON *o = response_final_chunk(j, res, res->text, res->text_len, 0, n_tok);
        cJSON_AddStringToObject(o, "prompt", j->verbose_prompt ? j->verbose_prompt : "");
        if (job_verbose(j)) cJSON_AddItemToObject(o, "__verbose", verbose_json(j, res));
        return j->req.response_fields ? select_fields(o, j->req.response_fields) : o;
    }
    cJSON *o = openai_envelope(j, j->req.api == API_CHAT ? "chat.completion" : "text_completion");
    cJSON *choices = cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToArray(choices, openai_choice(j, res->text, res->text_len, 0, n_tok, false,
                                                finish_reason(res->stop_reason)));
    cJSON_AddItemToObject(o, "usage", usage(j, res));
    cJSON_AddItemToObject(o, "timings", timings(j, res));
    cJSON_AddItemToObject(o, "selfmod", selfmod_summary(j, res, true));
    if (job_verbose(j)) cJSON_AddItemToObject(o, "__verbose", verbose_json(j, res));
    return o;
}
