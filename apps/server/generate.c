#include "server/generate.h"
#include "server/job.h"
#include "server/json_util.h"
#include "server/prompt.h"
#include "server/response.h"

#include <errno.h>
#include <pthread.h>
#include <sys/socket.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void make_id(char *id, size_t size, const char *prefix) {
    static atomic_ulong counter;
    unsigned long n = atomic_fetch_add(&counter, 1);
    snprintf(id, size, "%s-%08lx%06lx", prefix, (unsigned long)time(NULL) & 0xffffffffUL, n & 0xffffffUL);
}

static void job_free(job *j) {
    if (!j) return;
    gen_request_free(&j->req);
    tracker_free(&j->tr);
    free(j->prompt_tokens);
    free(j->verbose_prompt);
    sm_tool_prompt_free(j->tools);
    free(j);
}


/* A prompt too long: OpenAI's code, llama-server's type and numbers. */
static void context_exceeded(api_error *err, int32_t n_prompt_tokens, int32_t n_ctx) {
    err->code = "context_length_exceeded";
    err->type = "exceed_context_size_error";
    err->n_prompt_tokens = n_prompt_tokens;
    err->n_ctx = n_ctx;
}

static bool tokenize_prompt(job *j, api_error *err) {
    const sm_model *model = j->vocab->model;
    /* A completion prompt is raw model input, as in llama-server: the text
     * of special tokens becomes those tokens. Chat messages never do. */
    sm_tokens toks;
    sm_error terr = {0};
    const gen_request *r = &j->req;
    sm_status st;
    if (r->infill) {
        const sm_session_params *sp = &j->srv->slots.session_params;
        int32_t n_predict = j->srv->opt.base.n_predict; /* llama-server's -n, not the request's */
        infill_limits lim = {.n_batch = (int32_t)sp->n_batch, .n_predict = n_predict == N_PREDICT_UNSET ? -1 : n_predict,
                             .n_ctx = (int32_t)sp->n_ctx, .spm = j->srv->opt.spm_infill,
                             .n_answer = r->params.n_predict > 0 ? r->params.n_predict : 1};
        st = prompt_infill(model, r->input_prefix, r->input_suffix, r->input_extra, r->prompt, &lim, &toks, &terr);
    } else if (r->prompt_mixed) {
        st = prompt_tokenize_mixed(model, r->prompt_mixed, true, true, &toks, &terr);
    } else {
        st = sm_tokenize(model, r->prompt, strlen(r->prompt), true, true, &toks, &terr);
    }
    if (st == SM_ERR_NO_MEMORY) return api_fail(err, 500, NULL, "out of memory");
    if (st != SM_OK) return api_fail(err, 400, "prompt", "%s", terr.message);
    j->prompt_tokens = toks.data;
    j->n_prompt_tokens = toks.n;
    if (j->n_prompt_tokens <= 0) return api_fail(err, 400, "prompt", "the prompt is empty: give some text");
    int32_t n_ctx = (int32_t)j->srv->slots.session_params.n_ctx;
    if (j->n_prompt_tokens >= n_ctx) {
        api_fail(err, 400, "prompt", "the prompt is %d tokens, which exceeds the available context size (%d tokens): "
                 "nothing left to generate into", j->n_prompt_tokens, n_ctx);
        context_exceeded(err, j->n_prompt_tokens, n_ctx);
        return false;
    }
    return true;
}

/* A conversation that does not fit the context is refused now, before a
 * stream has answered 200 (as OpenAI and llama-server refuse it). With
 * --drop-old-turns the oldest turns are dropped instead, but never the
 * system prompt and the new message: only when those alone do not fit. */
