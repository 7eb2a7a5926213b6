#include "server/models.h"

#include <llama.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* "dir/name.gguf" -> "name" */
static void id_from_path(const char *path, char *id, size_t size) {
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t len = strlen(base);
    if (len > 5 && strcmp(base + len - 5, ".gguf") == 0) len -= 5;
    snprintf(id, size, "%.*s", (int)len, base);
}

static bool build_pieces(served_model *m) {
    int32_t n = sm_model_n_vocab(m->model);
    piece_table *t = &m->pieces;
    t->n_vocab = n;
    t->offsets = malloc(sizeof *t->offsets * ((size_t)n + 1));
    size_t cap = (size_t)n * 8 + 64, len = 0;
    t->bytes = malloc(cap);
    if (!t->offsets || !t->bytes) return false;
    char buf[256];
    for (int32_t tok = 0; tok < n; tok++) {
        int32_t k = sm_token_to_piece(m->model, tok, buf, sizeof buf, false); /* 0: a piece over 255 bytes */
        if (len + (size_t)k > cap) {
            while (len + (size_t)k > cap) cap *= 2;
            char *b = realloc(t->bytes, cap);
            if (!b) return false;
            t->bytes = b;
        }
        t->offsets[tok] = len;
        memcpy(t->bytes + len, buf, (size_t)k);
        len += (size_t)k;
    }
    t->offsets[n] = len;
    return true;
}

const char *piece_of(const served_model *m, sm_token token, size_t *len) {
    const piece_table *t = &m->pieces;
    if (token < 0 || token >= t->n_vocab) {
        *len = 0;
        return "";
    }
    *len = t->offsets[token + 1] - t->offsets[token];
    return t->bytes + t->offsets[token];
}

static int by_bytes(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

bool model_names_parse(const char *list, char **names, int *n, const char *flag, char *err, size_t err_size) {
    *n = 0;
    for (const char *p = list; p && *p;) {
        size_t len = strcspn(p, ",");
        if (len > 0) {
            if (*n == MODEL_MAX_NAMES) {
                snprintf(err, err_size, "%s: more than %d names", flag, MODEL_MAX_NAMES);
                return false;
            }
            if (!(names[*n] = strndup(p, len))) {
                snprintf(err, err_size, "out of memory");
                return false;
            }
            (*n)++;
        }
        p += len + (p[len] == ',');
    }
    qsort(names, (size_t)*n, sizeof *names, by_bytes);
    int kept = 0;
    for (int i = 0; i < *n; i++) {
        if (kept > 0 && strcmp(names[kept - 1], names[i]) == 0) free(names[i]);
        else names[kept++] = names[i];
    }
    *n = kept;
    return true;
}

static void set_default_id(model_set *set) {
    if (set->n_aliases > 0) {
        snprintf(set->default_id, sizeof set->default_id, "%s", set->aliases[0]);
        return;
    }
    size_t len = 0;
    set->default_id[0] = '\0';
    for (int i = 0; i < set->n_models; i++) {
        int n = snprintf(set->default_id + len, sizeof set->default_id - len, "%s%s", i ? "+" : "",
                         set->models[i].id);
        if (n < 0 || (size_t)n >= sizeof set->default_id - len) break;
        len += (size_t)n;
    }
}

bool model_set_load(model_set *set, char *const *paths, int n_paths, const char *alias, const char *tags,
                    const sm_model_params *mp, char *err, size_t err_size) {
    memset(set, 0, sizeof *set);
    if (!model_names_parse(alias, set->aliases, &set->n_aliases, "--alias", err, err_size) ||
        !model_names_parse(tags, set->tags, &set->n_tags, "--tags", err, err_size)) {
        model_set_free(set);
        return false;
    }
    for (int i = 0; i < n_paths; i++) {
        sm_error e = {0};
        served_model *m = &set->models[i];
        m->model = sm_model_load(paths[i], mp, &e);
        if (!m->model) {
            snprintf(err, err_size, "%s", e.message);
            model_set_free(set);
            return false;
        }
        set->n_models++;
        id_from_path(paths[i], m->id, sizeof m->id);
        if (!build_pieces(m)) {
            snprintf(err, err_size, "out of memory reading the vocabulary of '%s'", paths[i]);
            model_set_free(set);
            return false;
        }
    }
    set_default_id(set);
    set->created = (long)time(NULL);
    return true;
}

void model_set_free(model_set *set) {
    for (int i = 0; i < set->n_models; i++) {
        sm_model_free(set->models[i].model);
        free(set->models[i].pieces.bytes);
        free(set->models[i].pieces.offsets);
    }
    set->n_models = 0;
    for (int i = 0; i < set->n_aliases; i++) free(set->aliases[i]);
    for (int i = 0; i < set->n_tags; i++) free(set->tags[i]);
    set->n_aliases = set->n_tags = 0;
}

int model_set_n_targets(const model_set *set) { return set->n_models > 1 ? 1 + set->n_models : 1; }

int model_set_resolve(const model_set *set, const char *name) {
    if (!name || !*name || strcmp(name, set->default_id) == 0) return 0;
    for (int i = 0; i < set->n_aliases; i++)
        if (strcmp(name, set->aliases[i]) == 0) return 0;
    /* One model: as llama-server, it answers whatever name a client sends
     * (many send "gpt-3.5-turbo"); the response's "model" says which it is. */
    if (set->n_models == 1) return 0;
    for (int i = 0; i < set->n_models; i++)
        if (strcmp(name, set->models[i].id) == 0) return 1 + i;
    return -1;
}

const char *model_set_target_id(const model_set *set, int target) {
    return target == 0 ? set->default_id : set->models[target - 1].id;
}

int model_set_target_models(const model_set *set, int target, sm_model **out) {
    if (target > 0) {
        out[0] = set->models[target - 1].model;
        return 1;
    }
    for (int i = 0; i < set->n_models; i++) out[i] = set->models[i].model;
    return set->n_models;
}

const served_model *model_set_target_vocab(const model_set *set, int target) {
    return target > 0 ? &set->models[target - 1] : &set->models[0];
}
