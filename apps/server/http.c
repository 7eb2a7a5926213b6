#include "server/http.h"
#include "server/api.h"
#include "server/json_util.h"

#include "server/watchdog.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* ------------------------------------------------------------------ */
/* Replies                                                             */
/* ------------------------------------------------------------------ */

reply reply_bytes(unsigned status, const char *content_type, const void *data, size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (r) MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    return (reply){status, r};
}

reply reply_json(unsigned status, cJSON *json) {
    char *text = json_print_and_delete(json);
    if (!text) return (reply){500, NULL};
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return (reply){500, NULL};
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json; charset=utf-8");
    return (reply){status, r};
}

reply reply_error(const api_error *err) {
    unsigned status = err->status ? err->status : 500;
    const char *type = err->type ? err->type : (status >= 500 ? "server_error" : "invalid_request_error");
    cJSON *body = json_error_object(err->message, type, err->param, err->code);
    if (body && err->n_ctx > 0) {
        cJSON *e = cJSON_GetObjectItemCaseSensitive(body, "error");
        cJSON_AddNumberToObject(e, "n_prompt_tokens", err->n_prompt_tokens);
        cJSON_AddNumberToObject(e, "n_ctx", err->n_ctx);
    }
    return reply_json(status, body);
}

reply reply_error_simple(unsigned status, const char *param, const char *message) {
    api_error err = {0};
    api_fail(&err, status, param, "%s", message);
    return reply_error(&err);
}

reply reply_stream(channel *ch) {
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, channel_read, ch, channel_consumer_done);
    if (!r) {
        channel_consumer_done(ch);
        return (reply){500, NULL};
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    return (reply){200, r};
}

/* ------------------------------------------------------------------ */
/* Routing                                                             */
/* ------------------------------------------------------------------ */

typedef enum route_kind { ROUTE_GET, ROUTE_POST } route_kind;

typedef struct route {
    const char *path;
    route_kind kind;
    bool public;                 /* no API key needed */
    reply (*get)(server *srv);
    api_handler post;
    reply (*get_named)(server *srv, const char *name); /* path is a prefix: GET path<name> */
    /* path is a prefix: POST path<name>?action=... */
    reply (*post_named)(server *srv, const char *name, const char *action, const char *body, size_t len);
} route;

static const route ROUTES[] = {
    {"/health", ROUTE_GET, true, api_health, NULL, NULL, NULL},
    {"/v1/health", ROUTE_GET, true, api_health, NULL, NULL, NULL},
    {"/v1/models", ROUTE_GET, false, api_models, NULL, NULL, NULL},
    {"/models", ROUTE_GET, false, api_models, NULL, NULL, NULL},   /* llama-server's unprefixed names too */
    {"/props", ROUTE_GET, false, api_props, NULL, NULL, NULL},
    {"/metrics", ROUTE_GET, false, api_metrics, NULL, NULL, NULL},
    {"/slots", ROUTE_GET, false, api_slots, NULL, NULL, NULL},
    {"/v1/completions", ROUTE_POST, false, NULL, api_completions, NULL, NULL},
    {"/completions", ROUTE_POST, false, NULL, api_llama_completion, NULL, NULL}, /* as llama-server: its own form */
    {"/v1/chat/completions", ROUTE_POST, false, NULL, api_chat_completions, NULL, NULL},
    {"/chat/completions", ROUTE_POST, false, NULL, api_chat_completions, NULL, NULL},
    {"/completion", ROUTE_POST, false, NULL, api_llama_completion, NULL, NULL},
    {"/infill", ROUTE_POST, false, NULL, api_infill, NULL, NULL},
    {"/tokenize", ROUTE_POST, false, NULL, api_tokenize, NULL, NULL},
    {"/v1/embeddings", ROUTE_POST, false, NULL, api_embeddings, NULL, NULL},
    {"/embeddings", ROUTE_POST, false, NULL, api_embeddings, NULL, NULL},
    {"/apply-template", ROUTE_POST, false, NULL, api_apply_template, NULL, NULL},
    {"/chat/completions/input_tokens", ROUTE_POST, false, NULL, api_input_tokens, NULL, NULL},
    {"/v1/chat/completions/input_tokens", ROUTE_POST, false, NULL, api_input_tokens, NULL, NULL},
    {"/detokenize", ROUTE_POST, false, NULL, api_detokenize, NULL, NULL},
    {"/loom/expand", ROUTE_POST, false, NULL, api_loom_expand, NULL, NULL},
    {"/v1/models/", ROUTE_GET, false, NULL, NULL, api_model_named, NULL},
    {"/models/", ROUTE_GET, false, NULL, NULL, api_model_named, NULL},
    {"/slots/", ROUTE_POST, false, NULL, NULL, NULL, api_slot_action},
};

