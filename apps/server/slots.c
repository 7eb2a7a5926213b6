#include "server/slots.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool slot_pool_init(slot_pool *pool, int n_slots, const model_set *models, const sm_session_params *sp,
                    const sm_chat_params *cp, int32_t tree_max_beams) {
    memset(pool, 0, sizeof *pool);
    pool->slots = calloc((size_t)n_slots, sizeof *pool->slots);
    if (!pool->slots) return false;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->freed, NULL);
    pool->n_slots = n_slots;
    for (int i = 0; i < n_slots; i++) pool->slots[i].index = i;
    pool->models = models;
    pool->session_params = *sp;
    pool->chat_params = *cp;
    pool->tree_max_beams = tree_max_beams;
    return true;
}

void slot_pool_free(slot_pool *pool) {
    if (!pool->slots) return;
    for (int i = 0; i < pool->n_slots; i++) {
        for (int t = 0; t < 1 + SM_MAX_MODELS; t++) {
            sm_chat_free(pool->slots[i].chats[t]);
            sm_session_free(pool->slots[i].sessions[t]);
            sm_tree_free(pool->slots[i].trees[t]);
            free(pool->slots[i].tree_prefix[t]);
            free(pool->slots[i].chat_seen[t]);
        }
    }
    for (int t = 0; t < 1 + SM_MAX_MODELS; t++) sm_batch_free(pool->batches[t]); /* after their sessions */
    free(pool->slots);
    pool->slots = NULL;
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->freed);
}

static int32_t common_prefix(const slot *s, int target, const sm_token *prompt, int32_t n_prompt) {
    const sm_session *session = s->sessions[target];
    if (!session || !prompt) return 0;
    int32_t n_held = 0;
    const sm_token *held = sm_session_tokens(session, &n_held);
    int32_t n = 0;
    while (n < n_held && n < n_prompt && held[n] == prompt[n]) n++;
    return n;
}

static int32_t common_text_prefix(const slot *s, int target, const char *prefix) {
    const char *held = s->tree_prefix[target];
    if (!held || !prefix) return 0;
    int32_t n = 0;
    while (held[n] && held[n] == prefix[n]) n++;
    return n;
}

static int32_t common_messages(const slot *s, int target, const uint64_t *messages, int n) {
    int32_t k = 0;
    while (k < n && k < s->n_chat_seen[target] && s->chat_seen[target][k] == messages[k]) k++;
    return k;
}

/* What a request would like the slot to hold: a prompt's tokens, a tree's
 * prefix text, or a chat's messages. */
typedef struct slot_wish {
    int target;
    const sm_token *prompt;
    int32_t n_prompt;
    const char *tree_prefix;
    const uint64_t *messages;
    int n_messages;
    int only;                 /* that slot's index, or -1 for any */
} slot_wish;

static int32_t affinity(const slot *s, const slot_wish *w) {
    if (w->tree_prefix) return common_text_prefix(s, w->target, w->tree_prefix);
    if (w->messages) return common_messages(s, w->target, w->messages, w->n_messages);
    return common_prefix(s, w->target, w->prompt, w->n_prompt);
}

static slot *best_free_slot(slot_pool *pool, const slot_wish *w) {
    slot *best = NULL;
    int32_t best_common = -1;
    for (int i = 0; i < pool->n_slots; i++) {
        slot *s = &pool->slots[i];
        if (s->busy || (w->only >= 0 && s->index != w->only)) continue;
        int32_t common = affinity(s, w);
        if (common > best_common || (common == best_common && s->last_used < best->last_used)) {
            best = s;
            best_common = common;
        }
    }
    return best;
}

static slot *acquire(slot_pool *pool, const slot_wish *w) {
    pthread_mutex_lock(&pool->mutex);
    pool->n_waiting++;
    slot *s;
    while ((s = best_free_slot(pool, w)) == NULL) pthread_cond_wait(&pool->freed, &pool->mutex);
    pool->n_waiting--;
    s->busy = true;
    s->last_used = ++pool->clock;
    pthread_mutex_unlock(&pool->mutex);
    return s;
}

slot *slot_acquire(slot_pool *pool, int target, const sm_token *prompt, int32_t n_prompt) {
    slot_wish w = {.target = target, .prompt = prompt, .n_prompt = n_prompt, .only = -1};
    return acquire(pool, &w);
}

slot *slot_acquire_index(slot_pool *pool, int target, int index) {
    slot_wish w = {.target = target, .only = index};
    return acquire(pool, &w);
}

slot *slot_acquire_for_tree(slot_pool *pool, int target, const char *prefix) {
    slot_wish w = {.target = target, .tree_prefix = prefix ? prefix : "", .only = -1};
    return acquire(pool, &w);
}

slot *slot_acquire_for_chat(slot_pool *pool, int target, const uint64_t *messages, int n_messages) {
    slot_wish w = {.target = target, .messages = messages, .n_messages = n_messages, .only = -1};
    return acquire(pool, &w);
}

/* FNV-1a over the role, a separator and the content. */
uint64_t message_hash(const char *role, const char *content) {
    uint64_t h = 1469598103934665603ULL;
    for (const char *c = role; *c; c++) h = (h ^ (uint8_t)*c) * 1099511628211ULL;
    h = (h ^ 0xffu) * 1099511628211ULL;
    for (const char *c = content; *c; c++) h = (h ^ (uint8_t)*c) * 1099511628211ULL;
    return h;
}

