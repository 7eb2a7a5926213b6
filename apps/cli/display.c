/*
 * Streaming generated text to a terminal, with erasing.
 *
 * The screen position of every byte is recomputed from the start of the
 * generation (the origin, at a line start) by laying the text out the way
 * a terminal with auto-wrap does: a glyph that does not fit wraps to the
 * next row, and a row filled to its last column leaves the cursor there
 * ("pending wrap") until the next glyph. Erasing then is: cursor up to the
 * row where the kept text ends, carriage return, clear to the end of the
 * screen, and print that row's kept part again, which also restores a
 * pending wrap exactly. Tabs are expanded to spaces and control characters
 * are not printed, so that the layout is known for every byte.
 */
#define _XOPEN_SOURCE 700 /* wcwidth */
#include "display.h"

#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wchar.h>

#define TAB_WIDTH 8

static const char replacement_char[] = "\xEF\xBF\xBD"; /* U+FFFD */

void terminal_size(FILE *stream, int *columns, int *rows) {
    struct winsize ws;
    *columns = 80;
    *rows = 24;
    if (ioctl(fileno(stream), TIOCGWINSZ, &ws) == 0) {
        if (ws.ws_col > 0) *columns = ws.ws_col;
        if (ws.ws_row > 0) *rows = ws.ws_row;
    }
}

bool same_terminal(FILE *a, FILE *b) {
    struct stat sa, sb;
    if (!isatty(fileno(a)) || !isatty(fileno(b))) return false;
    if (fstat(fileno(a), &sa) != 0 || fstat(fileno(b), &sb) != 0) return false;
    return sa.st_rdev == sb.st_rdev;
}

/* ------------------------------------------------------------------ */
/* UTF-8                                                               */
/* ------------------------------------------------------------------ */

/* Decodes one character at s. Returns the bytes it spans (at least 1);
 * *valid is false for a byte that starts no well-formed sequence. */
static size_t decode_utf8(const unsigned char *s, size_t n, uint32_t *cp, bool *valid) {
    unsigned char c = s[0];
    *valid = true;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    uint32_t v = len == 4 ? c & 0x07u : len == 3 ? c & 0x0Fu : c & 0x1Fu;
    bool ok = len != 0 && len <= n && c >= 0xC2 && c <= 0xF4;
    for (size_t i = 1; ok && i < len; i++) {
        ok = (s[i] & 0xC0) == 0x80;
        v = (v << 6) | (s[i] & 0x3Fu);
    }
    static const uint32_t min_of_len[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (ok) ok = v >= min_of_len[len] && v <= 0x10FFFF && (v < 0xD800 || v > 0xDFFF);
    if (!ok) {
        *valid = false;
        *cp = 0xFFFD;
        return 1;
    }
    *cp = v;
    return len;
}

/* The length of the longest prefix that does not end inside a UTF-8
 * sequence that later bytes could still complete. */
static size_t complete_prefix(const char *text, size_t len) {
    const unsigned char *s = (const unsigned char *)text;
    size_t start = len;
    for (int back = 0; back < 3 && start > 0 && (s[start - 1] & 0xC0) == 0x80; back++) start--;
    if (start == 0) return len;
    unsigned char lead = s[start - 1];
    if (lead < 0xC2 || lead > 0xF4) return len; /* not a lead byte: nothing to wait for */
    size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
    size_t have = len - (start - 1);
    return have < need ? start - 1 : len;
}

/* ------------------------------------------------------------------ */
/* Layout                                                              */
/* ------------------------------------------------------------------ */

typedef struct cursor {
    int row, col;      /* col == columns: the pending-wrap state        */
    size_t row_start;  /* offset of the first byte shown on this row   */
} cursor;

/* Columns a character takes; -1 for control characters, not printed. */
static int glyph_width(uint32_t cp) {
    if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0)) return -1;
    int w = wcwidth((wchar_t)cp);
    return w < 0 ? 1 : w; /* unknown in this locale: assume narrow */
}

/* Moves to the next row when `width` more columns do not fit. */
static void wrap_if_needed(cursor *c, int width, int columns, size_t offset) {
    if (c->col + width > columns && c->col > 0) {
        c->row++;
        c->col = 0;
        c->row_start = offset;
    }
}

/*
 * Lays out (and when `out` is given, prints) text[from, to) starting at *c.
 * Printing and measuring share this one function so they cannot disagree.
 */