static const route *find_route(const char *url) {
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++) {
        const route *r = &ROUTES[i];
        bool prefix = r->get_named || r->post_named;
        if (prefix ? strncmp(url, r->path, strlen(r->path)) == 0 && url[strlen(r->path)] : strcmp(url, r->path) == 0)
            return r;
    }
    return NULL;
}

/* Compares without stopping at the first difference. */
static bool same_secret(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < la; i++) diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    return diff == 0;
}

static bool authorized(const server *srv, struct MHD_Connection *conn) {
    if (!srv->opt.api_key) return true;
    const char *x_key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Api-Key"); /* Anthropic's clients */
    if (x_key && same_secret(x_key, srv->opt.api_key)) return true;
    const char *auth = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0) return false;
    auth += 7;
    while (*auth == ' ') auth++;
    return same_secret(auth, srv->opt.api_key);
}

static reply unauthorized(void) {
    api_error err = {0};
    api_fail(&err, 401, NULL, "Invalid or missing API key: send 'Authorization: Bearer <key>'");
    err.type = "authentication_error";
    err.code = "invalid_api_key";
    reply r = reply_error(&err);
    if (r.response) MHD_add_response_header(r.response, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    return r;
}

static reply method_not_allowed(const route *rt, const char *method) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s %s is not supported: use %s", method, rt->path, rt->kind == ROUTE_GET ? "GET" : "POST");
    api_error err = {0};
    api_fail(&err, 405, NULL, "%s", msg);
    err.code = "method_not_allowed";
    reply r = reply_error(&err);
    if (r.response) MHD_add_response_header(r.response, MHD_HTTP_HEADER_ALLOW, rt->kind == ROUTE_GET ? "GET, HEAD, OPTIONS" : "POST, OPTIONS");
    return r;
}

reply reply_not_found(const char *what, const char *url) {
    char msg[300];
    snprintf(msg, sizeof msg, "%s: %.200s", what, url);
    api_error err = {0};
    api_fail(&err, 404, NULL, "%s", msg);
    err.code = "not_found";
    return reply_error(&err);
}

static reply too_large(const server *srv) {
    char msg[160];
    snprintf(msg, sizeof msg, "the request body is larger than %zu bytes (--max-body)", srv->opt.max_body);
    api_error err = {0};
    api_fail(&err, 413, NULL, "%s", msg);
    err.code = "request_too_large";
    return reply_error(&err);
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */
/* ------------------------------------------------------------------ */

typedef struct request_state {
    char *body;
    size_t len, cap;
    bool too_large;
    double t_start;
    reply early;          /* refused on its headers alone: sent at once   */
    const char *cors;     /* the Origin to allow in the reply, or NULL    */
    bool counted;         /* in srv->in_flight until it completes          */
} request_state;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void take_body(const server *srv, request_state *rs, const char *data, size_t n) {
    if (rs->too_large) return;
    if (rs->len + n > srv->opt.max_body) {
        rs->too_large = true;
        free(rs->body);
        rs->body = NULL;
        rs->len = rs->cap = 0;
        return;
    }
    if (rs->len + n + 1 > rs->cap) {
        size_t cap = rs->cap ? rs->cap : 4096;
        while (cap < rs->len + n + 1) cap *= 2;
        char *b = realloc(rs->body, cap);
        if (!b) {
            rs->too_large = true; /* cannot hold it either way */
            return;
        }
        rs->body = b;
        rs->cap = cap;
    }
    memcpy(rs->body + rs->len, data, n);
    rs->len += n;
    rs->body[rs->len] = '\0';
}

static const char *header(struct MHD_Connection *conn, const char *name) {
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
}

static int client_fd(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info ? info->connect_fd : -1;
}

static reply refuse(unsigned status, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static reply refuse(unsigned status, const char *code, const char *fmt, ...) {
    api_error err = {0};
    api_fail(&err, status, NULL, "%s", "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err.message, sizeof err.message, fmt, ap);
    va_end(ap);
    err.code = code;
    return reply_error(&err);
}

/* Two Content-Length headers that differ: a proxy and this server could
 * read different bodies (request smuggling). */
typedef struct length_check {
    const char *first;
    bool conflict;
} length_check;

static enum MHD_Result check_length_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
    (void)kind;
    length_check *c = cls;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) != 0) return MHD_YES;
    if (!c->first) c->first = value ? value : "";
    else if (strcmp(c->first, value ? value : "") != 0) c->conflict = true;
    return MHD_YES;
}

