/*
 * The models a server holds, loaded once and shared by every slot, and the
 * model ids requests name. Target 0 is every model together (fused when
 * there are several); with several models, target 1 + i is model i alone.
 */
#ifndef SERVER_MODELS_H
#define SERVER_MODELS_H

#include "selfmod.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct piece_table {
    char *bytes;        /* every token's text, back to back */
    size_t *offsets;    /* n_vocab + 1 */
    int32_t n_vocab;
} piece_table;

typedef struct served_model {
    sm_model *model;
    char id[128];
    piece_table pieces;
} served_model;

enum { MODEL_MAX_NAMES = 16 };

typedef struct model_set {
    served_model models[SM_MAX_MODELS];
    int n_models;
    char default_id[512];
    long created;       /* load time, for /v1/models */
    /* --alias A,B,...: names of target 0 (default_id is the first in
     * byte order, as llama-server's); --tags: labels /v1/models reports */
    char *aliases[MODEL_MAX_NAMES];
    int n_aliases;
    char *tags[MODEL_MAX_NAMES];
    int n_tags;
} model_set;

/* Splits a comma-separated list into names (copied, sorted, duplicates
 * and empty ones dropped). false with err set: too many, or out of memory. */
bool model_names_parse(const char *list, char **names, int *n, const char *flag, char *err, size_t err_size);

/* Loads every path; on failure writes why to err and frees what loaded. */
bool model_set_load(model_set *set, char *const *paths, int n_paths, const char *alias, const char *tags,
                    const sm_model_params *mp, char *err, size_t err_size);
void model_set_free(model_set *set);

int model_set_n_targets(const model_set *set);
/* The target a request's "model" names (NULL or "" = the default), or -1. */
int model_set_resolve(const model_set *set, const char *name);
const char *model_set_target_id(const model_set *set, int target);
/* The models of a target; returns how many. */
int model_set_target_models(const model_set *set, int target, sm_model **out);
/* Whose tokenizer and vocabulary the target's tokens use. */
const served_model *model_set_target_vocab(const model_set *set, int target);

/* A token's text (special tokens: empty) and its length. */
const char *piece_of(const served_model *m, sm_token token, size_t *len);

#endif
