/*
 * Hidden states to a NumPy .npy file (format 1.0): a 128-byte header, then
 * float32 rows of n_layers x n_embd, one per kept generated token. Rows are
 * written in place, so a rewind only moves the row count back; the header
 * gets the final shape, and the file its final length, on close.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NPY_HEADER_BYTES 128 /* a multiple of 64, room for any shape */

struct sm_hidden_writer {
    FILE *f;
    char *path;
    int32_t n_layers, n_embd;   /* 0 until the first row arrives          */
    int64_t rows;
    int64_t base;               /* rows before the current generation     */
    bool failed;
    char error[256];
};

static bool little_endian(void) {
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

static bool write_header(sm_hidden_writer *w) {
    char header[NPY_HEADER_BYTES];
    memset(header, ' ', sizeof header);
    memcpy(header, "\x93NUMPY\x01\x00", 8);
    const uint16_t len = NPY_HEADER_BYTES - 10;
    header[8] = (char)(len & 0xff);
    header[9] = (char)(len >> 8);
    char dict[NPY_HEADER_BYTES];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%lld, %d, %d), }",
                     little_endian() ? "<f4" : ">f4", (long long)w->rows, w->n_layers, w->n_embd);
    if (n < 0 || n >= NPY_HEADER_BYTES - 11) return false;
    memcpy(header + 10, dict, (size_t)n);
    header[NPY_HEADER_BYTES - 1] = '\n';
    return fseek(w->f, 0, SEEK_SET) == 0 && fwrite(header, 1, sizeof header, w->f) == sizeof header;
}

sm_hidden_writer *sm_hidden_writer_open(const char *path, sm_error *err) {
    if (!path || !*path) {
        sm_error_set(err, SM_ERR_INVALID_ARGUMENT, "no hidden-state file name given");
        return NULL;
    }
    sm_hidden_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        sm_error_set(err, SM_ERR_NO_MEMORY, "out of memory");
        return NULL;
    }
    w->f = fopen(path, "w+b");
    if (!w->f || !write_header(w)) {
        sm_error_set(err, SM_ERR_IO, "cannot write hidden-state file '%s': %s", path, strerror(errno));
        if (w->f) fclose(w->f);
        free(w->path);
        free(w);
        return NULL;
    }
    return w;
}

static bool fail_writer(sm_hidden_writer *w, const char *what) {
    if (!w->failed) snprintf(w->error, sizeof w->error, "hidden-state file '%s': %s", w->path, what);
    w->failed = true;
    return false;
}

static bool append_row(sm_hidden_writer *w, const sm_event *e) {
    const sm_introspection *in = e->introspection;
    if (!in || !in->hidden) return true; /* nothing kept for this session */
    if (w->n_embd == 0) {
        w->n_layers = in->n_layers;
        w->n_embd = in->n_embd;
    } else if (in->n_layers != w->n_layers || in->n_embd != w->n_embd) {
        return fail_writer(w, "a row of another shape arrived (one file per layer set and model)");
    }
    int64_t row = w->base + e->token_index;
    if (row > w->rows) return fail_writer(w, "a token arrived out of order");
    size_t row_floats = (size_t)w->n_layers * (size_t)w->n_embd;
    long offset = NPY_HEADER_BYTES + (long)(row * (int64_t)row_floats * (int64_t)sizeof(float));
    if (fseek(w->f, offset, SEEK_SET) != 0 || fwrite(in->hidden, sizeof(float), row_floats, w->f) != row_floats)
        return fail_writer(w, strerror(errno));
    w->rows = row + 1;
    return true;
}

bool sm_hidden_writer_on_event(sm_hidden_writer *w, const sm_event *e) {
    if (!w || !e || w->failed) return false;
    switch (e->type) {
    case SM_EVENT_START:
        w->base = w->rows;
        return true;
    case SM_EVENT_TOKEN:
        return append_row(w, e);
    case SM_EVENT_RETRACTION:
    case SM_EVENT_BACKTRACK:
        /* token_index is where generation resumes: the tokens kept */
        if (w->base + e->token_index < w->rows) w->rows = w->base + e->token_index;
        return true;
    default:
        return true;
    }
}

int64_t sm_hidden_writer_rows(const sm_hidden_writer *w) { return w ? w->rows : 0; }

sm_status sm_hidden_writer_close(sm_hidden_writer *w, sm_error *err) {
    if (!w) return SM_OK;
    sm_status st = SM_OK;
    if (w->failed) {
        st = SM_ERR_IO;
        sm_error_set(err, st, "%s", w->error);
    }
    long end = NPY_HEADER_BYTES + (long)(w->rows * (int64_t)w->n_layers * (int64_t)w->n_embd * (int64_t)sizeof(float));
    if (!write_header(w) || fflush(w->f) != 0 || ftruncate(fileno(w->f), end) != 0) {
        if (st == SM_OK) sm_error_set(err, SM_ERR_IO, "cannot finish hidden-state file '%s': %s", w->path, strerror(errno));
        st = SM_ERR_IO;
    }
    if (fclose(w->f) != 0 && st == SM_OK) {
        st = SM_ERR_IO;
        sm_error_set(err, st, "cannot close hidden-state file '%s': %s", w->path, strerror(errno));
    }
    free(w->path);
    free(w);
    return st;
}