/* "localhost", "127.0.0.1", "[::1]" ... with or without a port. */
static bool is_loopback_host(const char *host) {
    char name[256];
    snprintf(name, sizeof name, "%s", host);
    char *end = name[0] == '[' ? strchr(name, ']') : strrchr(name, ':');
    if (name[0] == '[' && end) end[1] = '\0';
    else if (end && strchr(name, ':') == end) *end = '\0'; /* host:port, not a bare IPv6 */
    return strcasecmp(name, "localhost") == 0 || strncmp(name, "127.", 4) == 0 || strcmp(name, "[::1]") == 0 ||
           strcmp(name, "::1") == 0;
}

/* http(s)://localhost, 127.x.x.x or [::1], with any port. */
static bool is_loopback_origin(const char *origin) {
    const char *host = strncasecmp(origin, "http://", 7) == 0 ? origin + 7 : strncasecmp(origin, "https://", 8) == 0 ? origin + 8 : NULL;
    if (!host) return false;
    size_t n = strcspn(host, "/");
    char name[128];
    if (n >= sizeof name) return false;
    memcpy(name, host, n);
    name[n] = '\0';
    return is_loopback_host(name) && (strncasecmp(name, "localhost", 9) != 0 || name[9] == '\0' || name[9] == ':');
}

/* Whether a page from `origin` may call the API: its own pages (the
 * origin is this server, as the Host header names it) or an origin the
 * operator listed with --cors-origins. */
static bool origin_allowed(const server *srv, const char *origin, const char *host) {
    if (host && strncasecmp(origin, "http://", 7) == 0 && strcasecmp(origin + 7, host) == 0) return true;
    const char *list = srv->opt.cors_origins;
    if (!list) return false;
    if (strcmp(list, "*") == 0) return true;
    size_t n = strlen(origin);
    for (const char *p = list; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len > 0 && p[len - 1] == '/') len--;
        if (len == n && strncasecmp(p, origin, n) == 0) return true;
        /* "localhost": a page on this machine, any port, as llama-server's --cors-origins localhost */
        if (len == 9 && strncasecmp(p, "localhost", 9) == 0 && is_loopback_origin(origin)) return true;
        if (!comma) break;
        p = comma + 1;
        while (*p == ' ') p++;
    }
    return false;
}

static bool is_json_type(const char *type) {
    if (!type) return false;
    while (*type == ' ') type++;
    return strncasecmp(type, "application/json", 16) == 0 && (type[16] == '\0' || type[16] == ';' || type[16] == ' ');
}

/*
 * Everything that can be decided on the headers, before a byte of the body
 * is read: framing, Host, Origin, the route, the API key, the content
 * type and the declared length. Returns a reply to send at once, or one
 * with status 0 to go on.
 */
static reply check_headers(server *srv, struct MHD_Connection *conn, const char *url, const char *method,
                           request_state *rs) {
    length_check lengths = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, check_length_header, &lengths);
    if (lengths.conflict) return refuse(400, "bad_request", "two different Content-Length headers");
    const char *te = header(conn, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if (te && strcasecmp(te, "chunked") != 0)
        return refuse(501, "not_implemented", "Transfer-Encoding '%.60s' is not supported (only chunked)", te);
    const char *host = header(conn, MHD_HTTP_HEADER_HOST);
    /* A page on another site may resolve its own name to 127.0.0.1 (DNS
     * rebinding): a loopback server answers only loopback names. */
    if (srv->loopback_only && host && !is_loopback_host(host))
        return refuse(403, "forbidden", "Host '%.100s' is not this server (it listens on loopback only)", host);
    const char *origin = header(conn, "Origin");
    if (origin) {
        bool allowed = origin_allowed(srv, origin, host);
        /* A preflight is answered either way: without the CORS headers the
         * browser keeps the page out. Anything else from such a page is refused. */
        if (!allowed && strcmp(method, "OPTIONS") != 0)
            return refuse(403, "forbidden", "pages from origin '%.100s' may not use this server (see --cors-origins)",
                          origin);
        if (allowed) rs->cors = origin;
    }
    bool is_post = strcmp(method, "POST") == 0;
    const route *rt = find_route(url);
    if (!rt || strcmp(method, "OPTIONS") == 0) return (reply){0, NULL};
    if (!rt->public && !authorized(srv, conn)) return unauthorized();
    if (!is_post || rt->kind != ROUTE_POST) return (reply){0, NULL};
    const char *type = header(conn, MHD_HTTP_HEADER_CONTENT_TYPE);
    /* Browsers send text/plain and form bodies to any site without asking
     * first; JSON needs their preflight. curl -d's form type is accepted
     * only from clients that are no browser (no Origin). */
    bool curl_form = !origin && (!type || strncasecmp(type, "application/x-www-form-urlencoded", 33) == 0);
    if (!is_json_type(type) && !curl_form)
        return refuse(415, "unsupported_media_type", "send the body as JSON with 'Content-Type: application/json'%s%.60s",
                      type ? "; got " : "", type ? type : "");
    const char *length = header(conn, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length && strtoull(length, NULL, 10) > srv->opt.max_body) return too_large(srv);
    return (reply){0, NULL};
}