static bool chat_fits(job *j, api_error *err) {
    const gen_request *r = &j->req;
    bool dropping = j->srv->opt.drop_old_turns;
    sm_chat_message minimal[2];
    int n = 0;
    if (r->has_system) minimal[n++] = r->messages[0];
    minimal[n++] = r->messages[r->n_messages - 1];
    const sm_chat_message *checked = dropping ? minimal : r->messages;
    if (!dropping) n = r->n_messages;
    int32_t n_tokens = 0;
    sm_error e = {0};
    sm_model *models[SM_MAX_MODELS];
    model_set_target_models(&j->srv->models, r->target, models);
    sm_chat_params cp = slot_pool_chat_params(&j->srv->slots, r->template_kwargs);
    if (sm_chat_prompt_tokens(models[0], &cp, checked, n, &n_tokens, &e) != SM_OK)
        return api_fail(err, e.status == SM_ERR_NO_MEMORY ? 500 : 400, "messages", "%s", e.message);
    int32_t n_ctx = (int32_t)j->srv->slots.session_params.n_ctx;
    if (n_tokens >= n_ctx) {
        api_fail(err, 400, "messages",
                 "%s takes %d tokens with the chat template, which exceeds the available context "
                 "size (%d tokens): nothing left to answer into",
                 dropping ? (r->has_system ? "the last message and the system prompt" : "the last message")
                          : "the conversation", n_tokens, n_ctx);
        context_exceeded(err, n_tokens, n_ctx);
        return false;
    }
    return true;
}

/* Every string in a request's messages and tools stays text: none may
 * spell a special token, since the rendered prompt is tokenized with
 * special-token parsing (the template's markup must become its tokens). */
static bool strings_are_plain(const sm_model *model, const cJSON *item, api_error *err) {
    if (cJSON_IsString(item) && sm_text_has_special_tokens(model, item->valuestring))
        return api_fail(err, 400, "messages", "the request's text contains the text of a special token of the model, "
                                              "which a conversation with tools cannot keep as text");
    const cJSON *child;
    cJSON_ArrayForEach(child, item) if (!strings_are_plain(model, child, err)) return false;
    return true;
}

/* A conversation with tools: the template renders it in llama.cpp's
 * tool-call format; a grammar that holds from the first token (tool_choice
 * "required") and the format's stop strings join the request's. */
static bool prepare_tools(job *j, api_error *err) {
    gen_request *r = &j->req;
    sm_model *models[SM_MAX_MODELS];
    model_set_target_models(&j->srv->models, r->target, models);
    for (const char *json = r->messages_json; json; json = json == r->messages_json ? r->tools_json : NULL) {
        cJSON *parsed = cJSON_Parse(json);
        bool plain = parsed && strings_are_plain(models[0], parsed, err);
        cJSON_Delete(parsed);
        if (!plain) return err->status ? false : api_fail(err, 500, NULL, "out of memory");
    }
    sm_error e = {0};
    sm_chat_params cp = slot_pool_chat_params(&j->srv->slots, r->template_kwargs);
    j->tools = sm_tool_prompt_new(models[0], &cp, r->messages_json, r->tools_json, r->tool_choice,
                                  r->parallel_tool_calls, &e);
    if (!j->tools) return api_fail(err, e.status == SM_ERR_NO_MEMORY ? 500 : 400, "messages", "%s", e.message);
    const char *grammar = sm_tool_prompt_grammar(j->tools);
    bool lazy = sm_tool_prompt_n_triggers(j->tools) > 0;
    if (grammar && !lazy && r->grammar)
        return api_fail(err, 400, "tool_choice", "tool_choice \"required\" brings its own grammar: give no other");
    if (r->grammar) grammar = NULL; /* a grammar of the request's own replaces the lazy tool-call one */
    r->prompt = strdup(sm_tool_prompt_text(j->tools));
    if (grammar) r->grammar = strdup(grammar);
    for (int32_t i = 0; i < sm_tool_prompt_n_stops(j->tools); i++) {
        if (r->n_stops == MAX_STOPS) return api_fail(err, 400, "stop", "too many stop strings with the tool format's own");
        if (!(r->stops[r->n_stops] = strdup(sm_tool_prompt_stop(j->tools, i)))) break;
        r->n_stops++;
    }
    gen_request_bind(r);
    r->params.grammar_prefill = grammar ? sm_tool_prompt_grammar_prefill(j->tools) : NULL;
    if (grammar && lazy) {
        r->params.grammar_triggers = sm_tool_prompt_triggers(j->tools);
        r->params.n_grammar_triggers = sm_tool_prompt_n_triggers(j->tools);
    }
    return r->prompt && (!grammar || r->grammar) ? true : api_fail(err, 500, NULL, "out of memory");
}

