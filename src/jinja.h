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

/* kwargs_json (NULL: none): llama-server's chat_template_kwargs, a JSON
 * object whose members become template variables (enable_thinking, a
 * boolean, also common's). Whether it is one. */
bool smj_kwargs_check(const char *kwargs_json, char *err_out, size_t err_size);
/* The conversation rendered (add_generation_prompt: the assistant's turn
 * opened after it); malloc'd. */
char *smj_render(const smj_template *t, const struct llama_chat_message *msgs, size_t n_msgs,
                 bool add_generation_prompt, const char *kwargs_json, char *err_out, size_t err_size);

/* The template's Jinja text (not owned). */
const char *smj_source(const smj_template *t);
/* A conversation with tools, in OpenAI's JSON forms (messages, which may
 * hold tool_calls and role "tool"; tools; tool_choice "auto", "required"
 * or "none"), rendered as llama-server renders it: the prompt, the grammar
 * of a tool call (lazy: it applies once the model starts one), the stop
 * strings, and what parsing the answer needs. */
typedef struct smj_tool_prompt smj_tool_prompt;
smj_tool_prompt *smj_tool_prompt_new(const smj_template *t, const char *messages_json, const char *tools_json,
                                     const char *tool_choice, bool parallel_tool_calls, const char *kwargs_json,
                                     char *err_out, size_t err_size);
void smj_tool_prompt_free(smj_tool_prompt *p);
const char *smj_tool_prompt_text(const smj_tool_prompt *p);
const char *smj_tool_prompt_grammar(const smj_tool_prompt *p); /* "" when none */
bool smj_tool_prompt_grammar_lazy(const smj_tool_prompt *p);
/* A lazy grammar's triggers as regular expressions (NULL-terminated). */
const char *const *smj_tool_prompt_triggers(const smj_tool_prompt *p, int *n);
/* The template's generation prompt, which the tool-call grammar begins with. */
const char *smj_tool_prompt_generation_prompt(const smj_tool_prompt *p);
int smj_tool_prompt_n_stops(const smj_tool_prompt *p);
const char *smj_tool_prompt_stop(const smj_tool_prompt *p, int i);
const char *smj_tool_prompt_format(const smj_tool_prompt *p);
/* The model's answer as OpenAI's assistant message (JSON: role, content,
 * tool_calls with ids "call_<n>"); malloc'd. */
char *smj_tool_prompt_parse(const smj_tool_prompt *p, const char *text, char *err_out, size_t err_size);
/* What the answer so far adds to the message since the last call, as a
 * JSON array of OpenAI stream deltas ({"content": ...}, {"tool_calls":
 * [{"index", "id", "type", "function": {"name", "arguments"}}]}); partial:
 * more text follows (a half-written call is held back). malloc'd. */
char *smj_tool_prompt_deltas(smj_tool_prompt *p, const char *text, bool partial, char *err_out, size_t err_size);

/* A JSON schema (its text) as a GBNF grammar, by llama.cpp's converter;
 * malloc'd. */
char *smj_schema_to_grammar(const char *schema_json, char *err_out, size_t err_size);

#ifdef __cplusplus
}
#endif
#endif
