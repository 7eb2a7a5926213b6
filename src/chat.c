/*
 * chat.c - multi-turn chat on top of a session: templates, history, and
 * re-use of the KV cache across turns.
 *
 * Each turn renders the whole conversation (system prompt, history, the new
 * user message and the assistant-generation prompt) and compares it with
 * what the context already holds:
 *
 *   fast path: the chat remembers the exact text behind the tokens it left
 *     in the KV cache (the rendering it fed plus the pieces the model then
 *     generated). When the new rendering starts with that text, only the
 *     remaining suffix is tokenized and decoded. After a turn that ended on
 *     an end-of-generation token the template's end-of-turn marker is not in
 *     the KV cache yet; it is simply the start of that suffix.
 *
 *   slow path: the history was edited, the answer renders differently from
 *     what was generated (trimmed whitespace, a stop string), or the suffix
 *     cannot be tokenized on its own. The whole rendering is tokenized, the
 *     context is truncated to the longest common token prefix and the rest
 *     is decoded.
 *
 * A suffix tokenized alone is trusted only when it starts with a special
 * token (llama.cpp tokenizes the text between special tokens fragment by
 * fragment, so the suffix's tokens are exactly those of the full rendering)
 * or when its token pieces spell the suffix byte for byte. The second test
 * rejects SentencePiece tokenizers that add a leading space to every text
 * they tokenize: those turns take the slow path, correctness over speed.
 */
#include "internal.h"
#include "jinja.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { CHAT_ERROR_SIZE = 512 };

typedef struct text_buf {
    char *data;
    size_t len;
    size_t cap;
} text_buf;

typedef struct token_buf {
    sm_token *data;
    int32_t len;
} token_buf;

struct sm_chat {
    sm_session *session;        /* NULL for a chat that only renders      */
    const sm_model *model;
    const struct llama_vocab *vocab;
    /* What llama_chat_apply_template is given (a built-in name or the
     * model's own template); NULL selects the plain fallback. */
    char *template_arg;
    /* The model's Jinja template (or one given), rendered by llama.cpp's
     * own engine as llama-server renders it; when set it is used. */
    smj_template *jinja;
    bool keep_all_turns;        /* never drop turns to fit (params)      */
    char *template_label;
    char *fallback_user;
    char *fallback_assistant;
    char *fallback_end_of_turn; /* after an assistant message            */
    char *system_prompt;        /* NULL when there is none               */
    char *template_kwargs;      /* JSON object for the template, or NULL  */
    sm_chat_message *messages;  /* user/assistant turns, strings owned   */
    int32_t n_messages;
    /* The tokens this chat left in the context and the text they spell,
     * for the fast path. kv_valid is false until a turn succeeds. */
    bool kv_valid;
    token_buf kv_tokens;
    text_buf kv_text;
    sm_chat_turn_info last_info;
    char template_user[64], template_assistant[64]; /* read off the model's template, or "" */
    /* The texts llama.cpp turns into special tokens when it parses
     * special text, which must never come from a message's content. */
    char **special_texts;
    int32_t n_special_texts;
    char error[CHAT_ERROR_SIZE];
};

/* Where a message's content stands in a rendering. */
typedef struct content_span {
    size_t at, len;
} content_span;

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */
/* ------------------------------------------------------------------ */

static char *copy_string(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *copy = malloc(n);
    if (copy) memcpy(copy, s, n);
    return copy;
}

static bool text_reserve(text_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data) return false;
    b->data = data;
    b->cap = cap;
    return true;
}

static bool text_append_n(text_buf *b, const char *s, size_t n) {
    if (!text_reserve(b, n)) return false;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return true;
}

static bool text_append(text_buf *b, const char *s) { return text_append_n(b, s, strlen(s)); }

static void text_free(text_buf *b) {
    free(b->data);
    *b = (text_buf){0};
}

static void tokens_free(token_buf *t) {
    free(t->data);
    *t = (token_buf){0};
}

static bool tokens_copy(token_buf *dst, const sm_token *src, int32_t n) {
    sm_token *data = malloc(sizeof *data * (size_t)(n > 0 ? n : 1));
    if (!data) return false;
    if (n > 0) memcpy(data, src, sizeof *data * (size_t)n);
    free(dst->data);
    dst->data = data;
    dst->len = n;
    return true;
}

