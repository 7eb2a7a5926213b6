/*
 * The generated text as a stream sees it. Tokens arrive one by one and a
 * retraction or backtrack takes the last ones back; an OpenAI stream can
 * never take back text it sent. So text is sent only once it is settled:
 *   - within the tokens the library says no rewind can remove any more
 *     (sm_event.n_settled), when the stream holds back for rewinds,
 *   - never inside a possible stop string (the response ends before it),
 *   - never in the middle of a UTF-8 character.
 */
#ifndef SERVER_TRACKER_H
#define SERVER_TRACKER_H

#include "selfmod.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct tracked_token {
    sm_token id;
    size_t offset, len;     /* its bytes in the text            */
    float logprob;          /* ln of its raw probability        */
    float p_sampled;        /* its probability in the draw      */
    int32_t top_at, n_top;  /* its alternatives in tracker.top  */
} tracked_token;

typedef struct tracker {
    tracked_token *tokens;
    int32_t n_tokens, cap_tokens;
    sm_candidate *top;
    size_t n_top, cap_top;
    char *text;
    size_t len, cap;
    size_t sent;            /* bytes already streamed                     */
    int32_t sent_tokens;    /* tokens whose log-probabilities were sent   */
    bool hold_back;         /* only settled tokens are sent              */
    int32_t n_settled;      /* what the library said last                */
    const char *const *stops;
    int32_t n_stops;
    int32_t n_indent;       /* the request's: nothing past its cut is sent */
} tracker;

void tracker_init(tracker *t, bool hold_back, const char *const *stops, int32_t n_stops);
/* Any event: how many tokens are settled now. */
void tracker_settle(tracker *t, const sm_event *event);
void tracker_free(tracker *t);
/* A TOKEN event (with its alternatives when event->n_top > 0). */
bool tracker_add(tracker *t, const sm_event *event);
/* A retraction or backtrack: tokens from `index` on are gone. */
void tracker_remove_from(tracker *t, int32_t index);
/* Where the settled text ends (>= t->sent). */
size_t tracker_settled_end(const tracker *t);
/* One past the last token that lies wholly before `end`. */
int32_t tracker_tokens_before(const tracker *t, size_t end);
/* One past the last token that starts before `end`. */
int32_t tracker_tokens_touching(const tracker *t, size_t end);

#endif
