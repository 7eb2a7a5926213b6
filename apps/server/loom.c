/* POST /loom/expand: the LLooM's tree of continuations of a prefix. */
#include "server/api.h"
#include "server/json_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct loom_request {
    int target;
    char *prefix;
    char *stop_chars;
    sm_tree_params params;
} loom_request;

static bool parse_score(const cJSON *body, sm_tree_params *p, api_error *err) {
    const cJSON *score = json_field(body, "score");
    if (!score) return get_bool_field(body, "score_sum_probs", "score_sum_probs", &p->score_sum_probs, err);
    if (cJSON_IsString(score) && strcmp(score->valuestring, "logprob") == 0) p->score_sum_probs = false;
    else if (cJSON_IsString(score) && strcmp(score->valuestring, "sum_probs") == 0) p->score_sum_probs = true;
    else return api_fail(err, 400, "score", "'score' must be \"logprob\" or \"sum_probs\"");
    return true;
}

/* "stop_chars": a string of ASCII characters; "auto_stop": false turns
 * them off. */
static bool parse_stops(const cJSON *body, loom_request *r, api_error *err) {
    const cJSON *chars = json_field(body, "stop_chars");
    if (chars) {
        if (!cJSON_IsString(chars)) return api_fail(err, 400, "stop_chars", "'stop_chars' must be a string such as \".,\"");
        for (const char *c = chars->valuestring; *c; c++)
            if ((unsigned char)*c >= 0x80)
                return api_fail(err, 400, "stop_chars", "'stop_chars' must be ASCII characters");
        r->stop_chars = strdup(chars->valuestring);
        r->params.stop_chars = r->stop_chars;
    }
    bool auto_stop = true;
    if (!get_bool_field(body, "auto_stop", "auto_stop", &auto_stop, err)) return false;
    if (!auto_stop) r->params.stop_chars = "";
    return true;
}

static bool parse_loom(const cJSON *body, const model_set *models, loom_request *r, api_error *err) {
    memset(r, 0, sizeof *r);
    r->params = sm_tree_default_params();
    const cJSON *model = json_field(body, "model");
    if (model && !cJSON_IsString(model)) return api_fail(err, 400, "model", "'model' must be a string");
    r->target = model_set_resolve(models, model ? model->valuestring : NULL);
    if (r->target < 0) {
        api_fail(err, 404, "model", "The model '%s' does not exist", model->valuestring);
        err->code = "model_not_found";
        return false;
    }
    const cJSON *prefix = json_field(body, "prefix");
    if (!prefix) prefix = json_field(body, "prompt");
    if (!cJSON_IsString(prefix)) return api_fail(err, 400, "prefix", "'prefix' must be a string (the story so far)");
    r->prefix = strdup(prefix->valuestring);
    long long max_depth = r->params.max_depth, beam_limit = r->params.beam_limit, split = r->params.split_limit;
    double cutoff = r->params.cutoff, multiplier = r->params.multiplier;
    if (!get_int_field(body, "max_depth", "max_depth", 1, 512, &max_depth, err) ||
        !get_int_field(body, "max_beams", "max_beams", 1, 255, &beam_limit, err) ||
        !get_int_field(body, "beam_limit", "beam_limit", 1, 255, &beam_limit, err) ||
        !get_int_field(body, "split_limit", "split_limit", 0, 255, &split, err) ||
        !get_number_field(body, "cutoff", "cutoff", 0, 1, &cutoff, err) ||
        !get_number_field(body, "multiplier", "multiplier", 0, 100, &multiplier, err) ||
        !get_bool_field(body, "batched", "batched", &r->params.batched, err) || !parse_score(body, &r->params, err) ||
        !parse_stops(body, r, err))
        return false;
    r->params.max_depth = (int32_t)max_depth;
    r->params.beam_limit = (int32_t)beam_limit;
    r->params.split_limit = (int32_t)split;
    r->params.cutoff = (float)cutoff;
    r->params.multiplier = (float)multiplier;
    sm_error invalid;
    if (sm_tree_params_validate(&r->params, &invalid) != SM_OK) return api_fail(err, 400, NULL, "%s", invalid.message);
    return true;
}

static cJSON *node_json(const sm_tree_node *n, int32_t index) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", index);
    cJSON_AddNumberToObject(o, "parent", n->parent);
    cJSON_AddNumberToObject(o, "token", n->token);
    const char *piece = n->piece ? n->piece : "";
    json_add_text(o, "piece", piece, strlen(piece));
    json_add_float(o, "prob", n->prob);
    json_add_float(o, "score", n->score);
    cJSON_AddNumberToObject(o, "depth", n->depth);
    if (n->end != SM_TREE_END_NONE) cJSON_AddStringToObject(o, "end", sm_tree_end_name(n->end));
    else cJSON_AddNullToObject(o, "end");
    return o;
}

