/*
 * Slots: the server generates for at most N requests at once, each in a
 * slot with its own sessions over the shared models. With batching (the
 * default) a slot's session is one sequence of a batch per target: one
 * llama context per model for all slots, the slots' decodes gathered into
 * one llama_decode (continuous batching); without, each session has
 * contexts of its own.
 * Other requests wait for a free slot. A slot keeps its KV cache between
 * requests, and a request goes to the free slot whose cache shares the
 * longest prefix with its prompt.
 */
#ifndef SERVER_SLOTS_H
#define SERVER_SLOTS_H

#include "server/models.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct slot {
    int index;
    bool busy;
    uint64_t last_used;
    /* per target, made when first needed */
    sm_session *sessions[1 + SM_MAX_MODELS];
    sm_chat *chats[1 + SM_MAX_MODELS];
    bool chat_has_system[1 + SM_MAX_MODELS];
    uint64_t *chat_seen[1 + SM_MAX_MODELS]; /* hashes of the messages its chat holds */
    int n_chat_seen[1 + SM_MAX_MODELS];
    sm_tree *trees[1 + SM_MAX_MODELS];
    char *tree_prefix[1 + SM_MAX_MODELS];   /* what the tree last expanded */
} slot;

typedef struct slot_pool {
    pthread_mutex_t mutex;
    pthread_cond_t freed;
    slot *slots;
    int n_slots;
    int n_waiting;
    uint64_t clock;
    const model_set *models;
    sm_session_params session_params;
    sm_chat_params chat_params;
    int32_t tree_max_beams;
    bool batched;                            /* sessions share a batch per target */
    bool kv_unified;                         /* ... whose cells are one pool      */
    int32_t batch_threads;                   /* its decode threads              */
    sm_batch *batches[1 + SM_MAX_MODELS];    /* per target, made on first use   */
} slot_pool;

bool slot_pool_init(slot_pool *pool, int n_slots, const model_set *models, const sm_session_params *sp,
                    const sm_chat_params *cp, int32_t tree_max_beams);
void slot_pool_free(slot_pool *pool);

/* Waits for a free slot; prefers the one whose target session holds the
 * longest prefix of `prompt` (may be NULL), then the least recently used. */
slot *slot_acquire(slot_pool *pool, int target, const sm_token *prompt, int32_t n_prompt);
/* The same for one slot, by index (llama-server's id_slot): waits for it. */
slot *slot_acquire_index(slot_pool *pool, int target, int index);
/* The same for the tree search: prefers the slot whose tree last expanded
 * the longest prefix of `prefix`. */
slot *slot_acquire_for_tree(slot_pool *pool, int target, const char *prefix);
/* The same for a chat: prefers the slot whose conversation shares the
 * most leading messages (as message_hash values). */
slot *slot_acquire_for_chat(slot_pool *pool, int target, const uint64_t *messages, int n_messages);
uint64_t message_hash(const char *role, const char *content);
/* Remembers the conversation the slot's chat holds now. */
void slot_set_chat_messages(slot *s, int target, const uint64_t *messages, int n_messages);
void slot_release(slot_pool *pool, slot *s);
void slot_pool_counts(slot_pool *pool, int *n_busy, int *n_waiting);

/* The slot's session (and chat) for a target, made on first use. */
sm_session *slot_session(slot_pool *pool, slot *s, int target, char *err, size_t err_size);
sm_chat *slot_chat(slot_pool *pool, slot *s, int target, bool with_system, char *err, size_t err_size);
/* The pool's chat settings with a request's template kwargs (NULL: none). */
sm_chat_params slot_pool_chat_params(const slot_pool *pool, const char *template_kwargs);
sm_tree *slot_tree(slot_pool *pool, slot *s, int target, char *err, size_t err_size);
/* Remembers what the slot's tree holds now (NULL: unknown). */
void slot_set_tree_prefix(slot *s, int target, const char *prefix);

#endif
