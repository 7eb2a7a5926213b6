/*
 * Streaming generated text to a terminal, with erasing.
 *
 * The display keeps the committed text and where each token ends, prints
 * only complete UTF-8 characters, and when tokens are removed it moves the
 * cursor back to where the kept text ends (across line wraps and newlines)
 * and clears the rest of the screen. Notes for stderr (event lines) are
 * coordinated with it when both streams are the same terminal: the text
 * block is redrawn below each note, so the erasing stays exact.
 */
#ifndef CLI_DISPLAY_H
#define CLI_DISPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct display {
    FILE *out;                  /* a terminal                              */
    FILE *notes;                /* where notes go (stderr)                 */
    bool notes_share_terminal;  /* notes and text are on the same screen   */

    char *text;                 /* committed bytes                         */
    size_t len, cap;
    size_t *token_end;          /* token_end[i]: bytes up to token i       */
    int32_t n_tokens, cap_tokens;
    size_t n_shown;             /* bytes on screen, at a character start   */
    /* Where the shown text ends on screen, for a terminal end_columns wide */
    int end_row, end_col, end_columns;
    size_t end_row_start;
    int max_end_row;            /* the lowest row the block reached: above
                                   max_end_row - (screen rows - 1) it has
                                   scrolled out of reach               */

    char **deferred;            /* notes held until the text is finished   */
    int32_t n_deferred, cap_deferred;
} display;

/* `out` must be a terminal. Call display_begin before each generation. */
void display_init(display *d, FILE *out, FILE *notes);
void display_free(display *d);

/* A new generation starts at the cursor, which must be at a line start. */
void display_begin(display *d);
/* Token `index` was committed with this text. Tokens at `index` and after
 * that are still shown are removed first. */
void display_token(display *d, int32_t index, const char *piece);
/* Keeps the first n_keep tokens and erases the rest from the screen. */
void display_keep_tokens(display *d, int32_t n_keep);
/* Prints one line (no newline needed) on the notes stream. */
void display_note(display *d, const char *line);
/* Makes the screen show exactly `text` (the generation's final text),
 * ends the line, and prints the notes that had to wait. */
void display_finish(display *d, const char *text, size_t len);
/* Ends the line as it stands (after an error) and prints waiting notes. */
void display_end(display *d);

/* Terminal columns and rows of `stream` (80 x 24 when unknown). */
void terminal_size(FILE *stream, int *columns, int *rows);
/* True when both streams are the same terminal. */
bool same_terminal(FILE *a, FILE *b);

#endif
