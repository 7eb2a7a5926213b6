/* The web page: files of one folder, served at / with their content types. */
#include "server/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *content_type(const char *name) {
    static const struct { const char *ext, *type; } TYPES[] = {
        {".html", "text/html; charset=utf-8"},       {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},         {".json", "application/json; charset=utf-8"},
        {".svg", "image/svg+xml"},                   {".png", "image/png"},
        {".ico", "image/x-icon"},                    {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof TYPES / sizeof TYPES[0]; i++)
        if (strcmp(dot, TYPES[i].ext) == 0) return TYPES[i].type;
    return "application/octet-stream";
}

/* Only plain names: letters, digits, '-', '_' and '.', not starting with
 * '.', so nothing outside the folder can be named. */
static bool safe_name(const char *name) {
    if (!*name || *name == '.' || strlen(name) > 128) return false;
    for (const char *c = name; *c; c++) {
        bool ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '-' ||
                  *c == '_' || *c == '.';
        if (!ok) return false;
    }
    return true;
}

reply static_file(server *srv, const char *url) {
    const char *name = strcmp(url, "/") == 0 ? "index.html" : url + 1;
    if (srv->opt.no_ui || !srv->web_dir[0] || url[0] != '/' || !safe_name(name))
        return reply_not_found("no such endpoint or file", url);
    char path[PATH_MAX + 160];
    snprintf(path, sizeof path, "%s/%s", srv->web_dir, name);
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (64 << 20)) {
        if (f) fclose(f);
        return reply_not_found("no such endpoint or file", url);
    }
    size_t size = (size_t)st.st_size;
    char *data = malloc(size ? size : 1);
    size_t got = data ? fread(data, 1, size, f) : 0;
    fclose(f);
    if (!data || got != size) {
        free(data);
        return reply_error_simple(500, NULL, "cannot read the file");
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(size, data, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(data);
        return (reply){500, NULL};
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type(name));
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    return (reply){200, r};
}
