#include "server/tracker.h"
#include "server/json_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void tracker_settle(tracker *t, const sm_event *event) {
    if (event->type != SM_EVENT_START && event->type != SM_EVENT_DONE) t->n_settled = event->n_settled;
}

void tracker_init(tracker *t, bool hold_back, const char *const *stops, int32_t n_stops) {
    memset(t, 0, sizeof *t);
    t->hold_back = hold_back;
    t->stops = stops;
    t->n_stops = n_stops;
}

void tracker_free(tracker *t) {
    free(t->tokens);
    free(t->top);
    free(t->text);
    memset(t, 0, sizeof *t);
}

static bool grow(void **buf, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *b = realloc(*buf, c * elem);
    if (!b) return false;
    *buf = b;
    *cap = c;
    return true;
}

bool tracker_add(tracker *t, const sm_event *e) {
    const char *piece = e->piece ? e->piece : "";
    size_t plen = strlen(piece);
    size_t cap_tokens = (size_t)t->cap_tokens;
    int32_t n_top = e->top ? e->n_top : 0;
    if (!grow((void **)&t->tokens, &cap_tokens, (size_t)t->n_tokens + 1, sizeof *t->tokens) ||
        !grow((void **)&t->top, &t->cap_top, t->n_top + (size_t)n_top, sizeof *t->top) ||
        !grow((void **)&t->text, &t->cap, t->len + plen + 1, 1))
        return false;
    t->cap_tokens = (int32_t)cap_tokens;
    float p = e->signals.p_chosen;
    t->tokens[t->n_tokens++] = (tracked_token){
        .id = e->token,
        .offset = t->len,
        .len = plen,
        .logprob = p > 0.0f ? logf(p) : -INFINITY,
        .p_sampled = e->signals.p_sampled,
        .top_at = (int32_t)t->n_top,
        .n_top = n_top,
    };
    if (n_top) memcpy(t->top + t->n_top, e->top, sizeof *t->top * (size_t)n_top);
    t->n_top += (size_t)n_top;
    memcpy(t->text + t->len, piece, plen);
    t->len += plen;
    t->text[t->len] = '\0';
    return true;
}

void tracker_remove_from(tracker *t, int32_t index) {
    if (index < 0) index = 0;
    if (index >= t->n_tokens) return;
    t->len = t->tokens[index].offset;
    t->n_top = (size_t)t->tokens[index].top_at;
    t->n_tokens = index;
    t->text[t->len] = '\0';
    /* Cannot happen with the right lag; if it does, the stream keeps what it sent. */
    if (t->sent > t->len) t->sent = t->len;
    if (t->sent_tokens > t->n_tokens) t->sent_tokens = t->n_tokens;
}

/* How much of the text's end could still turn into a stop string. */
static size_t stop_hold(const tracker *t, size_t *cut) {
    size_t hold = 0;
    *cut = t->len;
    for (int32_t i = 0; i < t->n_stops; i++) {
        const char *stop = t->stops[i];
        size_t sl = strlen(stop);
        const char *hit = strstr(t->text, stop);
        if (hit && (size_t)(hit - t->text) < *cut) *cut = (size_t)(hit - t->text);
        for (size_t k = sl - 1; k > hold && k > 0; k--) {
            if (k <= t->len && memcmp(t->text + t->len - k, stop, k) == 0) {
                hold = k;
                break;
            }
        }
    }
    return hold;
}

size_t tracker_settled_end(const tracker *t) {
    size_t end = t->len;
    if (t->hold_back) {
        int32_t settled = t->n_settled < t->n_tokens ? t->n_settled : t->n_tokens;
        end = settled <= 0 ? 0 : t->tokens[settled - 1].offset + t->tokens[settled - 1].len;
    }
    long indent = sm_indent_cut(t->text, t->len, t->n_indent);
    if (indent >= 0 && (size_t)indent < end) end = (size_t)indent;
    if (t->n_stops > 0 && t->len > 0) {
        size_t cut;
        size_t hold = stop_hold(t, &cut);
        if (cut < end) end = cut;
        if (t->len - hold < end) end = t->len - hold;
    }
    end = sm_utf8_complete_prefix(t->text, end);
    return end > t->sent ? end : t->sent;
}

int32_t tracker_tokens_before(const tracker *t, size_t end) {
    int32_t i = t->sent_tokens;
    while (i < t->n_tokens && t->tokens[i].offset + t->tokens[i].len <= end) i++;
    return i;
}

int32_t tracker_tokens_touching(const tracker *t, size_t end) {
    int32_t i = t->sent_tokens;
    while (i < t->n_tokens && (t->tokens[i].offset < end || t->tokens[i].len == 0)) i++;
    return i;
}