static sm_status fail(sm_chat *chat, sm_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static sm_status fail(sm_chat *chat, sm_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(chat->error, sizeof chat->error, fmt, ap);
    va_end(ap);
    return status;
}

static sm_status session_fail(sm_chat *chat, sm_status status, const char *what) {
    const char *detail = sm_session_last_error(chat->session);
    return fail(chat, status, "%s: %s", what, detail && *detail ? detail : sm_status_name(status));
}

static bool is_known_role(const char *role) {
    return strcmp(role, "user") == 0 || strcmp(role, "assistant") == 0 || strcmp(role, "system") == 0;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* The answer as the history keeps it: without surrounding whitespace, the
 * way templates (and the fallback's "Assistant: " + text) expect content. */
static char *trimmed_copy(const char *s) {
    while (*s && is_space(*s)) s++;
    size_t n = strlen(s);
    while (n > 0 && is_space(s[n - 1])) n--;
    char *copy = malloc(n + 1);
    if (!copy) return NULL;
    memcpy(copy, s, n);
    copy[n] = '\0';
    return copy;
}

static void free_messages(sm_chat_message *messages, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        free((char *)messages[i].role);
        free((char *)messages[i].content);
    }
    free(messages);
}

/* Tokenizes text[0..len) the chat wrote itself (template markup: its
 * special-token text becomes special tokens) onto the end of out. */
static sm_status tokenize_onto(sm_chat *chat, const char *text, size_t len, bool add_special, bool parse_special,
                               token_buf *out) {
    sm_tokens toks;
    sm_error err = {0};
    sm_status st = sm_tokenize(chat->model, text, len, add_special, parse_special, &toks, &err);
    if (st != SM_OK) return fail(chat, st, "%s", err.message);
    sm_token *data = realloc(out->data, sizeof *data * (size_t)(out->len + toks.n + 1));
    if (!data) {
        sm_tokens_free(&toks);
        return fail(chat, SM_ERR_NO_MEMORY, "out of memory tokenizing the chat");
    }
    if (toks.n > 0) memcpy(data + out->len, toks.data, sizeof *data * (size_t)toks.n);
    out->data = data;
    out->len += toks.n;
    sm_tokens_free(&toks);
    return SM_OK;
}

static sm_status tokenize(sm_chat *chat, const char *text, bool add_special, token_buf *out) {
    *out = (token_buf){0};
    sm_status st = tokenize_onto(chat, text, strlen(text), add_special, true, out);
    if (st != SM_OK) tokens_free(out);
    return st;
}

/* Appends each token's exact piece (special tokens as their text). */
static bool append_pieces(const sm_chat *chat, const sm_token *tokens, int32_t n, text_buf *out) {
    char small[64];
    for (int32_t i = 0; i < n; i++) {
        int32_t len;
        if (!smx_token_to_piece(chat->vocab, tokens[i], small, sizeof small, true, &len, NULL)) return false;
        if (len >= 0) {
            if (!text_append_n(out, small, (size_t)len)) return false;
            continue;
        }
        char *big = malloc((size_t)-len);
        if (!big) return false;
        bool ok = smx_token_to_piece(chat->vocab, tokens[i], big, -len, true, &len, NULL) && len >= 0 && text_append_n(out, big, (size_t)len);
        free(big);
        if (!ok) return false;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* Templates                                                           */
/* ------------------------------------------------------------------ */

/* Renders with llama.cpp's built-in templates; -1 when it cannot. */
static int32_t apply_llama_template(const char *tmpl, const struct llama_chat_message *msgs,
                                    size_t n, text_buf *out) {
    out->len = 0;
    if (!text_reserve(out, 1024)) return -1;
    int32_t len;
    if (!smx_chat_apply_template(tmpl, msgs, n, true, out->data, (int32_t)out->cap, &len, NULL) || len < 0) return -1;
    if ((size_t)len >= out->cap) {
        if (!text_reserve(out, (size_t)len)) return -1;
        if (!smx_chat_apply_template(tmpl, msgs, n, true, out->data, (int32_t)out->cap, &len, NULL) || len < 0)
            return -1;
    }
    out->len = (size_t)len;
    out->data[len] = '\0';
    return len;
}

static const struct llama_chat_message PROBE_CHAT[] = {
    {"system", "You are helpful."},
    {"user", "Hello there."},
    {"assistant", "Hi! How can I help?"},
    {"user", "Tell me a story."},
};
enum { PROBE_CHAT_LEN = sizeof PROBE_CHAT / sizeof PROBE_CHAT[0] };

static bool template_renders(const char *tmpl) {
    text_buf out = {0};
    bool ok = apply_llama_template(tmpl, PROBE_CHAT, PROBE_CHAT_LEN, &out) > 0;
    text_free(&out);
    return ok;
}

enum { MAX_BUILTIN_TEMPLATES = 256 };

static int32_t builtin_templates(const char *names[MAX_BUILTIN_TEMPLATES]) {
    int32_t n = llama_chat_builtin_templates(names, MAX_BUILTIN_TEMPLATES);
    return n < MAX_BUILTIN_TEMPLATES ? n : MAX_BUILTIN_TEMPLATES;
}

static bool is_builtin_template(const char *name) {
    const char *names[MAX_BUILTIN_TEMPLATES];
    int32_t n = builtin_templates(names);
    for (int32_t i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0) return true;
    return false;
}

static void list_builtin_templates(char *out, size_t size) {
    const char *names[MAX_BUILTIN_TEMPLATES];
    int32_t n = builtin_templates(names);
    size_t used = 0;
    out[0] = '\0';
    for (int32_t i = 0; i < n && used < size; i++) {
        int w = snprintf(out + used, size - used, "%s%s", i ? ", " : "", names[i]);
        if (w < 0) break;
        used += (size_t)w;
    }
}

/* The built-in name whose rendering equals the model's template, for
 * sm_chat_template_used; "model" when none matches exactly. */
static const char *identify_template(const char *tmpl) {
    const char *names[MAX_BUILTIN_TEMPLATES];
    int32_t n = builtin_templates(names);
    text_buf want = {0}, got = {0};
    const char *found = "model";
    if (apply_llama_template(tmpl, PROBE_CHAT, PROBE_CHAT_LEN, &want) > 0) {
        for (int32_t i = 0; i < n; i++) {
            if (apply_llama_template(names[i], PROBE_CHAT, PROBE_CHAT_LEN, &got) > 0 &&
                got.len == want.len && memcmp(got.data, want.data, want.len) == 0) {
                found = names[i];
                break;
            }
        }
    }
    text_free(&want);
    text_free(&got);
    return found;
}

/* The fallback's end of turn: the model's own end-of-turn token as text
 * (GPT-2's <|endoftext|>) when it has one that tokenizes back to itself,
 * then a newline; a bare newline otherwise. */
static char *fallback_end_of_turn(sm_chat *chat) {
    llama_token eot = llama_vocab_eot(chat->vocab);
    if (eot == LLAMA_TOKEN_NULL) eot = llama_vocab_eos(chat->vocab);
    char piece[128];
    int32_t len = eot == LLAMA_TOKEN_NULL
                      ? 0
                      : sm_token_text(chat->vocab, eot, piece, sizeof piece - 2);
    if (len <= 0) return copy_string("\n");
    piece[len] = '\0';
    token_buf check = {0};
    bool round_trips = tokenize(chat, piece, false, &check) == SM_OK && check.len == 1 &&
                       check.data[0] == eot;
    tokens_free(&check);
    if (!round_trips) return copy_string("\n");
    strcat(piece, "\n");
    return copy_string(piece);
}

/* "{system}\n", then per user message "{user_label} {text}\n" followed by
 * "{assistant_label}" when an answer follows or is to be generated, and per
 * assistant message " {text}{end_of_turn}". */
static bool render_fallback(const sm_chat *chat, const struct llama_chat_message *msgs, size_t n,
                            text_buf *out) {
    out->len = 0;
    bool ok = text_reserve(out, 256);
    for (size_t i = 0; ok && i < n; i++) {
        const char *role = msgs[i].role, *content = msgs[i].content;
        if (strcmp(role, "system") == 0) {
            ok = !*content || (text_append(out, content) && text_append(out, "\n"));
        } else if (strcmp(role, "user") == 0) {
            bool answer_follows = i + 1 == n || strcmp(msgs[i + 1].role, "assistant") == 0;
            ok = text_append(out, chat->fallback_user) && text_append(out, " ") &&
                 text_append(out, content) && text_append(out, "\n") &&
                 (!answer_follows || text_append(out, chat->fallback_assistant));
        } else {
            ok = text_append(out, " ") && text_append(out, content) &&
                 text_append(out, chat->fallback_end_of_turn);
        }
    }
    return ok;
}

/* Renders msgs (the assistant's turn opened) with the chat's template. */
static sm_status render_messages(sm_chat *chat, const struct llama_chat_message *msgs, size_t n, text_buf *out) {
    if (chat->jinja) {
        char why[CHAT_ERROR_SIZE - 64];
        char *text = smj_render(chat->jinja, msgs, n, true, chat->template_kwargs, why, sizeof why);
        /* A template that raises (roles that do not alternate, a system
         * message where it takes none) refuses this conversation. */
        if (!text) return fail(chat, SM_ERR_INVALID_ARGUMENT, "the model's template refused the conversation: %s", why);
        out->len = 0;
        bool ok = text_append(out, text);
        free(text);
        return ok ? SM_OK : fail(chat, SM_ERR_NO_MEMORY, "out of memory rendering the chat");
    }
    bool ok = chat->template_arg ? apply_llama_template(chat->template_arg, msgs, n, out) >= 0
                                 : render_fallback(chat, msgs, n, out);
    return ok ? SM_OK : fail(chat, SM_ERR_NO_MEMORY, "cannot render the conversation with template %s", chat->template_label);
}

/* ------------------------------------------------------------------ */
/* Message content stays text                                          */
/* ------------------------------------------------------------------ */

/*
 * A rendering is tokenized with special-token parsing on, so that the
 * template's markup ("<|im_start|>", GPT-2's "<|endoftext|>") becomes its
 * tokens. A message whose content spells such a text, or could complete
 * one across its edges, would inject real special tokens: such
 * conversations are rendered again with a placeholder per content, the
 * placeholders are replaced by the contents, and the contents are
 * tokenized as plain text between the markup's tokens.
 */
static bool collect_special_texts(sm_chat *chat) {
    int32_t n_vocab = llama_vocab_n_tokens(chat->vocab);
    for (sm_token t = 0; t < n_vocab; t++) {
        enum llama_token_attr a = llama_vocab_get_attr(chat->vocab, t);
        if (!(a & (LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_USER_DEFINED | LLAMA_TOKEN_ATTR_UNKNOWN))) continue;
        char piece[256];
        int32_t len = sm_token_text(chat->vocab, t, piece, sizeof piece - 1);
        if (len <= 0) continue;
        piece[len] = '\0';
        char **grown = realloc(chat->special_texts, sizeof *grown * (size_t)(chat->n_special_texts + 1));
        if (!grown) return false;
        chat->special_texts = grown;
        if (!(grown[chat->n_special_texts] = copy_string(piece))) return false;
        chat->n_special_texts++;
    }
    return true;
}

/* Whether content holds a special token's text, starts with the end of
 * one or ends with the start of one (the markup beside it could complete
 * it). Conservative: such content is only tokenized more carefully. */
static bool content_needs_protection(const sm_chat *chat, const char *content) {
    size_t n = strlen(content);
    for (int32_t i = 0; i < chat->n_special_texts; i++) {
        const char *s = chat->special_texts[i];
        size_t len = strlen(s);
        if (strstr(content, s)) return true;
        for (size_t k = 1; k < len && k <= n; k++) {
            if (memcmp(content, s + len - k, k) == 0) return true; /* starts with the end of s   */
            if (memcmp(content + n - k, s, k) == 0) return true;  /* ends with the start of s   */
        }
    }
    return false;
}

#define CONTENT_PLACEHOLDER "@@selfmod-content-%d@@"

/* Renders msgs with placeholders, then puts each content in its place and
 * records where it stands. */
static sm_status render_with_spans(sm_chat *chat, const struct llama_chat_message *msgs, size_t n, text_buf *out,
                                   content_span **spans_out, int32_t *n_spans_out) {
    struct llama_chat_message *marked = malloc(sizeof *marked * n);
    char (*names)[32] = malloc(sizeof *names * n);
    content_span *spans = calloc(n, sizeof *spans);
    text_buf skeleton = {0};
    sm_status st = SM_OK;
    if (!marked || !names || !spans) st = fail(chat, SM_ERR_NO_MEMORY, "out of memory rendering the chat");
    for (size_t i = 0; st == SM_OK && i < n; i++) {
        snprintf(names[i], sizeof names[i], CONTENT_PLACEHOLDER, (int)i);
        marked[i] = (struct llama_chat_message){msgs[i].role, names[i]};
    }
    if (st == SM_OK) st = render_messages(chat, marked, n, &skeleton);
    int32_t n_spans = 0;
    size_t cursor = 0;
    out->len = 0;
    for (size_t i = 0; st == SM_OK && i < n; i++) {
        const char *hit = strstr(skeleton.data + cursor, names[i]);
        if (!hit) {
            if (content_needs_protection(chat, msgs[i].content))
                st = fail(chat, SM_ERR_INVALID_ARGUMENT,
                          "message %zu contains special-token text that template %s would not keep as text", i,
                          chat->template_label);
            continue;
        }
        size_t at = (size_t)(hit - skeleton.data);
        if (!text_append_n(out, skeleton.data + cursor, at - cursor))
            st = fail(chat, SM_ERR_NO_MEMORY, "out of memory rendering the chat");
        spans[n_spans++] = (content_span){out->len, strlen(msgs[i].content)};
        if (st == SM_OK && !text_append(out, msgs[i].content))
            st = fail(chat, SM_ERR_NO_MEMORY, "out of memory rendering the chat");
        cursor = at + strlen(names[i]);
    }
    if (st == SM_OK && !text_append(out, skeleton.data + cursor)) st = fail(chat, SM_ERR_NO_MEMORY, "out of memory rendering the chat");
    text_free(&skeleton);
    free(marked);
    free(names);
    if (st != SM_OK) {
        free(spans);
        return st;
    }
    *spans_out = spans;
    *n_spans_out = n_spans;
    return SM_OK;
}

/* Tokenizes a rendering whose contents (spans) must stay text: the markup
 * between them with special-token parsing, the contents without. */
static sm_status tokenize_with_spans(sm_chat *chat, const text_buf *text, const content_span *spans, int32_t n_spans,
                                     bool add_special, token_buf *out) {
    *out = (token_buf){0};
    size_t at = 0;
    sm_status st = SM_OK;
    for (int32_t i = 0; st == SM_OK && i <= n_spans; i++) {
        size_t end = i < n_spans ? spans[i].at : text->len;
        if (end > at) st = tokenize_onto(chat, text->data + at, end - at, add_special && out->len == 0, true, out);
        if (st == SM_OK && i < n_spans && spans[i].len > 0)
            st = tokenize_onto(chat, text->data + spans[i].at, spans[i].len, add_special && out->len == 0, false, out);
        if (i < n_spans) at = spans[i].at + spans[i].len;
    }
    if (st != SM_OK) tokens_free(out);
    return st;
}

/* The conversation from history index `first` on, plus the new message,
 * rendered with the assistant-generation prompt. *spans is set (to free)
 * when some content must be kept from becoming special tokens. */
static sm_status render_conversation(sm_chat *chat, int32_t first, const char *user_message, text_buf *out,
                                     content_span **spans, int32_t *n_spans) {
    size_t n = 0;
    *spans = NULL;
    *n_spans = 0;
    struct llama_chat_message *msgs = malloc(sizeof *msgs * (size_t)(chat->n_messages + 2));
    if (!msgs) return fail(chat, SM_ERR_NO_MEMORY, "out of memory rendering the chat");
    if (chat->system_prompt) msgs[n++] = (struct llama_chat_message){"system", chat->system_prompt};
    for (int32_t i = first; i < chat->n_messages; i++)
        msgs[n++] = (struct llama_chat_message){chat->messages[i].role, chat->messages[i].content};
    msgs[n++] = (struct llama_chat_message){"user", user_message};
    bool protect = false;
    for (size_t i = 0; i < n && !protect; i++) protect = content_needs_protection(chat, msgs[i].content);
    sm_status st = SM_OK;
    if (protect) {
        st = render_with_spans(chat, msgs, n, out, spans, n_spans);
    } else {
        st = render_messages(chat, msgs, n, out);
    }
    free(msgs);
    return st;
}

/*
 * The labels of a plain "User: ...\nBot:" template that llama.cpp does not
 * recognise, read off its Jinja text: in the branch for role 'user', the
 * string literal just before the message content is the user label and
 * the last line of the literal just after it is the assistant label. Only
 * quoted literals are read; anything else leaves the labels unknown.
 */
static bool read_literal(const char **p, char *out, size_t size) {
    char quote = **p;
    if (quote != '\'' && quote != '"') return false;
    size_t n = 0;
    const char *s = *p + 1;
    for (; *s && *s != quote; s++) {
        char c = *s;
        if (c == '\\' && s[1]) {
            s++;
            c = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
        }
        if (n + 1 < size) out[n++] = c;
    }
    if (*s != quote) return false;
    out[n] = '\0';
    *p = s + 1;
    return true;
}

static void trim_in_place(char *s) {
    size_t start = 0, n = strlen(s);
    while (start < n && is_space(s[start])) start++;
    while (n > start && is_space(s[n - 1])) n--;
    memmove(s, s + start, n - start);
    s[n - start] = '\0';
}

static bool labels_from_template(const char *tmpl, char *user, char *assistant, size_t size) {
    const char *branch = strstr(tmpl, "== 'user'");
    if (!branch) branch = strstr(tmpl, "== \"user\"");
    if (!branch) return false;
    const char *end = strstr(branch, "elif");
    const char *expr = "message['content']";
    const char *content = strstr(branch, expr);
    if (!content) content = strstr(branch, expr = "message.content");
    if (!content || (end && content > end)) return false;
    char before[128] = "", after[128] = "", lit[128];
    for (const char *p = branch; p < content; p++) /* the last literal before the content */
        if ((*p == '\'' || *p == '"') && read_literal(&p, lit, sizeof lit)) {
            if (strcmp(lit, "user") != 0) snprintf(before, sizeof before, "%s", lit);
            p--;
        }
    for (const char *p = content + strlen(expr); *p && (!end || p < end); p++) /* the first literal after it */
        if ((*p == '\'' || *p == '"') && read_literal(&p, lit, sizeof lit)) {
            snprintf(after, sizeof after, "%s", lit);
            break;
        }
    const char *last_line = strrchr(after, '\n');
    snprintf(assistant, size, "%s", last_line ? last_line + 1 : after);
    snprintf(user, size, "%s", before);
    trim_in_place(user);
    trim_in_place(assistant);
    return *user && *assistant && strchr(user, '\n') == NULL;
}

/* A Jinja template that renders the probe conversation (or the probe
 * without its system message, for templates that take none); NULL with
 * why set otherwise. */
static smj_template *working_jinja(const sm_chat *chat, const char *source, char *why, size_t why_size) {
    smj_template *t = smj_template_new(sm_model_llama(chat->model), source, why, why_size);
    if (!t) return NULL;
    for (size_t skip = 0; skip < 2; skip++) {
        char *text = smj_render(t, PROBE_CHAT + skip, PROBE_CHAT_LEN - skip, true, NULL, why, why_size);
        free(text);
        if (text) return t;
    }
    smj_template_free(t);
    return NULL;
}

static sm_status choose_template(sm_chat *chat, const sm_chat_params *params) {
    const char *requested = params->template_name;
    const char *label = "fallback";
    const char *arg = NULL;
    if (requested && params->template_source)
        return fail(chat, SM_ERR_INVALID_ARGUMENT, "give a chat template's name or its Jinja text, not both");
    if (params->template_source) {
        char why[CHAT_ERROR_SIZE - 64] = "";
        chat->jinja = working_jinja(chat, params->template_source, why, sizeof why);
        if (!chat->jinja) return fail(chat, SM_ERR_INVALID_ARGUMENT, "the given chat template does not work: %s", why);
        label = "jinja (given)";
    } else if (requested) {
        if (!is_builtin_template(requested) || !template_renders(requested)) {
            char names[2048];
            list_builtin_templates(names, sizeof names);
            return fail(chat, SM_ERR_INVALID_ARGUMENT,
                        "unknown chat template '%s'; llama.cpp knows: %s", requested, names);
        }
        label = arg = requested;
    } else {
        const struct llama_model *model = sm_model_llama(chat->model);
        const char *own = llama_model_chat_template(model, NULL);
        char why[CHAT_ERROR_SIZE - 64] = "";
        if (own && params->jinja && (chat->jinja = working_jinja(chat, NULL, why, sizeof why))) {
            label = "jinja (the model's own)";
        } else if (own && template_renders(own)) {
            arg = own;
            label = identify_template(own);
        } else if (own) {
            labels_from_template(own, chat->template_user, chat->template_assistant, sizeof chat->template_user);
        }
    }
    chat->template_arg = copy_string(arg);
    chat->template_label = copy_string(label);
    if ((arg && !chat->template_arg) || !chat->template_label)
        return fail(chat, SM_ERR_NO_MEMORY, "out of memory creating the chat");
    return SM_OK;
}

/* ------------------------------------------------------------------ */
/* Construction and history                                            */
/* ------------------------------------------------------------------ */

bool sm_chat_template_known(const char *name) {
    return name && is_builtin_template(name) && template_renders(name);
}

sm_chat_params sm_chat_default_params(void) {
    return (sm_chat_params){
        .system_prompt = NULL,
        .template_name = NULL,
        .fallback_user = NULL,
        .fallback_assistant = NULL,
        .template_source = NULL,
        .jinja = true,
        .keep_all_turns = false,
        .template_kwargs = NULL,
    };
}

/* template_kwargs need the Jinja engine and must be a JSON object. */
static sm_status check_kwargs(bool jinja, const char *kwargs, char *why, size_t why_size) {
    if (!kwargs) return SM_OK;
    if (!jinja) {
        snprintf(why, why_size, "chat_template_kwargs are variables of a Jinja chat template: this chat renders "
                                "without one (--no-jinja, a named template, or the plain form)");
        return SM_ERR_INVALID_ARGUMENT;
    }
    return smj_kwargs_check(kwargs, why, why_size) ? SM_OK : SM_ERR_INVALID_ARGUMENT;
}

sm_status sm_chat_set_template_kwargs(sm_chat *chat, const char *kwargs_json) {
    if (!chat) return SM_ERR_INVALID_ARGUMENT;
    char why[CHAT_ERROR_SIZE - 64] = "";
    sm_status st = check_kwargs(chat->jinja != NULL, kwargs_json, why, sizeof why);
    if (st != SM_OK) return fail(chat, st, "%s", why);
    char *copy = kwargs_json ? copy_string(kwargs_json) : NULL;
    if (kwargs_json && !copy) return fail(chat, SM_ERR_NO_MEMORY, "out of memory");
    free(chat->template_kwargs);
    chat->template_kwargs = copy;
    return SM_OK;
}

static void report(sm_error *err, sm_status status, const char *message) {
    if (!err) return;
    err->status = status;
    snprintf(err->message, sizeof err->message, "%s", message);
}

/* A chat over model: session NULL makes one that can only render. */
static sm_chat *chat_open(const sm_model *model, sm_session *session, const sm_chat_params *params, sm_error *err) {
    sm_chat_params defaults = sm_chat_default_params();
    if (!params) params = &defaults;
    sm_chat *chat = calloc(1, sizeof *chat);
    if (!chat) {
        report(err, SM_ERR_NO_MEMORY, "out of memory creating the chat");
        return NULL;
    }
    chat->session = session;
    chat->model = model;
    chat->keep_all_turns = params->keep_all_turns;
    chat->vocab = llama_model_get_vocab(sm_model_llama(model));
    sm_status status = choose_template(chat, params);
    const char *user = params->fallback_user        ? params->fallback_user
                       : *chat->template_user       ? chat->template_user
                                                    : "User:";
    const char *assistant = params->fallback_assistant  ? params->fallback_assistant
                            : *chat->template_assistant ? chat->template_assistant
                                                        : "Assistant:";
    if (status == SM_OK && !chat->template_arg && !chat->jinja) { /* say which plain form, and where its labels came from */
        char label[256];
        bool from_model = !params->fallback_user && !params->fallback_assistant && *chat->template_user;
        snprintf(label, sizeof label, "plain \"%s ...\\n%s\"%s", user, assistant,
                 from_model ? " (the labels of the model's template)" : "");
        free(chat->template_label);
        chat->template_label = copy_string(label);
        if (!chat->template_label) status = fail(chat, SM_ERR_NO_MEMORY, "out of memory creating the chat");
    }
    if (status == SM_OK) {
        chat->fallback_user = copy_string(user);
        chat->fallback_assistant = copy_string(assistant);
        chat->fallback_end_of_turn = fallback_end_of_turn(chat);
        if (!collect_special_texts(chat)) status = fail(chat, SM_ERR_NO_MEMORY, "out of memory creating the chat");
        chat->system_prompt = copy_string(params->system_prompt);
        if (status == SM_OK) status = sm_chat_set_template_kwargs(chat, params->template_kwargs);
        bool copied = chat->fallback_user && chat->fallback_assistant &&
                      chat->fallback_end_of_turn &&
                      (!params->system_prompt || chat->system_prompt);
        if (!copied && status == SM_OK) status = fail(chat, SM_ERR_NO_MEMORY, "out of memory creating the chat");
    }
    if (status != SM_OK) {
        report(err, status, chat->error);
        sm_chat_free(chat);
        return NULL;
    }
    return chat;
}

sm_chat *sm_chat_new(sm_session *session, const sm_chat_params *params, sm_error *err) {
    if (!session) {
        report(err, SM_ERR_INVALID_ARGUMENT, "sm_chat_new: session is NULL");
        return NULL;
    }
    return chat_open(sm_session_model(session), session, params, err);
}

sm_status sm_chat_prompt_tokens(const sm_model *model, const sm_chat_params *params, const sm_chat_message *messages,
                                int32_t n_messages, int32_t *n_tokens, sm_error *err) {
    if (!model || !messages || n_messages < 1 || !n_tokens || !messages[n_messages - 1].role ||
        strcmp(messages[n_messages - 1].role, "user") != 0 || !messages[n_messages - 1].content) {
        report(err, SM_ERR_INVALID_ARGUMENT, "sm_chat_prompt_tokens: a model and messages ending with the user's");
        return SM_ERR_INVALID_ARGUMENT;
    }
    sm_chat *chat = chat_open(model, NULL, params, err);
    if (!chat) return err ? err->status : SM_ERR_NO_MEMORY;
    sm_status st = sm_chat_set_history(chat, messages, n_messages - 1);
    text_buf rendered = {0};
    content_span *spans = NULL;
    int32_t n_spans = 0;
    token_buf all = {0};
    if (st == SM_OK)
        st = render_conversation(chat, 0, messages[n_messages - 1].content, &rendered, &spans, &n_spans);
    if (st == SM_OK)
        st = spans ? tokenize_with_spans(chat, &rendered, spans, n_spans, true, &all) : tokenize(chat, rendered.data, true, &all);
    if (st == SM_OK) *n_tokens = all.len;
    else report(err, st, chat->error);
    tokens_free(&all);
    free(spans);
    text_free(&rendered);
    sm_chat_free(chat);
    return st;
}

sm_status sm_chat_render(const sm_model *model, const sm_chat_params *params, const sm_chat_message *messages,
                         int32_t n_messages, char **text, sm_error *err) {
    if (!model || !text || n_messages < 0 || (n_messages > 0 && !messages)) {
        report(err, SM_ERR_INVALID_ARGUMENT, "sm_chat_render: a model, messages and somewhere to put the text");
        return SM_ERR_INVALID_ARGUMENT;
    }
    *text = NULL;
    sm_chat *chat = chat_open(model, NULL, params, err);
    if (!chat) return err ? err->status : SM_ERR_NO_MEMORY;
    struct llama_chat_message *msgs = malloc(sizeof *msgs * (size_t)(n_messages + 1));
    size_t n = 0;
    sm_status st = msgs ? SM_OK : fail(chat, SM_ERR_NO_MEMORY, "out of memory rendering the chat");
    if (st == SM_OK && chat->system_prompt) msgs[n++] = (struct llama_chat_message){"system", chat->system_prompt};
    for (int32_t i = 0; st == SM_OK && i < n_messages; i++) {
        if (!messages[i].role || !messages[i].content || !is_known_role(messages[i].role))
            st = fail(chat, SM_ERR_INVALID_ARGUMENT, "message %d: a role (system, user, assistant) and content", i);
        else msgs[n++] = (struct llama_chat_message){messages[i].role, messages[i].content};
    }
    text_buf out = {0};
    if (st == SM_OK) st = render_messages(chat, msgs, n, &out);
    if (st == SM_OK) *text = out.data ? out.data : copy_string("");
    else text_free(&out);
    if (st == SM_OK && !*text) st = fail(chat, SM_ERR_NO_MEMORY, "out of memory rendering the chat");
    if (st != SM_OK) report(err, st, chat->error);
    free(msgs);
    sm_chat_free(chat);
    return st;
}

void sm_chat_free(sm_chat *chat) {
    if (!chat) return;
    free(chat->template_arg);
    smj_template_free(chat->jinja);
    free(chat->template_label);
    free(chat->fallback_user);
    free(chat->fallback_assistant);
    free(chat->fallback_end_of_turn);
    free(chat->system_prompt);
    free(chat->template_kwargs);
    for (int32_t i = 0; i < chat->n_special_texts; i++) free(chat->special_texts[i]);
    free(chat->special_texts);
    free_messages(chat->messages, chat->n_messages);
    tokens_free(&chat->kv_tokens);
    text_free(&chat->kv_text);
    free(chat);
}

const char *sm_chat_last_error(const sm_chat *chat) { return chat ? chat->error : "chat is NULL"; }

sm_chat_turn_info sm_chat_last_turn_info(const sm_chat *chat) {
    return chat ? chat->last_info : (sm_chat_turn_info){0};
}

const char *sm_chat_template_used(const sm_chat *chat) {
    return chat ? chat->template_label : NULL;
}

const char *sm_chat_template_text(const sm_chat *chat) {
    if (!chat) return NULL;
    if (chat->jinja) return smj_source(chat->jinja);
    return chat->template_arg ? chat->template_arg : "";
}

int32_t sm_chat_n_messages(const sm_chat *chat) { return chat ? chat->n_messages : 0; }

const sm_chat_message *sm_chat_messages(const sm_chat *chat) {
    return chat ? chat->messages : NULL;
}

/* The history is the turns; the system prompt is kept apart
 * (sm_chat_messages never lists it) so that a caller who passes back only
 * the turns keeps it. A leading "system" message replaces it; a later one
 * stays in the history where it stands (the template places it, or
 * refuses the conversation). */
sm_status sm_chat_set_history(sm_chat *chat, const sm_chat_message *messages, int32_t n_messages) {
    if (!chat) return SM_ERR_INVALID_ARGUMENT;
    if (n_messages < 0 || (n_messages > 0 && !messages))
        return fail(chat, SM_ERR_INVALID_ARGUMENT, "sm_chat_set_history: %d messages at %p",
                    n_messages, (const void *)messages);
    for (int32_t i = 0; i < n_messages; i++) {
        const char *role = messages[i].role;
        if (!role || !messages[i].content)
            return fail(chat, SM_ERR_INVALID_ARGUMENT, "message %d has no %s", i,
                        role ? "content" : "role");
        if (!is_known_role(role))
            return fail(chat, SM_ERR_INVALID_ARGUMENT,
                        "message %d has role '%s'; expected \"system\", \"user\" or \"assistant\"", i, role);
    }
    bool has_system = n_messages > 0 && strcmp(messages[0].role, "system") == 0;
    int32_t n_turns = n_messages - (has_system ? 1 : 0);
    sm_chat_message *copy = calloc((size_t)(n_turns > 0 ? n_turns : 1), sizeof *copy);
    char *system = has_system ? copy_string(messages[0].content) : NULL;
    bool ok = copy && (!has_system || system);
    for (int32_t i = 0; ok && i < n_turns; i++) {
        const sm_chat_message *m = &messages[i + (has_system ? 1 : 0)];
        copy[i].role = copy_string(m->role);
        copy[i].content = copy_string(m->content);
        ok = copy[i].role && copy[i].content;
    }
    if (!ok) {
        if (copy) free_messages(copy, n_turns);
        free(system);
        return fail(chat, SM_ERR_NO_MEMORY, "out of memory copying the chat history");
    }
    free_messages(chat->messages, chat->n_messages);
    chat->messages = copy;
    chat->n_messages = n_turns;
    if (has_system) {
        free(chat->system_prompt);
        chat->system_prompt = system;
    }
    return SM_OK;
}

/* Forgets the turns, not the system prompt. */
sm_status sm_chat_reset(sm_chat *chat) {
    if (!chat) return SM_ERR_INVALID_ARGUMENT;
    free_messages(chat->messages, chat->n_messages);
    chat->messages = NULL;
    chat->n_messages = 0;
    chat->kv_valid = false;
    chat->last_info = (sm_chat_turn_info){0};
    sm_status status = sm_session_clear(chat->session);
    if (status != SM_OK) return session_fail(chat, status, "cannot clear the session");
    return SM_OK;
}

/* ------------------------------------------------------------------ */
/* Planning a turn                                                     */
/* ------------------------------------------------------------------ */

/* How the context gets from what it holds to the rendered prompt: keep
 * its first n_keep tokens, then decode `feed`. */
typedef struct turn_plan {
    text_buf rendered;
    content_span *spans;  /* contents that must stay text, or NULL      */
    int32_t n_spans;
    token_buf feed;
    int32_t n_keep;
    int32_t n_reused;     /* what the context actually kept           */
    int32_t first_kept_message; /* history before this index is dropped */
    int32_t n_dropped_turns;
} turn_plan;

static void plan_free(turn_plan *plan) {
    text_free(&plan->rendered);
    free(plan->spans);
    tokens_free(&plan->feed);
}

/* The history index where the conversation starts once the oldest n_drop
 * turns (a user message and the answers up to the next user message) are
 * gone; -1 when there are not that many turns. */
static int32_t first_message_after_dropping(const sm_chat *chat, int32_t n_drop) {
    int32_t i = 0;
    for (int32_t dropped = 0; dropped < n_drop; dropped++) {
        if (i >= chat->n_messages) return -1;
        do i++;
        while (i < chat->n_messages && strcmp(chat->messages[i].role, "user") != 0);
    }
    return i;
}

/* The context still holds exactly what this chat left there. */
static bool context_is_ours(const sm_chat *chat) {
    int32_t n = 0;
    const sm_token *tokens = sm_session_tokens(chat->session, &n);
    return chat->kv_valid && n == chat->kv_tokens.len && n > 0 &&
           memcmp(tokens, chat->kv_tokens.data, sizeof *tokens * (size_t)n) == 0;
}

static bool starts_with_special_token(const sm_chat *chat, const char *text, sm_token token) {
    enum llama_token_attr attr = llama_vocab_get_attr(chat->vocab, token);
    if (!(attr & (LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_USER_DEFINED))) return false;
    if (attr & LLAMA_TOKEN_ATTR_LSTRIP) return false; /* it would eat the prefix's spaces */
    text_buf piece = {0};
    bool ok = append_pieces(chat, &token, 1, &piece) && piece.len > 0 &&
              strncmp(text, piece.data, piece.len) == 0;
    text_free(&piece);
    return ok;
}

static bool pieces_spell(const sm_chat *chat, const token_buf *tokens, const char *text) {
    text_buf spelled = {0};
    bool ok = append_pieces(chat, tokens->data, tokens->len, &spelled) &&
              spelled.len == strlen(text) && memcmp(spelled.data, text, spelled.len) == 0;
    text_free(&spelled);
    return ok;
}

/* Fast path: tokenize only what follows the text already in the context. */
static bool plan_suffix(sm_chat *chat, turn_plan *plan) {
    const char *rendered = plan->rendered.data;
    size_t held = chat->kv_text.len;
    if (plan->spans || !context_is_ours(chat) || plan->rendered.len <= held ||
        memcmp(rendered, chat->kv_text.data, held) != 0)
        return false;
    const char *suffix = rendered + held;
    token_buf tokens = {0};
    if (tokenize(chat, suffix, false, &tokens) != SM_OK) return false;
    bool exact = tokens.len > 0 && (starts_with_special_token(chat, suffix, tokens.data[0]) ||
                                    pieces_spell(chat, &tokens, suffix));
    if (!exact) {
        tokens_free(&tokens);
        return false;
    }
    plan->feed = tokens;
    plan->n_keep = chat->kv_tokens.len;
    return true;
}

/* Slow path: the whole rendering, minus the longest common prefix with
 * the context. At least one token is always fed, so that the distribution
 * the answer starts from is fresh. */
static sm_status plan_full(sm_chat *chat, turn_plan *plan) {
    token_buf all = {0};
    sm_status status = plan->spans ? tokenize_with_spans(chat, &plan->rendered, plan->spans, plan->n_spans, true, &all)
                                   : tokenize(chat, plan->rendered.data, true, &all);
    if (status != SM_OK) return status;
    llama_token bos = llama_vocab_bos(chat->vocab);
    if (all.len >= 2 && all.data[0] == bos && all.data[1] == bos) {
        /* the template wrote BOS itself and tokenizing added another */
        memmove(all.data, all.data + 1, sizeof *all.data * (size_t)(all.len - 1));
        all.len--;
    }
    if (all.len == 0) {
        tokens_free(&all);
        return fail(chat, SM_ERR_INVALID_ARGUMENT, "the chat rendered to no tokens at all");
    }
    int32_t n_held = 0;
    const sm_token *held = sm_session_tokens(chat->session, &n_held);
    int32_t common = 0;
    while (common < n_held && common < all.len - 1 && held[common] == all.data[common]) common++;
    plan->n_keep = common;
    plan->feed.len = all.len - common;
    plan->feed.data = malloc(sizeof *all.data * (size_t)plan->feed.len);
    if (plan->feed.data)
        memcpy(plan->feed.data, all.data + common, sizeof *all.data * (size_t)plan->feed.len);
    tokens_free(&all);
    if (!plan->feed.data) return fail(chat, SM_ERR_NO_MEMORY, "out of memory tokenizing the chat");
    return SM_OK;
}

static sm_status plan_with_drops(sm_chat *chat, const char *user_message, int32_t n_drop,
                                 turn_plan *plan) {
    *plan = (turn_plan){.n_dropped_turns = n_drop};
    plan->first_kept_message = first_message_after_dropping(chat, n_drop);
    sm_status status = render_conversation(chat, plan->first_kept_message, user_message, &plan->rendered,
                                           &plan->spans, &plan->n_spans);
    if (status == SM_OK && !plan_suffix(chat, plan)) status = plan_full(chat, plan);
    if (status != SM_OK) plan_free(plan);
    return status;
}

/* Room kept free for the answer: n_predict, at most half the context (a
 * larger reservation would leave no room for the conversation; the
 * generation then stops when the context is full), or a quarter of the
 * context when the answer is unbounded. */
static int32_t answer_room(const sm_gen_params *params, int32_t n_ctx) {
    if (params->n_predict < 0) return n_ctx / 4;
    return params->n_predict < n_ctx / 2 ? params->n_predict : n_ctx / 2;
}

static int32_t count_turns(const sm_chat *chat) {
    int32_t n = 0;
    while (first_message_after_dropping(chat, n + 1) >= 0) n++;
    return n;
}

/* Drops the oldest turns until the prompt plus the answer's room fits (a
 * prompt that fits with no turn left to drop goes as it is). */
static sm_status plan_turn(sm_chat *chat, const char *user_message, const sm_gen_params *params,
                           turn_plan *plan) {
    int32_t n_ctx = sm_session_n_ctx(chat->session);
    int32_t room = answer_room(params, n_ctx);
    int32_t n_droppable = chat->keep_all_turns ? 0 : count_turns(chat);
    for (int32_t n_drop = 0;; n_drop++) {
        sm_status status = plan_with_drops(chat, user_message, n_drop, plan);
        if (status != SM_OK) return status;
        int32_t n_prompt = plan->n_keep + plan->feed.len;
        if (n_prompt + room <= n_ctx) return SM_OK;
        /* Nothing more to drop: a prompt that fits is answered in what is
         * left (the answer ends when the context is full), not refused. */
        if (n_drop == n_droppable && n_prompt < n_ctx) return SM_OK;
        plan_free(plan);
        if (n_drop == n_droppable)
            return fail(chat, SM_ERR_PROMPT_TOO_LONG,
                        "the %s needs %d tokens with the chat template%s: more than the context's %d tokens",
                        n_drop == 0 && chat->n_messages > 0 ? "conversation" : "message", n_prompt,
                        chat->system_prompt ? " and the system prompt" : "", n_ctx);
    }
}

/* ------------------------------------------------------------------ */
/* A turn                                                              */
/* ------------------------------------------------------------------ */

/* The context's first n_keep tokens, then the plan's: one sequence for
 * the session's prefix primitive, which keeps what it already holds. */
static sm_status prepare_context(sm_chat *chat, turn_plan *plan) {
    sm_session *session = chat->session;
    int32_t n_held = 0;
    const sm_token *held = sm_session_tokens(session, &n_held);
    token_buf all = {0};
    if (!tokens_copy(&all, held, plan->n_keep)) return fail(chat, SM_ERR_NO_MEMORY, "out of memory");
    sm_token *grown = realloc(all.data, sizeof *grown * (size_t)(plan->n_keep + plan->feed.len + 1));
    if (!grown) {
        tokens_free(&all);
        return fail(chat, SM_ERR_NO_MEMORY, "out of memory");
    }
    all.data = grown;
    memcpy(all.data + plan->n_keep, plan->feed.data, sizeof *all.data * (size_t)plan->feed.len);
    all.len = plan->n_keep + plan->feed.len;
    int32_t n_reused = 0;
    sm_status status = sm_session_set_tokens(session, all.data, all.len, &n_reused);
    tokens_free(&all);
    if (status != SM_OK) return session_fail(chat, status, "cannot decode the chat prompt");
    plan->n_reused = n_reused; /* below n_keep only for a model that could not keep a part */
    return SM_OK;
}

/* Remembers the text behind the context's tokens: the rendering just fed
 * plus the pieces generated after it. */
static bool remember_context(sm_chat *chat, const turn_plan *plan) {
    int32_t n = 0;
    const sm_token *tokens = sm_session_tokens(chat->session, &n);
    int32_t n_prompt = plan->n_keep + plan->feed.len;
    chat->kv_valid = false;
    if (n < n_prompt) return true;
    chat->kv_text.len = 0;
    if (!text_append_n(&chat->kv_text, plan->rendered.data, plan->rendered.len) ||
        !append_pieces(chat, tokens + n_prompt, n - n_prompt, &chat->kv_text) ||
        !tokens_copy(&chat->kv_tokens, tokens, n))
        return false;
    chat->kv_valid = true;
    return true;
}

/* Drops the turns the plan left out and appends the new exchange. */
static sm_status commit_history(sm_chat *chat, const turn_plan *plan, const char *user_message,
                                const char *answer) {
    char *user = copy_string(user_message);
    char *assistant = trimmed_copy(answer ? answer : "");
    char *role_user = copy_string("user"), *role_assistant = copy_string("assistant");
    int32_t first = plan->first_kept_message;
    int32_t n_kept = chat->n_messages - first;
    sm_chat_message *messages = malloc(sizeof *messages * (size_t)(n_kept + 2));
    if (!user || !assistant || !role_user || !role_assistant || !messages) {
        free(user);
        free(assistant);
        free(role_user);
        free(role_assistant);
        free(messages);
        return fail(chat, SM_ERR_NO_MEMORY, "out of memory recording the chat history");
    }
    for (int32_t i = 0; i < first; i++) {
        free((char *)chat->messages[i].role);
        free((char *)chat->messages[i].content);
    }
    if (n_kept > 0) memcpy(messages, chat->messages + first, sizeof *messages * (size_t)n_kept);
    messages[n_kept] = (sm_chat_message){role_user, user};
    messages[n_kept + 1] = (sm_chat_message){role_assistant, assistant};
    free(chat->messages);
    chat->messages = messages;
    chat->n_messages = n_kept + 2;
    return SM_OK;
}

/* An assistant prefill goes into the context right after the answer's
 * opening, as text the answer continues. */
static sm_status add_prefill(sm_chat *chat, turn_plan *plan, const char *prefill) {
    sm_tokens toks;
    sm_error err = {0};
    if (sm_tokenize_continuation(sm_session_model(chat->session), prefill, strlen(prefill), &toks, &err) != SM_OK)
        return fail(chat, err.status, "the assistant prefill: %s", err.message);
    sm_token *grown = realloc(plan->feed.data, sizeof *grown * (size_t)(plan->feed.len + toks.n + 1));
    bool ok = grown && text_append(&plan->rendered, prefill);
    if (grown) {
        plan->feed.data = grown;
        if (toks.n) memcpy(grown + plan->feed.len, toks.data, sizeof *grown * (size_t)toks.n);
        plan->feed.len += toks.n;
    }
    sm_tokens_free(&toks);
    return ok ? SM_OK : fail(chat, SM_ERR_NO_MEMORY, "out of memory");
}

static sm_status turn(sm_chat *chat, const char *user_message, const char *prefill, const sm_gen_params *params,
                      sm_result *result);

sm_status sm_chat_turn(sm_chat *chat, const char *user_message, const sm_gen_params *params,
                       sm_result *result) {
    return turn(chat, user_message, NULL, params, result);
}

sm_status sm_chat_turn_prefilled(sm_chat *chat, const char *user_message, const char *prefill,
                                 const sm_gen_params *params, sm_result *result) {
    return turn(chat, user_message, prefill && *prefill ? prefill : NULL, params, result);
}

static sm_status turn(sm_chat *chat, const char *user_message, const char *prefill, const sm_gen_params *params,
                      sm_result *result) {
    if (!chat) return SM_ERR_INVALID_ARGUMENT;
    if (!result) return fail(chat, SM_ERR_INVALID_ARGUMENT, "sm_chat_turn: result is NULL");
    memset(result, 0, sizeof *result);
    if (!user_message)
        return fail(chat, SM_ERR_INVALID_ARGUMENT, "sm_chat_turn: user_message is NULL");
    sm_gen_params defaults = sm_gen_default_params();
    if (!params) params = &defaults;
    chat->error[0] = '\0';
    chat->last_info = (sm_chat_turn_info){0};

    turn_plan plan;
    sm_status status = plan_turn(chat, user_message, params, &plan);
    if (status != SM_OK) return status;
    if (prefill && (status = add_prefill(chat, &plan, prefill)) != SM_OK) {
        plan_free(&plan);
        return status;
    }

    int64_t decoded_before = sm_session_n_decoded_total(chat->session);
    status = prepare_context(chat, &plan);
    chat->last_info = (sm_chat_turn_info){
        .n_reused = plan.n_reused,
        .n_prompt_decoded = (int32_t)(sm_session_n_decoded_total(chat->session) - decoded_before),
        .n_dropped_turns = plan.n_dropped_turns,
    };
    if (status == SM_OK) {
        status = sm_session_generate(chat->session, NULL, params, result);
        if (status != SM_OK) session_fail(chat, status, "generation failed");
    }
    if (status == SM_OK && !remember_context(chat, &plan))
        status = fail(chat, SM_ERR_NO_MEMORY, "out of memory recording the context");
    if (status == SM_OK && prefill) { /* the history holds the whole answer */
        size_t n = strlen(prefill) + (result->text ? result->text_len : 0) + 1;
        char *whole = malloc(n);
        if (!whole) status = fail(chat, SM_ERR_NO_MEMORY, "out of memory");
        else {
            snprintf(whole, n, "%s%s", prefill, result->text ? result->text : "");
            status = commit_history(chat, &plan, user_message, whole);
            free(whole);
        }
    } else if (status == SM_OK) {
        status = commit_history(chat, &plan, user_message, result->text);
    }
    if (status != SM_OK) chat->kv_valid = false;
    plan_free(&plan);
    return status;
}

/* ------------------------------------------------------------------ */
/* Tool calls                                                          */
/* ------------------------------------------------------------------ */

struct sm_tool_prompt {
    smj_template *jinja;
    smj_tool_prompt *prompt;
};

sm_tool_prompt *sm_tool_prompt_new(const sm_model *model, const sm_chat_params *params, const char *messages_json,
                                   const char *tools_json, const char *tool_choice, bool parallel_tool_calls,
                                   sm_error *err) {
    sm_chat_params defaults = sm_chat_default_params();
    if (!params) params = &defaults;
    if (!model || !messages_json) {
        report(err, SM_ERR_INVALID_ARGUMENT, "sm_tool_prompt_new: a model and messages");
        return NULL;
    }
    if (!params->jinja || (params->template_name && strcmp(params->template_name, "chatml") != 0)) {
        report(err, SM_ERR_INVALID_ARGUMENT, "tools need a Jinja chat template (the model's own, a template file, "
                                             "or chatml), not --no-jinja or a named template");
        return NULL;
    }
    sm_tool_prompt *p = calloc(1, sizeof *p);
    char why[sizeof err->message - 16] = "";
    /* the chat's own template: a file's text, chatml by name, else the model's */
    const char *source = params->template_source ? params->template_source : params->template_name;
    if (p) p->jinja = smj_template_new(sm_model_llama(model), source, why, sizeof why);
    if (p && p->jinja)
        p->prompt = smj_tool_prompt_new(p->jinja, messages_json, tools_json, tool_choice, parallel_tool_calls,
                                        params->template_kwargs, why, sizeof why);
    if (!p || !p->prompt) {
        report(err, p ? SM_ERR_INVALID_ARGUMENT : SM_ERR_NO_MEMORY, p ? why : "out of memory");
        sm_tool_prompt_free(p);
        return NULL;
    }
    return p;
}

void sm_tool_prompt_free(sm_tool_prompt *p) {
    if (!p) return;
    smj_tool_prompt_free(p->prompt);
    smj_template_free(p->jinja);
    free(p);
}

const char *sm_tool_prompt_text(const sm_tool_prompt *p) { return p ? smj_tool_prompt_text(p->prompt) : NULL; }

const char *sm_tool_prompt_grammar(const sm_tool_prompt *p) {
    if (!p) return NULL;
    const char *g = smj_tool_prompt_grammar(p->prompt);
    int n = 0;
    smj_tool_prompt_triggers(p->prompt, &n);
    /* a lazy grammar without triggers would never apply */
    return *g && (!smj_tool_prompt_grammar_lazy(p->prompt) || n > 0) ? g : NULL;
}

int32_t sm_tool_prompt_n_triggers(const sm_tool_prompt *p) {
    int n = 0;
    if (p && smj_tool_prompt_grammar_lazy(p->prompt)) smj_tool_prompt_triggers(p->prompt, &n);
    return n;
}

const char *const *sm_tool_prompt_triggers(const sm_tool_prompt *p) {
    int n = 0;
    return p && smj_tool_prompt_grammar_lazy(p->prompt) ? smj_tool_prompt_triggers(p->prompt, &n) : NULL;
}

/* A lazy grammar starts at its trigger: it takes nothing as written. */
const char *sm_tool_prompt_grammar_prefill(const sm_tool_prompt *p) {
    return sm_tool_prompt_grammar(p) && sm_tool_prompt_n_triggers(p) == 0 ? smj_tool_prompt_generation_prompt(p->prompt)
                                                                          : NULL;
}

int32_t sm_tool_prompt_n_stops(const sm_tool_prompt *p) { return p ? smj_tool_prompt_n_stops(p->prompt) : 0; }

const char *sm_tool_prompt_stop(const sm_tool_prompt *p, int32_t i) {
    return p && i >= 0 && i < smj_tool_prompt_n_stops(p->prompt) ? smj_tool_prompt_stop(p->prompt, i) : NULL;
}

const char *sm_tool_prompt_format(const sm_tool_prompt *p) { return p ? smj_tool_prompt_format(p->prompt) : NULL; }

char *sm_tool_prompt_parse(const sm_tool_prompt *p, const char *text, sm_error *err) {
    if (!p) {
        report(err, SM_ERR_INVALID_ARGUMENT, "sm_tool_prompt_parse: no prompt");
        return NULL;
    }
    char why[sizeof err->message - 16] = "";
    char *json = smj_tool_prompt_parse(p->prompt, text, why, sizeof why);
    if (!json) report(err, SM_ERR_INVALID_ARGUMENT, why);
    return json;
}

char *sm_tool_prompt_deltas(sm_tool_prompt *p, const char *text, bool partial, sm_error *err) {
    if (!p) {
        report(err, SM_ERR_INVALID_ARGUMENT, "sm_tool_prompt_deltas: no prompt");
        return NULL;
    }
    char why[sizeof err->message - 16] = "";
    char *json = smj_tool_prompt_deltas(p->prompt, text, partial, why, sizeof why);
    if (!json) report(err, SM_ERR_INVALID_ARGUMENT, why);
    return json;
}

bool sm_text_has_special_tokens(const sm_model *model, const char *text) {
    sm_tokens parsed, plain;
    size_t len = strlen(text);
    if (sm_tokenize(model, text, len, false, true, &parsed, NULL) != SM_OK) return true; /* cautious */
    if (sm_tokenize(model, text, len, false, false, &plain, NULL) != SM_OK) {
        sm_tokens_free(&parsed);
        return true;
    }
    bool same = parsed.n == plain.n && memcmp(parsed.data, plain.data, sizeof *plain.data * (size_t)plain.n) == 0;
    sm_tokens_free(&parsed);
    sm_tokens_free(&plain);
    return !same;
}