static cJSON *suggestion_json(const served_model *vocab, const sm_suggestion *s) {
    cJSON *o = cJSON_CreateObject();
    const char *text = s->text ? s->text : "";
    json_add_text(o, "text", text, strlen(text));
    json_add_float(o, "score", s->score);
    cJSON_AddNumberToObject(o, "node", s->node);
    cJSON_AddStringToObject(o, "end", sm_tree_end_name(s->end));
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens");
    for (int32_t i = 0; i < s->n_tokens; i++) {
        cJSON *t = cJSON_CreateObject();
        size_t len;
        const char *piece = piece_of(vocab, s->tokens[i], &len);
        cJSON_AddNumberToObject(t, "id", s->tokens[i]);
        json_add_text(t, "piece", piece, len);
        json_add_float(t, "prob", s->probs[i]);
        cJSON_AddItemToArray(tokens, t);
    }
    return o;
}

static cJSON *params_json(const sm_tree_params *p) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "max_depth", p->max_depth);
    cJSON_AddNumberToObject(o, "beam_limit", p->beam_limit);
    json_add_float(o, "cutoff", p->cutoff);
    json_add_float(o, "multiplier", p->multiplier);
    cJSON_AddNumberToObject(o, "split_limit", p->split_limit);
    cJSON_AddStringToObject(o, "stop_chars", p->stop_chars ? p->stop_chars : "");
    cJSON_AddStringToObject(o, "score", p->score_sum_probs ? "sum_probs" : "logprob");
    cJSON_AddBoolToObject(o, "batched", p->batched);
    return o;
}

static cJSON *tree_json(server *srv, const loom_request *r, const sm_tree_result *t, int slot_index) {
    const served_model *vocab = model_set_target_vocab(&srv->models, r->target);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model", model_set_target_id(&srv->models, r->target));
    cJSON_AddNumberToObject(o, "id_slot", slot_index);
    cJSON *suggestions = cJSON_AddArrayToObject(o, "suggestions");
    for (int32_t i = 0; i < t->n_suggestions; i++)
        cJSON_AddItemToArray(suggestions, suggestion_json(vocab, &t->suggestions[i]));
    cJSON *nodes = cJSON_AddArrayToObject(o, "nodes");
    for (int32_t i = 0; i < t->n_nodes; i++) cJSON_AddItemToArray(nodes, node_json(&t->nodes[i], i));
    cJSON_AddNumberToObject(o, "prefix_tokens", t->n_prefix_tokens);
    cJSON_AddNumberToObject(o, "prefix_reused", t->n_prefix_reused);
    cJSON_AddNumberToObject(o, "levels", t->n_levels);
    cJSON_AddNumberToObject(o, "max_live_beams", t->max_live_beams);
    cJSON_AddNumberToObject(o, "decode_calls", t->n_decode_calls);
    cJSON_AddNumberToObject(o, "tokens_decoded", (double)t->n_tokens_decoded);
    json_add_float(o, "elapsed_ms", t->elapsed_ms);
    cJSON_AddItemToObject(o, "params", params_json(&r->params));
    return o;
}

static reply expand(server *srv, loom_request *r) {
    slot *s = slot_acquire_for_tree(&srv->slots, r->target, r->prefix);
    char why[512] = "";
    sm_tree *tree = slot_tree(&srv->slots, s, r->target, why, sizeof why);
    sm_tree_result result = {0};
    sm_status st = tree ? sm_tree_expand(tree, r->prefix, &r->params, &result) : SM_ERR_CONTEXT;
    if (tree && st != SM_OK) snprintf(why, sizeof why, "%s", sm_tree_last_error(tree));
    slot_set_tree_prefix(s, r->target, st == SM_OK ? r->prefix : NULL);
    int slot_index = s->index;
    slot_release(&srv->slots, s);
    if (st != SM_OK) {
        api_error err = {0};
        unsigned status = st == SM_ERR_INVALID_ARGUMENT || st == SM_ERR_PROMPT_TOO_LONG ? 400 : 500;
        api_fail(&err, status, status == 400 ? "prefix" : NULL, "%s", *why ? why : sm_status_name(st));
        if (st == SM_ERR_PROMPT_TOO_LONG) err.code = "context_length_exceeded";
        return reply_error(&err);
    }
    cJSON *json = tree_json(srv, r, &result, slot_index);
    sm_tree_result_free(&result);
    return reply_json(200, json);
}

reply api_loom_expand(server *srv, int client_fd, const char *body, size_t len) {
    reply bad;
    cJSON *json = api_parse_body(body, len, &bad);
    if (!json) return bad;
    loom_request r = {0};
    api_error err = {0};
    static const char *const known[] = {"model", "prefix", "prompt", "max_depth", "max_beams", "beam_limit",
                                        "split_limit", "cutoff", "multiplier", "batched", "score", "score_sum_probs",
                                        "stop_chars", "auto_stop"};
    bool ok = check_known_fields(json, known, sizeof known / sizeof *known, &err) &&
              parse_loom(json, &srv->models, &r, &err);
    cJSON_Delete(json);
    if (ok && r.params.beam_limit > srv->slots.tree_max_beams)
        ok = api_fail(&err, 400, "beam_limit", "'beam_limit' is %d but this server allows at most %d (--loom-max-beams)",
                      r.params.beam_limit, srv->slots.tree_max_beams);
    reply out = ok ? expand(srv, &r) : reply_error(&err);
    free(r.prefix);
    free(r.stop_chars);
    return out;
}
