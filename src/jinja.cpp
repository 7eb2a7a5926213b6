// jinja.cpp - the C face of llama.cpp's `common` chat templates and
// JSON-schema converter (see jinja.h). Every entry point catches what the
// C++ below it throws and reports it as one line.
#include "jinja.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "chat.h"
#include "json-schema-to-grammar.h"

struct smj_template {
    common_chat_templates_ptr tmpls;
    std::string source;
};

static char *copy_out(const std::string &s) {
    char *out = (char *)malloc(s.size() + 1);
    if (out) memcpy(out, s.c_str(), s.size() + 1);
    return out;
}

static void say(char *err_out, size_t err_size, const char *what, const char *detail) {
    if (!err_out || err_size == 0) return;
    std::string line = std::string(what) + ": " + detail;
    for (char &c : line)
        if (c == '\n' || c == '\r') c = ' '; // one line
    snprintf(err_out, err_size, "%s", line.c_str());
}

// Runs body, turning any exception into NULL and a message.
template <typename F> static auto guarded(char *err_out, size_t err_size, const char *what, F body)
    -> decltype(body()) {
    try {
        return body();
    } catch (const std::exception &e) {
        say(err_out, err_size, what, e.what());
    } catch (...) {
        say(err_out, err_size, what, "unknown error");
    }
    return nullptr;
}

extern "C" smj_template *smj_template_new(const struct llama_model *model, const char *source, char *err_out,
                                          size_t err_size) {
    return guarded(err_out, err_size, "chat template", [&]() -> smj_template * {
        auto tmpls = common_chat_templates_init(model, source ? source : "");
        if (!tmpls) return nullptr;
        smj_template *t = new smj_template;
        t->source = common_chat_templates_source(tmpls.get());
        t->tmpls = std::move(tmpls);
        return t;
    });
}

extern "C" void smj_template_free(smj_template *t) { delete t; }

extern "C" char *smj_render(const smj_template *t, const struct llama_chat_message *msgs, size_t n_msgs,
                            bool add_generation_prompt, char *err_out, size_t err_size) {
    return guarded(err_out, err_size, "chat template", [&]() -> char * {
        common_chat_templates_inputs inputs;
        inputs.use_jinja = true;
        inputs.add_generation_prompt = add_generation_prompt;
        for (size_t i = 0; i < n_msgs; i++) {
            common_chat_msg m;
            m.role = msgs[i].role;
            m.content = msgs[i].content;
            inputs.messages.push_back(std::move(m));
        }
        common_chat_params params = common_chat_templates_apply(t->tmpls.get(), inputs);
        return copy_out(params.prompt);
    });
}

extern "C" const char *smj_source(const smj_template *t) { return t ? t->source.c_str() : ""; }

extern "C" bool smj_is_explicit(const smj_template *t) {
    try {
        return t && common_chat_templates_was_explicit(t->tmpls.get());
    } catch (...) {
        return false;
    }
}

extern "C" char *smj_caps_json(const smj_template *t) {
    return guarded(nullptr, 0, "caps", [&]() -> char * {
        std::string out = "{";
        for (const auto &kv : common_chat_templates_get_caps(t->tmpls.get())) {
            if (out.size() > 1) out += ",";
            out += "\"" + kv.first + "\":" + (kv.second ? "true" : "false");
        }
        return copy_out(out + "}");
    });
}

extern "C" char *smj_schema_to_grammar(const char *schema_json, char *err_out, size_t err_size) {
    return guarded(err_out, err_size, "json_schema", [&]() -> char * {
        return copy_out(json_schema_to_grammar(common_json::parse(schema_json ? schema_json : "")));
    });
}