/* 503 while the models load (llama-server's answer) and while a shutdown
 * drains: a proxy's health check takes the replica out, a client retries. */
static reply unavailable(const server *srv) {
    api_error err = {0};
    bool loading = atomic_load(&srv->loading);
    api_fail(&err, 503, NULL, loading ? "Loading model" : "the server is shutting down");
    err.type = "unavailable_error";
    reply r = reply_error(&err);
    if (r.response) MHD_add_response_header(r.response, "Retry-After", "1");
    return r;
}

static reply dispatch(server *srv, struct MHD_Connection *conn, const char *url, const char *method,
                      request_state *rs) {
    if (atomic_load(&srv->loading) || atomic_load(&srv->draining)) return unavailable(srv);
    bool is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    const route *rt = find_route(url);
    if (!rt) return is_get ? static_file(srv, url) : reply_not_found("no such endpoint", url);
    if (!rt->public && !authorized(srv, conn)) return unauthorized();
    if (rt->kind == ROUTE_GET && rt->get_named)
        return is_get ? rt->get_named(srv, url + strlen(rt->path)) : method_not_allowed(rt, method);
    if (rt->kind == ROUTE_GET) return is_get ? rt->get(srv) : method_not_allowed(rt, method);
    if (strcmp(method, "POST") != 0) return method_not_allowed(rt, method);
    if (rs->too_large) return too_large(srv);
    if (rt->post_named)
        return rt->post_named(srv, url + strlen(rt->path), MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "action"),
                              rs->body ? rs->body : "", rs->len);
    return rt->post(srv, client_fd(conn), rs->body ? rs->body : "", rs->len);
}

static enum MHD_Result queue(server *srv, struct MHD_Connection *conn, reply r, const char *method, const char *url,
                             const request_state *rs) {
    if (!r.response) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
        r = reply_bytes(500, "application/json", oom, sizeof oom - 1);
        if (!r.response) return MHD_NO;
    }
    if (rs->cors) { /* an allowed page of another origin (or this one) */
        MHD_add_response_header(r.response, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, rs->cors);
        MHD_add_response_header(r.response, MHD_HTTP_HEADER_VARY, "Origin");
    }
    enum MHD_Result result = MHD_queue_response(conn, r.status, r.response);
    MHD_destroy_response(r.response);
    if (!srv->opt.quiet)
        fprintf(stderr, "[serve] %s %.200s -> %u (%.1f ms)\n", method, url, r.status, now_ms() - rs->t_start);
    return result;
}

/* The answer to a browser's preflight: for an allowed origin, what it may
 * send (queue adds the origin itself); otherwise nothing that allows. */
