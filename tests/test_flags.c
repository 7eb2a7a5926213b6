/* The command line parsed from several threads at once, as libselfmod_cli
 * does for Python's generate_many: each parse gives its own flags' values.
 * getopt keeps its place in the C library, one for the process; without the
 * parser's lock one thread's parse moves another's (it loses its prompt, or
 * reads the next flag's name as a value). */
#include "cli/args.h"
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

enum { N_THREADS = 4, N_PARSES = 3000 };

typedef struct {
    int id;
    int n_wrong;
    FILE *sink;
} parser_job;

static void *parse_many(void *arg) {
    parser_job *job = arg;
    char prompt[32], n_predict[16], top_k[16];
    snprintf(prompt, sizeof prompt, "prompt of thread %d", job->id);
    snprintf(n_predict, sizeof n_predict, "%d", 10 + job->id);
    snprintf(top_k, sizeof top_k, "%d", 20 + job->id);
    for (int i = 0; i < N_PARSES; i++) {
        /* getopt permutes argv: a fresh one each time */
        char *argv[] = {"llama_selfmod", "--quiet", "-n", n_predict, "--top-k", top_k, "-p", prompt,
                        "--no-memory", "-s", "5", NULL};
        cli_options opt;
        cli_parse_outcome outcome = cli_parse_args(11, argv, &opt, job->sink);
        if (outcome != CLI_PARSE_RUN || !opt.prompt || strcmp(opt.prompt, prompt) != 0 ||
            opt.gen.n_predict != 10 + job->id || opt.gen.sampling.top_k != 20 + job->id ||
            opt.gen.sampling.seed != 5)
            job->n_wrong++;
        cli_options_free(&opt);
    }
    return NULL;
}

static void test_parses_on_threads_keep_apart(void **state) {
    (void)state;
    FILE *sink = fopen("/dev/null", "w");
    assert_non_null(sink);
    pthread_t threads[N_THREADS];
    parser_job jobs[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        jobs[t] = (parser_job){.id = t, .sink = sink};
        assert_int_equal(pthread_create(&threads[t], NULL, parse_many, &jobs[t]), 0);
    }
    int n_wrong = 0;
    for (int t = 0; t < N_THREADS; t++) {
        pthread_join(threads[t], NULL);
        n_wrong += jobs[t].n_wrong;
    }
    fclose(sink);
    assert_int_equal(n_wrong, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_parses_on_threads_keep_apart)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
