/* The context layer's parallel decode (src/context.c): when any model of a
 * set fails, no model keeps any part of the batch, and the failure names
 * the first model that failed. Fake decodes stand in for llama.cpp here;
 * the real ones are covered by test_fusion (several models) and test_tree
 * (a level that does not fit, then an expansion as if nothing happened). */
#include "testutil.h"

#include <ggml-backend.h>
#include <llama.h>

/* src/internal.h (not public) */
typedef struct sm_pool sm_pool;
sm_pool *sm_pool_new(int32_t n_workers);
void sm_pool_free(sm_pool *pool);
int32_t sm_models_decode(sm_pool *pool, int32_t n_models, int32_t (*decode)(void *arg, int32_t m),
                         void (*undo)(void *arg, int32_t m), void *arg, int32_t *failed);
int sm_cpu_probe_products(ggml_backend_buffer_type_t buft);

typedef struct fake {
    int32_t codes[4];     /* what each model's decode returns */
    int32_t decoded[4];   /* cells each model holds           */
} fake;

static int32_t fake_decode(void *arg, int32_t m) {
    fake *f = arg;
    f->decoded[m] += 3; /* a failing decode may keep part of the batch, too */
    return f->codes[m];
}

static void fake_undo(void *arg, int32_t m) {
    fake *f = arg;
    f->decoded[m] = 0;
}

static void test_one_failure_undoes_every_model(void **state) {
    (void)state;
    sm_pool *pool = sm_pool_new(3);
    for (int32_t bad = -1; bad < 4; bad++) {
        fake f = {{0}, {0}};
        if (bad >= 0) f.codes[bad] = bad == 2 ? 1 : -3;
        if (bad == 1) f.codes[3] = 7; /* two fail: the first is reported */
        int32_t failed = 99;
        int32_t rc = sm_models_decode(pool, 4, fake_decode, fake_undo, &f, &failed);
        if (bad < 0) {
            assert_int_equal(rc, 0);
            assert_int_equal(failed, -1);
            for (int32_t m = 0; m < 4; m++) assert_int_equal(f.decoded[m], 3);
            continue;
        }
        assert_int_equal(failed, bad);
        assert_int_equal(rc, f.codes[bad]);
        for (int32_t m = 0; m < 4; m++) assert_int_equal(f.decoded[m], 0);
    }
    /* one model, no pool */
    fake one = {{-1}, {0}};
    int32_t failed;
    assert_int_equal(sm_models_decode(NULL, 1, fake_decode, fake_undo, &one, &failed), -1);
    assert_int_equal(failed, 0);
    assert_int_equal(one.decoded[0], 0);
    sm_pool_free(pool);
}

/* The AMX probe's own arithmetic (src/cpu_probe.c): products of every
 * type it tries, in a buffer that works, pass its comparison (a probe that
 * failed them would take the AMX speed from every healthy machine). The
 * AMX buffer itself is only ever tried in a child process; the models
 * that made this machine's AMX crash are in test_quantized.sh. */
static void test_cpu_probe_accepts_working_buffers(void **state) {
    (void)state;
    llama_backend_init();
    assert_int_equal(sm_cpu_probe_products(ggml_backend_cpu_buffer_type()), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_failure_undoes_every_model),
        cmocka_unit_test(test_cpu_probe_accepts_working_buffers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