void slot_set_chat_messages(slot *s, int target, const uint64_t *messages, int n_messages) {
    uint64_t *copy = n_messages > 0 ? malloc(sizeof *copy * (size_t)n_messages) : NULL;
    if (copy) memcpy(copy, messages, sizeof *copy * (size_t)n_messages);
    free(s->chat_seen[target]);
    s->chat_seen[target] = copy;
    s->n_chat_seen[target] = copy ? n_messages : 0;
}

void slot_release(slot_pool *pool, slot *s) {
    pthread_mutex_lock(&pool->mutex);
    s->busy = false;
    pthread_cond_signal(&pool->freed);
    pthread_mutex_unlock(&pool->mutex);
}

void slot_pool_counts(slot_pool *pool, int *n_busy, int *n_waiting) {
    pthread_mutex_lock(&pool->mutex);
    int busy = 0;
    for (int i = 0; i < pool->n_slots; i++) busy += pool->slots[i].busy;
    *n_busy = busy;
    *n_waiting = pool->n_waiting;
    pthread_mutex_unlock(&pool->mutex);
}

/* The target's batch, made on first use (NULL with e set if it cannot be). */
static sm_batch *target_batch(slot_pool *pool, int target, sm_model *const *models, int n, sm_error *e) {
    pthread_mutex_lock(&pool->mutex);
    if (!pool->batches[target]) {
        sm_batch_params bp = sm_batch_default_params();
        bp.n_seq = pool->n_slots;
        bp.n_ctx_seq = pool->session_params.n_ctx;
        bp.n_batch = pool->session_params.n_batch;
        bp.kv_unified = pool->kv_unified;
        bp.n_threads = pool->batch_threads;
        /* every model set's batch decodes on the first one's thread */
        for (int t = 0; t < 1 + SM_MAX_MODELS && !bp.share_decoder; t++) bp.share_decoder = pool->batches[t];
        pool->batches[target] = sm_batch_new(models, n, &bp, e);
    }
    sm_batch *batch = pool->batches[target];
    pthread_mutex_unlock(&pool->mutex);
    return batch;
}

sm_session *slot_session(slot_pool *pool, slot *s, int target, char *err, size_t err_size) {
    if (s->sessions[target]) return s->sessions[target];
    sm_model *models[SM_MAX_MODELS];
    int n = model_set_target_models(pool->models, target, models);
    sm_error e = {0};
    sm_session_params sp = pool->session_params;
    if (pool->batched && !(sp.batch = target_batch(pool, target, models, n, &e))) {
        snprintf(err, err_size, "%s", e.message);
        return NULL;
    }
    s->sessions[target] = n == 1 ? sm_session_new(models[0], &sp, &e) : sm_session_new_fused(models, n, &sp, &e);
    if (!s->sessions[target]) snprintf(err, err_size, "%s", e.message);
    return s->sessions[target];
}

/* sm_chat keeps a system prompt until another replaces it: a request
 * without one gets a fresh chat (the KV cache stays in the session). */
sm_chat *slot_chat(slot_pool *pool, slot *s, int target, bool with_system, char *err, size_t err_size) {
    sm_session *session = slot_session(pool, s, target, err, err_size);
    if (!session) return NULL;
    if (s->chats[target] && s->chat_has_system[target] && !with_system) {
        sm_chat_free(s->chats[target]);
        s->chats[target] = NULL;
    }
    if (!s->chats[target]) {
        sm_error e = {0};
        s->chats[target] = sm_chat_new(session, &pool->chat_params, &e);
        if (!s->chats[target]) {
            snprintf(err, err_size, "%s", e.message);
            return NULL;
        }
    }
    s->chat_has_system[target] = with_system;
    return s->chats[target];
}

sm_chat_params slot_pool_chat_params(const slot_pool *pool, const char *template_kwargs) {
    sm_chat_params cp = pool->chat_params;
    cp.template_kwargs = template_kwargs;
    return cp;
}

sm_tree *slot_tree(slot_pool *pool, slot *s, int target, char *err, size_t err_size) {
    if (s->trees[target]) return s->trees[target];
    sm_model *models[SM_MAX_MODELS];
    int n = model_set_target_models(pool->models, target, models);
    sm_error e = {0};
    /* with the slots' batch, the tree decodes on its decoder thread, taking
     * turns with the streams instead of fighting them for the cores */
    sm_batch *batch = pool->batched ? target_batch(pool, target, models, n, &e) : NULL;
    if (pool->batched && !batch) {
        snprintf(err, err_size, "%s", e.message);
        return NULL;
    }
    s->trees[target] = sm_tree_new(models, n, pool->session_params.n_ctx, pool->session_params.n_threads,
                                   pool->tree_max_beams, &e);
    if (!s->trees[target]) snprintf(err, err_size, "%s", e.message);
    else sm_tree_share_decoder(s->trees[target], batch);
    return s->trees[target];
}

void slot_set_tree_prefix(slot *s, int target, const char *prefix) {
    free(s->tree_prefix[target]);
    s->tree_prefix[target] = prefix ? strdup(prefix) : NULL;
}
