#include "server/http.h"
#include "server/api.h"
#include "server/json_util.h"

#include <arpa/inet.h>
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
    return reply_json(status, json_error_object(err->message, type, err->param, err->code));
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
} route;

static const route ROUTES[] = {
    {"/health", ROUTE_GET, true, api_health, NULL},
    {"/v1/health", ROUTE_GET, true, api_health, NULL},
    {"/v1/models", ROUTE_GET, false, api_models, NULL},
    {"/props", ROUTE_GET, false, api_props, NULL},
    {"/v1/completions", ROUTE_POST, false, NULL, api_completions},
    {"/v1/chat/completions", ROUTE_POST, false, NULL, api_chat_completions},
    {"/completion", ROUTE_POST, false, NULL, api_llama_completion},
    {"/tokenize", ROUTE_POST, false, NULL, api_tokenize},
    {"/detokenize", ROUTE_POST, false, NULL, api_detokenize},
    {"/loom/expand", ROUTE_POST, false, NULL, api_loom_expand},
};

static const route *find_route(const char *url) {
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++)
        if (strcmp(url, ROUTES[i].path) == 0) return &ROUTES[i];
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

static reply dispatch(server *srv, struct MHD_Connection *conn, const char *url, const char *method,
                      request_state *rs) {
    bool is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    const route *rt = find_route(url);
    if (!rt) return is_get ? static_file(srv, url) : reply_not_found("no such endpoint", url);
    if (!rt->public && !authorized(srv, conn)) return unauthorized();
    if (rt->kind == ROUTE_GET) return is_get ? rt->get(srv) : method_not_allowed(rt, method);
    if (strcmp(method, "POST") != 0) return method_not_allowed(rt, method);
    if (rs->too_large) return too_large(srv);
    return rt->post(srv, rs->body ? rs->body : "", rs->len);
}

static enum MHD_Result queue(server *srv, struct MHD_Connection *conn, reply r, const char *method, const char *url,
                             const request_state *rs) {
    if (!r.response) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
        r = reply_bytes(500, "application/json", oom, sizeof oom - 1);
        if (!r.response) return MHD_NO;
    }
    MHD_add_response_header(r.response, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    enum MHD_Result result = MHD_queue_response(conn, r.status, r.response);
    MHD_destroy_response(r.response);
    if (!srv->opt.quiet)
        fprintf(stderr, "[serve] %s %s -> %u (%.1f ms)\n", method, url, r.status, now_ms() - rs->t_start);
    return result;
}

static reply preflight(void) {
    reply r = reply_bytes(204, "text/plain", "", 0);
    if (r.response) {
        MHD_add_response_header(r.response, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        MHD_add_response_header(r.response, "Access-Control-Allow-Headers", "Authorization, Content-Type");
        MHD_add_response_header(r.response, "Access-Control-Max-Age", "86400");
    }
    return r;
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
        const char *length = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (length && strtoull(length, NULL, 10) > srv->opt.max_body) rs->too_large = true;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        take_body(srv, rs, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    atomic_fetch_add(&srv->n_requests, 1);
    if (strcmp(method, "OPTIONS") == 0) return queue(srv, conn, preflight(), method, url, rs);
    return queue(srv, conn, dispatch(srv, conn, url, method, rs), method, url, rs);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls;
    (void)conn;
    (void)toe;
    request_state *rs = *con_cls;
    if (rs) {
        free(rs->body);
        free(rs);
    }
    *con_cls = NULL;
}

/* ------------------------------------------------------------------ */

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

struct MHD_Daemon *http_start(server *srv, char *err, size_t err_size) {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int family;
    if (!resolve_host(srv->opt.host, srv->opt.port, &addr, &addr_len, &family, err, err_size)) return NULL;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (family == AF_INET6) flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d = MHD_start_daemon(flags, (uint16_t)srv->opt.port, NULL, NULL, on_request, srv,
                                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024),
                                            MHD_OPTION_END);
    if (!d) snprintf(err, err_size, "cannot listen on %s:%d (in use, or not an address of this machine)",
                     srv->opt.host, srv->opt.port);
    return d;
}

int http_bound_port(struct MHD_Daemon *daemon) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info ? (int)info->port : -1;
}
