/* The prompt set of an evaluation. */
#ifndef EVAL_PROMPTS_H
#define EVAL_PROMPTS_H

#include <stdint.h>
#include <stdio.h>

typedef struct eval_prompt {
    char *text;
    char *reference;   /* NULL: none */
    int32_t line;      /* in the file, for messages */
} eval_prompt;

typedef struct eval_prompt_set {
    eval_prompt *items;
    int32_t n;
    int32_t n_with_reference;
} eval_prompt_set;

/* Reads a file of one prompt per line (blank lines and lines starting
 * with '#' skipped), or, when its first non-blank line starts with '{',
 * JSONL with "prompt" and an optional "reference". limit > 0 keeps the
 * first `limit` prompts. On failure writes a message naming the file and
 * line to err (size err_size) and returns -1. */
int eval_prompts_load(const char *path, int32_t limit, eval_prompt_set *set, char *err, size_t err_size);
void eval_prompts_free(eval_prompt_set *set);

#endif