static void lay_out(const char *text, size_t from, size_t to, int columns, cursor *c, FILE *out) {
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = from; i < to;) {
        uint32_t cp;
        bool valid;
        size_t n = decode_utf8(s + i, to - i, &cp, &valid);
        if (cp == '\n') {
            if (out) fputc('\n', out);
            c->row++;
            c->col = 0;
            c->row_start = i + 1;
        } else if (cp == '\t') {
            wrap_if_needed(c, 1, columns, i);
            int spaces = TAB_WIDTH - c->col % TAB_WIDTH;
            if (spaces > columns - c->col) spaces = columns - c->col;
            for (int k = 0; out && k < spaces; k++) fputc(' ', out);
            c->col += spaces;
        } else {
            int width = glyph_width(cp);
            if (width >= 0) {
                wrap_if_needed(c, width, columns, i);
                if (out) {
                    if (valid) fwrite(s + i, 1, n, out);
                    else fputs(replacement_char, out);
                }
                c->col += width;
            }
        }
        i += n;
    }
}

static cursor position_of(const display *d, size_t offset, int columns) {
    cursor c = {0, 0, 0};
    lay_out(d->text, 0, offset, columns, &c, NULL);
    return c;
}

/* Where the shown text ends on screen, measured again only when the
 * terminal width changed. */
static cursor shown_end(display *d, int columns) {
    if (d->end_columns != columns) {
        cursor c = position_of(d, d->n_shown, columns);
        d->end_row = c.row;
        d->end_col = c.col;
        d->end_row_start = c.row_start;
        d->end_columns = columns;
    }
    return (cursor){d->end_row, d->end_col, d->end_row_start};
}

static void set_shown_end(display *d, size_t n_shown, cursor c, int columns) {
    if (c.row > d->max_end_row) d->max_end_row = c.row;
    d->n_shown = n_shown;
    d->end_row = c.row;
    d->end_col = c.col;
    d->end_row_start = c.row_start;
    d->end_columns = columns;
}

/* Prints text[n_shown, upto) after what is on screen. */
static void show_up_to(display *d, size_t upto) {
    if (upto <= d->n_shown) return;
    int columns, rows;
    terminal_size(d->out, &columns, &rows);
    cursor c = shown_end(d, columns);
    lay_out(d->text, d->n_shown, upto, columns, &c, d->out);
    set_shown_end(d, upto, c, columns);
    fflush(d->out);
}

/* Redraws text[0, n) on the current line (the new origin). */
static void redraw_from_origin(display *d, size_t n, int columns) {
    cursor c = {0, 0, 0};
    d->max_end_row = 0;
    lay_out(d->text, 0, n, columns, &c, d->out);
    set_shown_end(d, n, c, columns);
}

/* Moves the cursor from the end of the shown text up `rows_up` rows to
 * the start of that row, and clears everything below. */
static void move_up_and_clear(display *d, int rows_up) {
    if (rows_up > 0) fprintf(d->out, "\033[%dA", rows_up);
    fputs("\r\033[J", d->out);
}

/* Makes the screen show text[0, keep) and nothing after it; keep is at a
 * character start. */
static void erase_back_to(display *d, size_t keep) {
    if (keep >= d->n_shown) return;
    int columns, rows;
    terminal_size(d->out, &columns, &rows);
    cursor target = position_of(d, keep, columns);
    cursor end = shown_end(d, columns);
    int rows_up = end.row - target.row;
    /* When the block grew taller than the screen, its rows above the
     * screen's top are out of reach of the cursor. */
    int top_reachable_row = d->max_end_row - (rows - 1);
    if (target.row < top_reachable_row) {
        /* The kept end scrolled off the screen: start a fresh block. */
        fputs("\n", d->out);
        redraw_from_origin(d, keep, columns);
    } else {
        move_up_and_clear(d, rows_up);
        cursor c = {target.row, 0, target.row_start};
        lay_out(d->text, target.row_start, keep, columns, &c, d->out);
        set_shown_end(d, keep, c, columns);
    }
    fflush(d->out);
}

/* ------------------------------------------------------------------ */

void display_init(display *d, FILE *out, FILE *notes) {
    memset(d, 0, sizeof *d);
    d->out = out;
    d->notes = notes;
    d->notes_share_terminal = same_terminal(out, notes);
}