static job *job_new(server *srv, gen_request *req, api_error *err) {
    job *j = calloc(1, sizeof *j);
    if (!j) {
        gen_request_free(req);
        api_fail(err, 500, NULL, "out of memory");
        return NULL;
    }
    j->srv = srv;
    j->req = *req;
    gen_request_bind(&j->req);
    memset(req, 0, sizeof *req);
    j->created = (long)time(NULL);
    make_id(j->id, sizeof j->id, j->req.api == API_CHAT ? "chatcmpl" : "cmpl");
    j->model_id = model_set_target_id(&srv->models, j->req.target);
    j->vocab = model_set_target_vocab(&srv->models, j->req.target);
    if (j->req.id_slot >= srv->slots.n_slots) { /* it would wait for a slot that never comes */
        api_fail(err, 400, "id_slot", "id_slot %d: this server has %d slots (0 to %d)", j->req.id_slot,
                 srv->slots.n_slots, srv->slots.n_slots - 1);
        job_free(j);
        return NULL;
    }
    if (j->req.tool_mode && !prepare_tools(j, err)) {
        job_free(j);
        return NULL;
    }
    tracker_init(&j->tr, false, (const char *const *)j->req.stops, j->req.n_stops);
    j->tr.n_indent = j->req.params.n_indent;
    j->client_fd = -1;
    if ((j->req.api != API_CHAT || j->req.tool_mode) && !tokenize_prompt(j, err)) {
        job_free(j);
        return NULL;
    }
    if (j->req.api == API_CHAT && !j->req.tool_mode && !chat_fits(j, err)) {
        job_free(j);
        return NULL;
    }
    return j;
}

/* ------------------------------------------------------------------ */
/* Streaming                                                           */
/* ------------------------------------------------------------------ */

static void send_json(job *j, cJSON *json) {
    char *text = json_print_and_delete(json);
    if (!text) return;
    channel_write(j->ch, "data: ", 6);
    channel_write_str(j->ch, text);
    channel_write(j->ch, "\n\n", 2);
    free(text);
}

static void send_done(job *j) {
    if (j->req.api != API_LLAMA) channel_write_str(j->ch, "data: [DONE]\n\n");
}

/* return_progress: a chunk before the prompt's first decode and after
 * each (the session calls it from sm_session_set_tokens). */
static void on_prompt_progress(int32_t total, int32_t cached, int32_t processed, void *user_data) {
    job *j = user_data;
    double elapsed = processed > cached ? now_ms() - j->t_prompt_start : 0.0;
    send_json(j, response_progress_chunk(j, total, cached, processed, elapsed));
}

/* A conversation with tools: the settled text parsed as it grows (llama.cpp's
 * partial parser holds a half-written call back), its content and its calls'
 * names and argument pieces sent as OpenAI deltas; the events, when asked
 * for, ride on the first chunk or go alone. */
static void stream_tool_deltas(job *j, const char *answer, size_t end, bool partial, cJSON *events) {
    tracker *t = &j->tr;
    cJSON *deltas = NULL;
    if (end > t->sent || !partial) {
        char *text = strndup(answer ? answer : "", end);
        sm_error e = {0};
        char *json = text ? sm_tool_prompt_deltas(j->tools, text, partial, &e) : NULL;
        deltas = json ? cJSON_Parse(json) : NULL;
        free(json);
        free(text);
        t->sent = end;
    }
    cJSON *delta = deltas ? deltas->child : NULL;
    if (!delta && events) send_json(j, response_delta_chunk(j, NULL, events));
    while (delta) {
        cJSON *next = delta->next;
        send_json(j, response_delta_chunk(j, cJSON_DetachItemViaPointer(deltas, delta), events));
        events = NULL;
        delta = next;
    }
    cJSON_Delete(deltas);
}