static reply preflight(bool allowed) {
    reply r = reply_bytes(200, "text/plain", "", 0);
    if (r.response && allowed) {
        MHD_add_response_header(r.response, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        MHD_add_response_header(r.response, "Access-Control-Allow-Headers", "*");
        MHD_add_response_header(r.response, "Access-Control-Allow-Credentials", "true");
        MHD_add_response_header(r.response, "Access-Control-Max-Age", "86400");
    }
    return r;
}

static watched *connection_watch(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? info->socket_context : NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)version;
    server *srv = cls;
    request_state *rs = *con_cls;
    if (!rs) {
        rs = calloc(1, sizeof *rs);
        if (!rs) return MHD_NO;
        rs->t_start = now_ms();
        *con_cls = rs;
        watchdog_headers_read(&srv->watchdog, connection_watch(conn));
        rs->early = check_headers(srv, conn, url, method, rs);
        if (rs->early.status == 0) return MHD_YES;
        /* Refused on its headers: answered now, the body never read (the
         * connection is closed after the reply). */
        atomic_fetch_add(&srv->n_requests, 1);
        if (rs->early.response) MHD_add_response_header(rs->early.response, MHD_HTTP_HEADER_CONNECTION, "close");
        reply early = rs->early;
        rs->early.response = NULL;
        return queue(srv, conn, early, method, url, rs);
    }
    if (*upload_data_size > 0) {
        take_body(srv, rs, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (rs->early.status != 0) return MHD_YES; /* already answered */
    watchdog_answering(&srv->watchdog, connection_watch(conn));
    atomic_fetch_add(&srv->n_requests, 1);
    if (strcmp(method, "OPTIONS") == 0) return queue(srv, conn, preflight(rs->cors != NULL), method, url, rs);
    /* in flight until its connection's request completes (a stream: its end) */
    rs->counted = true;
    atomic_fetch_add(&srv->in_flight, 1);
    return queue(srv, conn, dispatch(srv, conn, url, method, rs), method, url, rs);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)toe;
    server *srv = cls;
    request_state *rs = *con_cls;
    if (rs) {
        if (rs->counted) atomic_fetch_sub(&srv->in_flight, 1);
        free(rs->body);
        free(rs);
    }
    *con_cls = NULL;
    watchdog_request_done(&srv->watchdog, connection_watch(conn));
}

/* Every connection is watched from its start to its end (watchdog.c). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    server *srv = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) *socket_context = watchdog_add(&srv->watchdog, client_fd(conn));
    else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        watchdog_remove(&srv->watchdog, *socket_context);
        *socket_context = NULL;
    }
}

/* ------------------------------------------------------------------ */

static bool is_loopback_address(const struct sockaddr_storage *addr) {
    if (addr->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr) >> 24) == 127;
    if (addr->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)addr)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a);
    }
    return false;
}

static bool resolve_host(const char *host, int port, struct sockaddr_storage *addr, socklen_t *len, int *family,
                         char *err, size_t err_size) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, err_size, "cannot resolve --host '%s': %s", host, gai_strerror(rc));
        return false;
    }
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    *family = res->ai_family;
    freeaddrinfo(res);
    return true;
}

/* One daemon on one address (port 0: any free port). */
static struct MHD_Daemon *listen_on(server *srv, const struct sockaddr_storage *addr, int family, int port) {
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (family == AF_INET6) flags |= MHD_USE_IPv6;
    return MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, on_request, srv,
                                            MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)addr,
                                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                                            MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
                                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)srv->opt.max_connections,
                                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024),
                                            MHD_OPTION_END);
}

int http_start(server *srv, struct MHD_Daemon **daemons, int max, char *err, size_t err_size) {
    /* --host A,B: one daemon per address, all on one port (the first's
     * when --port is 0); loopback-only when every address is loopback */
    char hosts[512];
    snprintf(hosts, sizeof hosts, "%s", srv->opt.host);
    struct sockaddr_storage addrs[8];
    int families[8], n = 0, port = srv->opt.port;
    srv->loopback_only = true;
    for (char *save = NULL, *h = strtok_r(hosts, ",", &save); h; h = strtok_r(NULL, ",", &save)) {
        if (n == max || n == 8) {
            snprintf(err, err_size, "--host: more than %d addresses", n);
            return 0;
        }
        socklen_t len;
        if (!resolve_host(h, port, &addrs[n], &len, &families[n], err, err_size)) return 0;
        srv->loopback_only = srv->loopback_only && is_loopback_address(&addrs[n]);
        n++;
    }
    if (n == 0) {
        snprintf(err, err_size, "--host: no address");
        return 0;
    }
    if (!watchdog_start(&srv->watchdog, srv->opt.header_timeout)) {
        snprintf(err, err_size, "cannot start the connection watchdog thread");
        return 0;
    }
    for (int i = 0; i < n; i++) {
        if (i > 0 && port == 0) { /* the port the first one took */
            port = http_bound_port(daemons[0]);
            if (families[i] == AF_INET6) ((struct sockaddr_in6 *)&addrs[i])->sin6_port = htons((uint16_t)port);
            else ((struct sockaddr_in *)&addrs[i])->sin_port = htons((uint16_t)port);
        }
        if (!(daemons[i] = listen_on(srv, &addrs[i], families[i], port))) {
            for (int k = 0; k < i; k++) MHD_stop_daemon(daemons[k]);
            watchdog_stop(&srv->watchdog);
            snprintf(err, err_size, "cannot listen on %s:%d (in use, or not an address of this machine)", srv->opt.host,
                     port);
            return 0;
        }
    }
    return n;
}

int http_bound_port(struct MHD_Daemon *daemon) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info ? (int)info->port : -1;
}
