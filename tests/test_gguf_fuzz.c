/*
 * GGUF metadata fuzzing: copies of real models with one metadata value
 * changed (to 0, -1, huge, NaN, another type, or removed) are loaded and
 * run in a child process each. Whatever the file says, loading must end in
 * a clean error or a working model: never a signal (GGML_ASSERT aborts,
 * uncaught C++ exceptions, segfaults) and never a hang.
 *
 *   SM_FUZZ_VARIANTS  variants per model (default 120)
 *   SM_FUZZ_SEED      seed (default 1)
 * The same seed gives the same variants, so a failure can be replayed.
 */
#include "testutil.h"

#include "gguf.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t rng_state;

static uint64_t next_random(void) {
    uint64_t x = rng_state += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static uint64_t env_u64(const char *name, uint64_t fallback) {
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : fallback;
}

/* The original's bytes from its tensor data on, to follow new metadata. */
typedef struct source {
    const char *name;
    char *bytes;
    size_t size;
    size_t data_offset;
} source;

static void read_source(source *src, const char *name) {
    src->name = name;
    const char *path = tu_model_path(name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    src->size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    src->bytes = malloc(src->size);
    assert_non_null(src->bytes);
    assert_int_equal(fread(src->bytes, 1, src->size, f), src->size);
    fclose(f);
    struct gguf_init_params gp = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_file(path, gp);
    assert_non_null(g);
    src->data_offset = gguf_get_data_offset(g);
    gguf_free(g);
}

/* Writes the model with ctx's metadata (and the original tensor data). */
static void write_variant(const source *src, const struct gguf_context *ctx, const char *out) {
    size_t meta = gguf_get_meta_size(ctx);
    char *buf = malloc(meta);
    assert_non_null(buf);
    gguf_get_meta_data(ctx, buf);
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    fwrite(buf, 1, meta, f);
    fwrite(src->bytes + src->data_offset, 1, src->size - src->data_offset, f);
    fclose(f);
    free(buf);
}

/* What the child reports: 0 loaded and generated, 1 refused cleanly. */
static int load_and_run(const char *path, char *message, size_t size) {
    sm_error err = {0};
    sm_model *m = sm_model_load(path, NULL, &err);
    if (!m) {
        snprintf(message, size, "%s", err.message);
        return 1;
    }
    sm_session_params sp = tu_session_params(64);
    sm_session *s = sm_session_new(m, &sp, &err);
    int rc = 1;
    if (s) {
        sm_gen_params gp = tu_greedy_params(4);
        sm_result r;
        rc = sm_session_generate(s, "Once upon a time", &gp, &r) == SM_OK ? 0 : 1;
        if (rc) snprintf(message, size, "%s", sm_session_last_error(s));
        sm_result_free(&r);
        sm_session_free(s);
    } else {
        snprintf(message, size, "%s", err.message);
    }
    sm_model_free(m);
    return rc;
}

typedef struct tally {
    int loaded, refused, crashed;
} tally;

/* Runs one variant in a child; a signal or a hang is a crash. Returns
 * the child's exit code (-1 for a crash); the message goes to expect. */
static int run_variant(const char *path, const char *what, tally *t, char *message, size_t size) {
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        alarm(60); /* a hang is a failure too */
        char msg[512] = "";
        int rc = load_and_run(path, msg, sizeof msg);
        if (write(fds[1], msg, strlen(msg)) < 0) rc = 3;
        _exit(rc);
    }
    close(fds[1]);
    ssize_t got = read(fds[0], message, size - 1);
    message[got > 0 ? got : 0] = '\0';
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "CRASH (signal %d) on %s\n", WTERMSIG(status), what);
        t->crashed++;
        return -1;
    }
    int code = WEXITSTATUS(status);
    if (getenv("SM_FUZZ_VERBOSE")) fprintf(stderr, "[%s] %s: %s\n", code == 0 ? "ran" : "refused", what, message);
    if (code == 0) t->loaded++;
    else if (code == 1) t->refused++;
    else {
        fprintf(stderr, "child exit %d on %s\n", code, what);
        t->crashed++;
        return -1;
    }
    return code;
}

static struct gguf_context *open_meta(const source *src) {
    struct gguf_init_params gp = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *g = gguf_init_from_file(tu_model_path(src->name), gp);
    assert_non_null(g);
    return g;
}

