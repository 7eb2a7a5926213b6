/*
 * jinja.h - llama.cpp's own chat templates (its `common` library: a Jinja
 * engine and the JSON-schema-to-grammar converter) behind a small C
 * interface (jinja.cpp). This is what llama-server runs with --jinja, so a
 * model's template renders here exactly as it does there, whatever the
 * template; nothing of a template engine is written here.
 *
 * Convention: NULL on failure with err_out set to one line saying why
 * (a template that does not parse, one that raises, a schema that is not
 * JSON); llama.cpp's C++ exceptions never cross into C.
 */
#ifndef SELFMOD_JINJA_H
#define SELFMOD_JINJA_H

#include <stdbool.h>
#include <stddef.h>

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct smj_template smj_template;

/* The model's own template (source NULL), or the given Jinja text. A
 * model without a template gets llama-server's default, chatml. */
smj_template *smj_template_new(const struct llama_model *model, const char *source, char *err_out, size_t err_size);
void smj_template_free(smj_template *t);

/* The conversation rendered (add_generation_prompt: the assistant's turn
 * opened after it); malloc'd. */
char *smj_render(const smj_template *t, const struct llama_chat_message *msgs, size_t n_msgs,
                 bool add_generation_prompt, char *err_out, size_t err_size);

/* The template's Jinja text (not owned). */
const char *smj_source(const smj_template *t);
/* Whether the template was the model's own or given (false: the chatml default). */
bool smj_is_explicit(const smj_template *t);
/* The template's capabilities as a JSON object, as llama-server's /props
 * lists them (malloc'd). */
char *smj_caps_json(const smj_template *t);

/* A JSON schema (its text) as a GBNF grammar, by llama.cpp's converter;
 * malloc'd. */
char *smj_schema_to_grammar(const char *schema_json, char *err_out, size_t err_size);

#ifdef __cplusplus
}
#endif
#endif
