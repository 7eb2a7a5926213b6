/* The multi-model fusion flags: --models, --fusion-*. args.c hands them over. */
#ifndef CLI_FUSION_ARGS_H
#define CLI_FUSION_ARGS_H

#include "selfmod.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>

typedef struct cli_fusion_options {
    char models_buf[8192];                 /* --models, split in place      */
    const char *model_paths[SM_MAX_MODELS];
    const char *model_rpc[SM_MAX_MODELS];  /* PATH@HOST:PORT[+HOST:PORT]: its RPC servers, ',' joined; NULL: --rpc's */
    int32_t n_models;                      /* 0: --models not given         */
    bool align;                            /* --fusion-align                */
} cli_fusion_options;

enum {
    CLI_FUSION_FIRST_OPTION = 3000,
    OPT_MODELS = CLI_FUSION_FIRST_OPTION,
    OPT_FUSION_MODE,
    OPT_FUSION_TURN,
    OPT_FUSION_WEIGHTS,
    OPT_FUSION_ALPHA,
    OPT_FUSION_BETA,
    OPT_FUSION_ALIGN,
    OPT_FUSION_REFERENCE,
};

#define CLI_FUSION_LONG_OPTIONS                                          \
    {"models", required_argument, NULL, OPT_MODELS},                     \
    {"fusion-mode", required_argument, NULL, OPT_FUSION_MODE},           \
    {"fusion-turn", required_argument, NULL, OPT_FUSION_TURN},           \
    {"fusion-weights", required_argument, NULL, OPT_FUSION_WEIGHTS},     \
    {"fusion-alpha", required_argument, NULL, OPT_FUSION_ALPHA},         \
    {"fusion-beta", required_argument, NULL, OPT_FUSION_BETA},           \
    {"fusion-align", no_argument, NULL, OPT_FUSION_ALIGN},               \
    {"fusion-reference", required_argument, NULL, OPT_FUSION_REFERENCE},

#define CLI_FUSION_HELP                                                                              \
    "multi-model fusion (several models decode in parallel; one response):\n"                       \
    "      --models A,B[,...]        GGUF models to fuse (instead of -m; at most 8); A@HOST:PORT[+..]\n" \
    "                                puts A's layers on those RPC servers (default: --rpc's)\n"    \
    "      --fusion-mode MODE        confidence|average|voting|harmony|adaptive|democratic|\n"      \
    "                                round_robin|reference|contrastive (default: confidence)\n"     \
    "      --fusion-weights W,W,...  one weight per model, >= 0 (default: all 1)\n"                 \
    "      --fusion-turn N           round_robin: tokens per model turn (default: 1)\n"             \
    "      --fusion-alpha F          contrastive: keep tokens with p >= F * max p (default: 0.1)\n"  \
    "      --fusion-beta F           contrastive: amateur weight (default: 0.5)\n"                  \
    "      --fusion-align            models with different vocabularies: map tokens by text\n"      \
    "      --fusion-reference N      the model reference mode follows and all compare with (0)\n"   \
    "\n"

/* Applies one fusion flag to the fusion options and the generation params.
 * Returns false after printing an error. */
bool cli_fusion_apply(int c, const char *arg, cli_fusion_options *fo, sm_fusion_params *fp, FILE *err);
/* Checks that go across flags (weights against models, contrastive needs two). */
bool cli_fusion_check(const cli_fusion_options *fo, const sm_fusion_params *fp, FILE *err);

#endif