static void clear_deferred(display *d) {
    for (int32_t i = 0; i < d->n_deferred; i++) free(d->deferred[i]);
    d->n_deferred = 0;
}

void display_free(display *d) {
    clear_deferred(d);
    free(d->deferred);
    free(d->text);
    free(d->token_end);
    memset(d, 0, sizeof *d);
}

void display_begin(display *d) {
    d->len = 0;
    d->n_tokens = 0;
    d->max_end_row = 0;
    set_shown_end(d, 0, (cursor){0, 0, 0}, 0);
    clear_deferred(d);
}

static bool reserve(display *d, size_t bytes, int32_t tokens) {
    if (bytes > d->cap) {
        size_t cap = d->cap ? d->cap : 1024;
        while (cap < bytes) cap *= 2;
        char *t = realloc(d->text, cap);
        if (!t) return false;
        d->text = t;
        d->cap = cap;
    }
    if (tokens > d->cap_tokens) {
        int32_t cap = d->cap_tokens ? d->cap_tokens : 256;
        while (cap < tokens) cap *= 2;
        size_t *e = realloc(d->token_end, sizeof *e * (size_t)cap);
        if (!e) return false;
        d->token_end = e;
        d->cap_tokens = cap;
    }
    return true;
}

void display_keep_tokens(display *d, int32_t n_keep) {
    if (n_keep < 0) n_keep = 0;
    if (n_keep >= d->n_tokens) return;
    d->n_tokens = n_keep;
    d->len = n_keep > 0 ? d->token_end[n_keep - 1] : 0;
    /* Erase to the last character start at or before the kept length. */
    erase_back_to(d, complete_prefix(d->text, d->len));
}

void display_token(display *d, int32_t index, const char *piece) {
    if (index < d->n_tokens) display_keep_tokens(d, index);
    size_t n = strlen(piece);
    if (!reserve(d, d->len + n, d->n_tokens + 1)) return;
    memcpy(d->text + d->len, piece, n);
    d->len += n;
    d->token_end[d->n_tokens++] = d->len;
    show_up_to(d, complete_prefix(d->text, d->len));
}

static void defer_note(display *d, const char *line) {
    if (d->n_deferred == d->cap_deferred) {
        int32_t cap = d->cap_deferred ? d->cap_deferred * 2 : 16;
        char **n = realloc(d->deferred, sizeof *n * (size_t)cap);
        if (!n) return;
        d->deferred = n;
        d->cap_deferred = cap;
    }
    char *copy = strdup(line);
    if (copy) d->deferred[d->n_deferred++] = copy;
}

void display_note(display *d, const char *line) {
    if (!d->notes_share_terminal) {
        fprintf(d->notes, "%s\n", line);
        fflush(d->notes);
        return;
    }
    int columns, rows;
    terminal_size(d->out, &columns, &rows);
    cursor end = shown_end(d, columns);
    if (d->max_end_row + 2 >= rows) {
        /* The block's first row may be off the screen: it cannot be
         * redrawn below the note. */
        defer_note(d, line);
        return;
    }
    /* The note takes the text block's place, and the block moves below. */
    move_up_and_clear(d, end.row);
    fflush(d->out);
    fprintf(d->notes, "%s\n", line);
    fflush(d->notes);
    redraw_from_origin(d, d->n_shown, columns);
    fflush(d->out);
}

void display_finish(display *d, const char *text, size_t len) {
    /* Where the final text first differs from what was shown (a stop
     * string cut off, or a removal not yet redrawn). */
    size_t same = 0;
    while (same < len && same < d->n_shown && text[same] == d->text[same]) same++;
    if (same < d->n_shown) erase_back_to(d, complete_prefix(d->text, same));

    if (reserve(d, len, d->n_tokens)) {
        memcpy(d->text, text, len);
        d->len = len;
    }
    show_up_to(d, d->len); /* an incomplete last character shows as U+FFFD */
    display_end(d);
}

void display_end(display *d) {
    int columns, rows;
    terminal_size(d->out, &columns, &rows);
    cursor end = shown_end(d, columns);
    if (end.col > 0) fputc('\n', d->out);
    fflush(d->out);
    for (int32_t i = 0; i < d->n_deferred; i++) fprintf(d->notes, "%s\n", d->deferred[i]);
    fflush(d->notes);
    clear_deferred(d);
}
