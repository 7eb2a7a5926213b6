/*
 * add_fim_tokens - a copy of a GGUF model whose metadata names three of
 * its tokens as the fill-in-the-middle prefix, suffix and middle tokens
 * (tokenizer.ggml.fim_{pre,suf,mid}_token_id), as llama.cpp's test model
 * stories260K-infill is stories260K with FIM tokens named. For /infill's
 * tests on a trained model.
 *
 *   add_fim_tokens IN.gguf OUT.gguf PRE SUF MID
 */
#include <ggml.h>
#include <gguf.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int parse_id(const char *text, int64_t n_vocab, uint32_t *id) {
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || v < 0 || v >= n_vocab) {
        fprintf(stderr, "add_fim_tokens: '%s' is not a token id of this model (0 to %lld)\n", text,
                (long long)n_vocab - 1);
        return 0;
    }
    *id = (uint32_t)v;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: add_fim_tokens IN.gguf OUT.gguf PRE SUF MID\n");
        return 2;
    }
    struct ggml_context *data = NULL; /* the tensors' data, which the copy writes */
    struct gguf_init_params params = {.no_alloc = false, .ctx = &data};
    struct gguf_context *gguf = gguf_init_from_file(argv[1], params);
    if (!gguf) {
        fprintf(stderr, "add_fim_tokens: cannot read '%s' as GGUF\n", argv[1]);
        return 1;
    }
    /* the copy: every key, then every tensor in order with its loaded data
     * (data also holds the blob they are views of: not a tensor of the model) */
    struct gguf_context *copy = gguf_init_empty();
    gguf_set_kv(copy, gguf);
    for (int64_t i = 0; i < gguf_get_n_tensors(gguf); i++)
        gguf_add_tensor(copy, ggml_get_tensor(data, gguf_get_tensor_name(gguf, i)));
    int64_t tokens = gguf_find_key(gguf, "tokenizer.ggml.tokens");
    int64_t n_vocab = tokens < 0 ? 0 : (int64_t)gguf_get_arr_n(gguf, tokens);
    static const char *const keys[3] = {"tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id",
                                        "tokenizer.ggml.fim_mid_token_id"};
    int ok = 1;
    for (int k = 0; k < 3 && ok; k++) {
        uint32_t id;
        if ((ok = parse_id(argv[3 + k], n_vocab, &id))) gguf_set_val_u32(copy, keys[k], id);
    }
    if (ok && !gguf_write_to_file(copy, argv[2], false)) {
        fprintf(stderr, "add_fim_tokens: cannot write '%s'\n", argv[2]);
        ok = 0;
    }
    gguf_free(copy);
    gguf_free(gguf);
    ggml_free(data);
    return ok ? 0 : 1;
}