static const char *arch_of(const struct gguf_context *g) {
    return gguf_get_val_str(g, gguf_find_key(g, "general.architecture"));
}

/* ------------------------------------------------------------------ */
/* The cases the issue names: each a clean error naming the field      */
/* ------------------------------------------------------------------ */

typedef struct named_case {
    const char *suffix; /* after "<arch>." */
    bool is_float;
    double value;
} named_case;

static void test_named_corruptions(void **state) {
    (void)state;
    source src;
    read_source(&src, "stories260K.gguf");
    const named_case cases[] = {
        {"block_count", false, 0},          {"block_count", false, 5000},
        {"block_count", false, 2147483647}, {"attention.head_count", false, 0},
        {"attention.head_count_kv", false, 0}, {"attention.head_count", false, 7},
        {"embedding_length", false, 0},     {"attention.layer_norm_rms_epsilon", true, NAN},
        {"attention.layer_norm_rms_epsilon", true, -1}, {"context_length", false, 0},
    };
    char path[] = "/tmp/sm_gguf_named_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    tally t = {0};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct gguf_context *g = open_meta(&src);
        char key[128];
        snprintf(key, sizeof key, "%s.%s", arch_of(g), cases[i].suffix);
        if (cases[i].is_float) gguf_set_val_f32(g, key, (float)cases[i].value);
        else gguf_set_val_u32(g, key, (uint32_t)cases[i].value);
        write_variant(&src, g, path);
        gguf_free(g);
        char what[160], message[512];
        snprintf(what, sizeof what, "%s = %g", key, cases[i].value);
        int code = run_variant(path, what, &t, message, sizeof message);
        assert_int_equal(code, 1);
        if (!strstr(message, cases[i].suffix)) fail_msg("%s: the error does not name the field: %s", what, message);
    }
    unlink(path);
    free(src.bytes);
}

/* ------------------------------------------------------------------ */
/* Random mutations                                                    */
/* ------------------------------------------------------------------ */

static const double INTERESTING[] = {0, 1, 2, 3, -1, 7, 255, 256, 511, 512, 513, 1023, 4096, 65535, 65536,
                                     2147483647.0, 4294967295.0, 1e9};

/* Changes one value of g, describing what in `what`. */
static void mutate(struct gguf_context *g, char *what, size_t size) {
    int64_t n_kv = gguf_get_n_kv(g);
    for (int attempt = 0; attempt < 64; attempt++) {
        int64_t id = (int64_t)(next_random() % (uint64_t)n_kv);
        const char *key = gguf_get_key(g, id);
        if (strcmp(key, "general.architecture") == 0 || strcmp(key, "general.alignment") == 0) continue;
        char k[256];
        snprintf(k, sizeof k, "%s", key);
        enum gguf_type t = gguf_get_kv_type(g, id);
        uint64_t pick = next_random() % 10;
        if (pick == 0) { /* gone */
            gguf_remove_key(g, k);
            snprintf(what, size, "%s removed", k);
            return;
        }
        if (pick == 1) { /* another type */
            gguf_set_val_str(g, k, "fuzz");
            snprintf(what, size, "%s = \"fuzz\" (was %s)", k, gguf_type_name(t));
            return;
        }
        if (t == GGUF_TYPE_FLOAT32 || t == GGUF_TYPE_FLOAT64) {
            const float fl[] = {NAN, INFINITY, -INFINITY, -1.0f, 0.0f, 1e30f, -1e-30f, 1e-45f};
            float v = fl[next_random() % (sizeof fl / sizeof *fl)];
            gguf_set_val_f32(g, k, v);
            snprintf(what, size, "%s = %g", k, v);
            return;
        }
        if (t == GGUF_TYPE_UINT32 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_UINT64 || t == GGUF_TYPE_UINT16 ||
            t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_INT64 || t == GGUF_TYPE_BOOL) {
            uint32_t v = next_random() % 4 == 0 ? (uint32_t)next_random()
                                                : (uint32_t)(int64_t)INTERESTING[next_random() % (sizeof INTERESTING / sizeof *INTERESTING)];
            if (t == GGUF_TYPE_INT32) gguf_set_val_i32(g, k, (int32_t)v);
            else gguf_set_val_u32(g, k, v);
            snprintf(what, size, "%s = %u", k, v);
            return;
        }
        if (t == GGUF_TYPE_ARRAY && gguf_get_arr_type(g, id) != GGUF_TYPE_STRING) {
            /* a numeric array (scores, token types, per-layer counts): cut it short */
            size_t n = gguf_get_arr_n(g, id);
            size_t keep = n ? next_random() % n : 0;
            enum gguf_type at = gguf_get_arr_type(g, id);
            size_t elem = at == GGUF_TYPE_FLOAT32 || at == GGUF_TYPE_INT32 || at == GGUF_TYPE_UINT32 ? 4 : 1;
            if (elem == 1 && at != GGUF_TYPE_UINT8 && at != GGUF_TYPE_INT8 && at != GGUF_TYPE_BOOL) continue;
            void *copy = malloc(keep * elem + 1);
            memcpy(copy, gguf_get_arr_data(g, id), keep * elem);
            gguf_set_arr_data(g, k, at, copy, keep);
            free(copy);
            snprintf(what, size, "%s cut from %zu to %zu entries", k, n, keep);
            return;
        }
    }
    snprintf(what, size, "(no change)");
}

