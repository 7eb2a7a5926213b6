/* The human-readable lines on stderr: event lines, settings, summary. */
#ifndef CLI_FORMAT_H
#define CLI_FORMAT_H

#include "selfmod.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct line_style {
    bool color;    /* ANSI colors (stderr is a terminal, --no-color absent) */
    bool verbose;  /* add descriptions and sources                          */
} line_style;

/* `[selfmod] #17 PARAM_ADJUST conf=0.42 T 0.70->0.84 rp 1.10->1.21` */
void format_event_line(char *buf, size_t size, const sm_event *event, line_style style);
/* One line: tokens, retractions, backtracks, confidence, speed, stop reason. */
void format_summary(char *buf, size_t size, const sm_result *result, uint64_t seed,
                    line_style style);
/* The settings a generation runs with, for --verbose-events. */
void format_settings(char *buf, size_t size, const char *model_description,
                     const sm_gen_params *params, int32_t n_ctx, line_style style);

#endif