/* Sends whatever text has settled, with the event when the client asked
 * for the library's events. */
static void stream_progress(job *j, const sm_event *e) {
    tracker *t = &j->tr;
    size_t end = tracker_settled_end(t);
    int32_t tok_to = tracker_tokens_before(t, end);
    cJSON *events = NULL;
    if (j->req.live_events) {
        events = cJSON_CreateArray();
        cJSON_AddItemToArray(events, response_event(j, e));
    }
    if (!events && end == t->sent && tok_to == t->sent_tokens) return;
    if (j->tools) {
        stream_tool_deltas(j, t->text, end, true, events);
        return;
    }
    cJSON *chunk = response_chunk(j, t->text + t->sent, end - t->sent, t->sent_tokens, tok_to, events);
    t->sent = end;
    t->sent_tokens = tok_to;
    send_json(j, chunk);
}

/* A non-streamed request's client that closed its connection wants no
 * answer: looked at every 50 ms, as a peek that consumes nothing. */
static bool client_went_away(job *j) {
    if (j->client_fd < 0 || j->client_gone) return j->client_gone;
    double now = now_ms();
    if (now < j->next_client_check) return false;
    j->next_client_check = now + 50.0;
    char c;
    ssize_t n = recv(j->client_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    j->client_gone = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    if (j->client_gone) atomic_fetch_add(&j->srv->n_cancelled, 1);
    return j->client_gone;
}

static bool on_event(const sm_event *e, void *user_data) {
    job *j = user_data;
    tracker_settle(&j->tr, e);
    switch (e->type) {
    case SM_EVENT_START:
        j->n_prompt = sm_session_n_past(j->session);
        /* for __verbose, and the prompt a /completion answer shows (not a stream's) */
        if ((job_verbose(j) || (j->req.api == API_LLAMA && !j->ch)) && !j->verbose_prompt) {
            int32_t n = 0;
            const sm_token *toks = sm_session_tokens(j->session, &n);
            j->verbose_prompt = sm_detokenize_special(sm_session_model(j->session), toks, n, NULL, NULL);
        }
        break;
    case SM_EVENT_TOKEN:
        if (!tracker_add(&j->tr, e)) j->out_of_memory = true;
        break;
    case SM_EVENT_RETRACTION:
    case SM_EVENT_BACKTRACK:
        tracker_remove_from(&j->tr, e->token_index);
        break;
    default:
        break;
    }
    if (j->ch && e->type != SM_EVENT_START && e->type != SM_EVENT_DONE) stream_progress(j, e);
    bool cancelled = (j->ch && channel_cancelled(j->ch)) || atomic_load(&j->srv->stopping) || client_went_away(j);
    return !cancelled && !j->out_of_memory;
}

/* ------------------------------------------------------------------ */
/* Generation in a slot                                                */
/* ------------------------------------------------------------------ */

/* Keeps the longest prefix of the prompt the slot's context already holds
 * and decodes the rest. */
static sm_status feed_prompt(job *j) {
    if (!j->req.cache_prompt) { /* cache_prompt: false decodes the whole prompt again */
        sm_status st = sm_session_clear(j->session);
        if (st != SM_OK) return st;
    }
    return sm_session_set_tokens(j->session, j->prompt_tokens, j->n_prompt_tokens, &j->n_cached);
}

static sm_status run_chat(job *j, sm_result *res, char *why, size_t why_size) {
    sm_chat *chat = slot_chat(&j->srv->slots, j->slot, j->req.target, j->req.has_system, why, why_size);
    if (!chat) return SM_ERR_CONTEXT;
    int32_t n_before = sm_session_n_past(j->session);
    const sm_chat_message *last = &j->req.messages[j->req.n_messages - 1];
    sm_status st = sm_chat_set_template_kwargs(chat, j->req.template_kwargs);
    if (st == SM_OK) st = sm_chat_set_history(chat, j->req.messages, j->req.n_messages - 1);
    double t0 = now_ms();
    if (st == SM_OK) st = sm_chat_turn_prefilled(chat, last->content, j->req.prefill, &j->req.params, res);
    if (st != SM_OK) {
        snprintf(why, why_size, "%s", sm_chat_last_error(chat));
        return st;
    }
    sm_chat_turn_info info = sm_chat_last_turn_info(chat);
    j->n_cached = info.n_reused < n_before ? info.n_reused : n_before;
    j->t_prompt_ms = now_ms() - t0 - res->t_generate_ms;
    return SM_OK;
}

static sm_status run_completion(job *j, sm_result *res, char *why, size_t why_size) {
    double t0 = now_ms();
    sm_session_set_prompt_time_limit(j->session, j->req.t_max_prompt_ms);
    sm_status st = feed_prompt(j);
    sm_session_set_prompt_time_limit(j->session, 0);
    j->t_prompt_ms = now_ms() - t0;
    if (st == SM_ERR_CANCELLED && j->req.t_max_prompt_ms > 0) {
        /* t_max_prompt_ms passed: an answer with nothing in it, the decoded
         * part of the prompt cached for the next request to go on from */
        memset(res, 0, sizeof *res);
        res->stop_reason = SM_STOP_TIME_LIMIT;
        j->n_prompt = sm_session_n_past(j->session); /* what was evaluated */
        res->text = calloc(1, 1);
        return res->text ? SM_OK : SM_ERR_NO_MEMORY;
    }
    if (st == SM_OK) st = sm_session_generate(j->session, NULL, &j->req.params, res);
    if (st != SM_OK) snprintf(why, why_size, "%s", sm_session_last_error(j->session));
    return st;
}

static void error_from_status(sm_status st, const char *why, api_error *err) {
    unsigned status = st == SM_ERR_INVALID_ARGUMENT || st == SM_ERR_PROMPT_TOO_LONG ? 400 : 500;
    api_fail(err, status, NULL, "%s", why && *why ? why : sm_status_name(st));
    if (st == SM_ERR_PROMPT_TOO_LONG) err->code = "context_length_exceeded";
}

/* The chat's messages as slots remember them; with room for the answer. */
static uint64_t *chat_hashes(const gen_request *r) {
    uint64_t *h = malloc(sizeof *h * (size_t)(r->n_messages + 1));
    for (int i = 0; h && i < r->n_messages; i++) h[i] = message_hash(r->messages[i].role, r->messages[i].content);
    return h;
}

static slot *acquire_slot(job *j, uint64_t *hashes) {
    slot_pool *pool = &j->srv->slots;
    if (j->req.id_slot >= 0) return slot_acquire_index(pool, j->req.target, j->req.id_slot);
    if (j->req.api == API_CHAT && hashes) return slot_acquire_for_chat(pool, j->req.target, hashes, j->req.n_messages);
    return slot_acquire(pool, j->req.target, j->prompt_tokens, j->n_prompt_tokens);
}

/* Generates in a slot; the slot is released before returning. */
static bool generate_in_slot(job *j, sm_result *res, api_error *err) {
    server *srv = j->srv;
    uint64_t *hashes = j->req.api == API_CHAT && !j->req.tool_mode ? chat_hashes(&j->req) : NULL;
    j->slot = acquire_slot(j, hashes);
    char why[512] = "";
    j->session = slot_session(&srv->slots, j->slot, j->req.target, why, sizeof why);
    sm_status st = j->session ? SM_OK : SM_ERR_CONTEXT;
    if (st == SM_OK) {
        j->tr.hold_back = j->ch != NULL; /* a stream never sends what a rewind could take back */
        j->req.params.on_event = on_event;
        j->req.params.user_data = j;
        bool progress = j->ch && j->req.return_progress;
        if (progress) sm_session_set_prompt_progress(j->session, on_prompt_progress, j);
        j->t_prompt_start = now_ms();
        st = j->req.api == API_CHAT && !j->req.tool_mode ? run_chat(j, res, why, sizeof why)
                                                         : run_completion(j, res, why, sizeof why);
        if (progress) sm_session_set_prompt_progress(j->session, NULL, NULL);
    }
    if (hashes) { /* the conversation the next turn will send back */
        bool ok = st == SM_OK && res->text;
        char *whole = NULL; /* a prefilled answer is the prefill and what followed */
        if (ok && j->req.prefill) {
            size_t n = strlen(j->req.prefill) + res->text_len + 1;
            whole = malloc(n);
            if (whole) snprintf(whole, n, "%s%s", j->req.prefill, res->text);
            else ok = false;
        }
        if (ok) hashes[j->req.n_messages] = message_hash("assistant", whole ? whole : res->text);
        free(whole);
        slot_set_chat_messages(j->slot, j->req.target, hashes, ok ? j->req.n_messages + 1 : 0);
        free(hashes);
    } else {
        slot_set_chat_messages(j->slot, j->req.target, NULL, 0); /* the context is no conversation now */
    }
    slot_release(&srv->slots, j->slot);
    if (st == SM_OK) { /* llama-server's counters for /metrics */
        pthread_mutex_lock(&srv->metrics_mutex);
        double decoded = j->n_prompt - j->n_cached;
        srv->metrics.prompt_tokens += decoded;
        srv->metrics.prompt_cached += j->n_cached;
        srv->metrics.prompt_seconds += j->t_prompt_ms / 1e3;
        srv->metrics.predicted_tokens += res->n_tokens;
        srv->metrics.predicted_seconds += res->t_generate_ms / 1e3;
        if (j->n_prompt + res->n_tokens > srv->metrics.n_tokens_max) srv->metrics.n_tokens_max = j->n_prompt + res->n_tokens;
        srv->metrics.last_prompt_rate = j->t_prompt_ms > 0 ? decoded * 1e3 / j->t_prompt_ms : 0;
        srv->metrics.last_predicted_rate = res->t_generate_ms > 0 ? res->n_tokens * 1e3 / res->t_generate_ms : 0;
        pthread_mutex_unlock(&srv->metrics_mutex);
    }
    if (st == SM_OK && j->out_of_memory) {
        st = SM_ERR_NO_MEMORY;
        snprintf(why, sizeof why, "out of memory recording the tokens");
    }
    if (st != SM_OK) {
        error_from_status(st, why, err);
        return false;
    }
    return true;
}

bool generation_validate(server *srv, gen_request *req, api_error *err) {
    job *j = job_new(srv, req, err);
    if (!j) return false;
    job_free(j);
    return true;
}

bool generation_run(server *srv, gen_request *req, int client_fd, cJSON **response, api_error *err) {
    job *j = job_new(srv, req, err);
    if (!j) return false;
    j->client_fd = client_fd;
    sm_result res = {0};
    bool ok = generate_in_slot(j, &res, err);
    if (ok) *response = response_complete(j, &res);
    sm_result_free(&res);
    job_free(j);
    return ok;
}

/* Usage over every answer of a stream: the prompts' tokens (each prompt
 * once) and all the answers' tokens. */
typedef struct stream_usage {
    double prompt, completion, cached;
} stream_usage;

/* The rest of one answer's stream once its generation has ended. */
static void finish_answer(job *j, const sm_result *res) {
    tracker *t = &j->tr;
    if (j->tools && j->req.api == API_CHAT) { /* the rest of the deltas, then how it ended */
        stream_tool_deltas(j, res->text, res->text_len, false, NULL);
        send_json(j, response_final_chunk(j, res, res->text, res->text_len, t->sent_tokens, t->sent_tokens));
        return;
    }
    size_t sent = t->sent <= res->text_len ? t->sent : res->text_len;
    int32_t tok_to = tracker_tokens_touching(t, res->text_len);
    send_json(j, response_final_chunk(j, res, res->text + sent, res->text_len - sent, t->sent_tokens, tok_to));
}

static void send_usage(job *j, const sm_result *res, const stream_usage *u) {
    cJSON *chunk = response_usage_chunk(j, res);
    cJSON *usage = cJSON_GetObjectItemCaseSensitive(chunk, "usage");
    cJSON_ReplaceItemInObjectCaseSensitive(usage, "prompt_tokens", cJSON_CreateNumber(u->prompt));
    cJSON_ReplaceItemInObjectCaseSensitive(usage, "completion_tokens", cJSON_CreateNumber(u->completion));
    cJSON_ReplaceItemInObjectCaseSensitive(usage, "total_tokens", cJSON_CreateNumber(u->prompt + u->completion));
    send_json(j, chunk);
}

static void *stream_worker(void *arg) {
    job *first = arg;
    server *srv = first->srv;
    channel *ch = first->ch;
    stream_usage u = {0};
    bool go_on = true, closed = false;
    for (job *j = first, *next; j; j = next) {
        next = j->next;
        sm_result res = {0};
        api_error err = {0};
        bool last = next == NULL;
        if (go_on && j->req.api == API_CHAT) send_json(j, response_role_chunk(j));
        if (!go_on) {
            /* an earlier answer failed or was cancelled: the rest is dropped */
        } else if (generate_in_slot(j, &res, &err)) {
            if (res.stop_reason != SM_STOP_CANCELLED) {
                finish_answer(j, &res);
                if (j->new_prompt) u.prompt += j->n_prompt;
                u.completion += res.n_tokens;
                if (last && j->req.include_usage && j->req.api != API_LLAMA) send_usage(j, &res, &u);
                if (last) send_done(j);
            } else {
                atomic_fetch_add(&srv->n_cancelled, 1);
                go_on = false;
            }
        } else {
            send_json(j, json_error_object(err.message, err.type, err.param, err.code));
            send_done(j);
            go_on = false;
        }
        sm_result_free(&res);
        if ((last || !go_on) && !closed) {
            channel_close(ch);
            closed = true;
        }
        j->ch = NULL;
        job_free(j);
    }
    pthread_mutex_lock(&srv->workers_mutex);
    if (--srv->n_workers == 0) pthread_cond_broadcast(&srv->workers_done);
    pthread_mutex_unlock(&srv->workers_mutex);
    return NULL;
}

static void free_chain(job *j) {
    while (j) {
        job *next = j->next;
        job_free(j);
        j = next;
    }
}

bool generation_start_stream_many(server *srv, gen_request *reqs, int n, int n_per_prompt, channel **out,
                                  api_error *err) {
    /* Every answer's request is checked before the stream answers 200. */
    job *first = NULL, **tail = &first;
    for (int i = 0; i < n; i++) {
        job *j = job_new(srv, &reqs[i], err);
        if (!j) {
            for (int k = i + 1; k < n; k++) gen_request_free(&reqs[k]);
            free_chain(first);
            return false;
        }
        j->choice_index = i;
        j->new_prompt = i % n_per_prompt == 0;
        *tail = j;
        tail = &j->next;
    }
    channel *ch = channel_new(&srv->stopping);
    if (!ch) {
        free_chain(first);
        return api_fail(err, 500, NULL, "out of memory");
    }
    for (job *j = first; j; j = j->next) { /* one completion: one id, one creation time */
        j->ch = ch;
        memcpy(j->id, first->id, sizeof j->id);
        j->created = first->created;
    }
    pthread_mutex_lock(&srv->workers_mutex);
    srv->n_workers++;
    pthread_mutex_unlock(&srv->workers_mutex);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, stream_worker, first);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        pthread_mutex_lock(&srv->workers_mutex);
        srv->n_workers--;
        pthread_mutex_unlock(&srv->workers_mutex);
        channel_close(ch);
        channel_consumer_done(ch);
        for (job *j = first; j; j = j->next) j->ch = NULL;
        free_chain(first);
        return api_fail(err, 503, NULL, "cannot start a thread for the stream");
    }
    *out = ch;
    return true;
}

bool generation_start_stream(server *srv, gen_request *req, channel **out, api_error *err) {
    return generation_start_stream_many(srv, req, 1, 1, out, err);
}