static void fuzz_model(const char *name, int n_variants, tally *t) {
    source src;
    read_source(&src, name);
    char path[] = "/tmp/sm_gguf_fuzz_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    for (int v = 0; v < n_variants; v++) {
        struct gguf_context *g = open_meta(&src);
        char what[320], label[400], message[512];
        int n_changes = 1 + (int)(next_random() % 2);
        size_t used = 0;
        label[0] = '\0';
        for (int c = 0; c < n_changes; c++) {
            mutate(g, what, sizeof what);
            used += (size_t)snprintf(label + used, sizeof label - used, "%s%s", c ? "; " : "", what);
            if (used >= sizeof label) used = sizeof label - 1;
        }
        write_variant(&src, g, path);
        gguf_free(g);
        char full[480];
        snprintf(full, sizeof full, "%s: %s", name, label);
        run_variant(path, full, t, message, sizeof message);
    }
    unlink(path);
    free(src.bytes);
}

/* Truncated files: every prefix length class, from the header on. */
static void fuzz_truncations(const char *name, int n_variants, tally *t) {
    source src;
    read_source(&src, name);
    char path[] = "/tmp/sm_gguf_trunc_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    for (int v = 0; v < n_variants; v++) {
        size_t cut = v < 8 ? (size_t)v * 3 : (size_t)(next_random() % src.size);
        FILE *f = fopen(path, "wb");
        fwrite(src.bytes, 1, cut, f);
        fclose(f);
        char what[128], message[512];
        snprintf(what, sizeof what, "%s cut to %zu bytes", name, cut);
        run_variant(path, what, t, message, sizeof message);
    }
    unlink(path);
    free(src.bytes);
}

static void test_random_metadata(void **state) {
    (void)state;
    int n = (int)env_u64("SM_FUZZ_VARIANTS", 120);
    rng_state = env_u64("SM_FUZZ_SEED", 1);
    tally t = {0};
    const char *models[] = {"stories260K.gguf", "tinystories-656K.gguf", "babyllama-tok105-1M.gguf"};
    for (size_t i = 0; i < sizeof models / sizeof *models; i++) fuzz_model(models[i], n, &t);
    fuzz_model("cardputer-chat-3M.gguf", n / 4 + 1, &t); /* gpt2: other keys, learned positions */
    fuzz_truncations("stories260K.gguf", n / 4 + 8, &t);
    printf("gguf fuzz (seed %llu): %d variants loaded and ran, %d refused cleanly, %d crashed\n",
           (unsigned long long)env_u64("SM_FUZZ_SEED", 1), t.loaded, t.refused, t.crashed);
    assert_int_equal(t.crashed, 0);
}

int main(void) {
    sm_set_llama_logging(false);
    /* one load here first: the machine's AMX probe (src/cpu_probe.c) runs
     * once in this process, and the variants' children inherit its answer */
    sm_model_free(tu_load_model("stories260K.gguf"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_named_corruptions),
        cmocka_unit_test(test_random_metadata),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
