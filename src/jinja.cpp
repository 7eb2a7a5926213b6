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

// chat_template_kwargs as llama-server takes them: each value's JSON is the
// template variable's, and enable_thinking (a boolean) is also what
// common's own formats read.
static void apply_kwargs(common_chat_templates_inputs &inputs, const char *kwargs_json) {
    if (!kwargs_json) return;
    auto kwargs = common_json::parse(kwargs_json);
    if (!kwargs.is_object()) throw std::invalid_argument("must be a JSON object, such as {\"enable_thinking\": false}");
    for (const auto &item : kwargs.items()) inputs.chat_template_kwargs[item.key()] = item.value().dump();
    if (kwargs.contains("enable_thinking")) {
        const common_json &thinking = kwargs.at("enable_thinking");
        if (!thinking.is_boolean()) throw std::invalid_argument("enable_thinking must be true or false");
        inputs.enable_thinking = thinking.get<bool>();
    }
}

extern "C" bool smj_kwargs_check(const char *kwargs_json, char *err_out, size_t err_size) {
    return guarded(err_out, err_size, "chat_template_kwargs", [&]() -> const char * {
               common_chat_templates_inputs inputs;
               apply_kwargs(inputs, kwargs_json);
               return "";
           }) != nullptr;
}

extern "C" char *smj_render(const smj_template *t, const struct llama_chat_message *msgs, size_t n_msgs,
                            bool add_generation_prompt, const char *kwargs_json, char *err_out, size_t err_size) {
    return guarded(err_out, err_size, "chat template", [&]() -> char * {
        common_chat_templates_inputs inputs;
        inputs.use_jinja = true;
        inputs.add_generation_prompt = add_generation_prompt;
        apply_kwargs(inputs, kwargs_json);
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

struct smj_tool_prompt {
    common_chat_params params;
    common_chat_parser_params parser;
    common_chat_msg streamed;          // what smj_tool_prompt_deltas has sent
    std::vector<std::string> triggers; // as regular expressions, as common's sampler makes them
    std::vector<const char *> trigger_ptrs;
};

extern "C" smj_tool_prompt *smj_tool_prompt_new(const smj_template *t, const char *messages_json,
                                                const char *tools_json, const char *tool_choice,
                                                bool parallel_tool_calls, const char *kwargs_json, char *err_out,
                                                size_t err_size) {
    return guarded(err_out, err_size, "tools", [&]() -> smj_tool_prompt * {
        common_chat_templates_inputs inputs;
        inputs.use_jinja = true;
        inputs.add_generation_prompt = true;
        apply_kwargs(inputs, kwargs_json);
        inputs.messages = common_chat_msgs_parse_oaicompat(common_json::parse(messages_json ? messages_json : "[]"));
        if (tools_json) inputs.tools = common_chat_tools_parse_oaicompat(common_json::parse(tools_json));
        inputs.tool_choice = common_chat_tool_choice_parse_oaicompat(tool_choice ? tool_choice : "auto");
        inputs.parallel_tool_calls = parallel_tool_calls;
        smj_tool_prompt *p = new smj_tool_prompt;
        p->params = common_chat_templates_apply(t->tmpls.get(), inputs);
        // A template that drops what it does not know would drop tools and
        // tool calls silently: each must show in the prompt.
        std::string missing;
        for (const auto &tool : inputs.tools)
            if (p->params.prompt.find(tool.name) == std::string::npos) missing = "the tool '" + tool.name + "'";
        for (const auto &msg : inputs.messages) {
            for (const auto &call : msg.tool_calls)
                if (p->params.prompt.find(call.name) == std::string::npos) missing = "the tool call '" + call.name + "'";
            if (msg.role == "tool" && p->params.prompt.find(msg.content) == std::string::npos)
                missing = "a tool result";
        }
        if (!missing.empty()) {
            delete p;
            throw std::invalid_argument("the chat template does not render " + missing +
                                        ": give one that takes tools (--chat-template-file)");
        }
        p->parser = common_chat_parser_params(p->params);
        p->parser.parse_tool_calls = !inputs.tools.empty() && inputs.tool_choice != COMMON_CHAT_TOOL_CHOICE_NONE;
        if (!p->params.parser.empty()) p->parser.parser.load(p->params.parser);
        for (const auto &trigger : p->params.grammar_triggers) {
            switch (trigger.type) {
            case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN: p->triggers.push_back(trigger.value); break;
            case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: {
                const std::string &v = trigger.value;
                p->triggers.push_back(v.empty() ? "^$" : (v.front() != '^' ? "^" : "") + v + (v.back() != '$' ? "$" : ""));
                break;
            }
            default: p->triggers.push_back(regex_escape(trigger.value)); break; // a word, or a token's text
            }
        }
        for (const auto &pattern : p->triggers) p->trigger_ptrs.push_back(pattern.c_str());
        p->trigger_ptrs.push_back(nullptr);
        return p;
    });
}

extern "C" void smj_tool_prompt_free(smj_tool_prompt *p) { delete p; }
extern "C" const char *smj_tool_prompt_text(const smj_tool_prompt *p) { return p->params.prompt.c_str(); }
extern "C" const char *smj_tool_prompt_grammar(const smj_tool_prompt *p) { return p->params.grammar.c_str(); }
extern "C" bool smj_tool_prompt_grammar_lazy(const smj_tool_prompt *p) { return p->params.grammar_lazy; }
extern "C" const char *const *smj_tool_prompt_triggers(const smj_tool_prompt *p, int *n) {
    *n = (int)p->triggers.size();
    return p->trigger_ptrs.data();
}

extern "C" const char *smj_tool_prompt_generation_prompt(const smj_tool_prompt *p) {
    return p->params.generation_prompt.c_str();
}
extern "C" int smj_tool_prompt_n_stops(const smj_tool_prompt *p) { return (int)p->params.additional_stops.size(); }
extern "C" const char *smj_tool_prompt_stop(const smj_tool_prompt *p, int i) {
    return p->params.additional_stops[(size_t)i].c_str();
}
extern "C" const char *smj_tool_prompt_format(const smj_tool_prompt *p) { return common_chat_format_name(p->params.format); }

/* Ids "call_<n>" by position: the same in every partial parse. */
static void name_calls(common_chat_msg &msg) {
    int n = 0;
    for (auto &call : msg.tool_calls)
        if (call.id.empty()) call.id = "call_" + std::to_string(n++);
}

extern "C" char *smj_tool_prompt_parse(const smj_tool_prompt *p, const char *text, char *err_out, size_t err_size) {
    return guarded(err_out, err_size, "the answer's tool calls", [&]() -> char * {
        common_chat_msg msg = common_chat_parse(text ? text : "", false, p->parser);
        msg.role = "assistant";
        name_calls(msg);
        return copy_out(msg.to_json_oaicompat().dump());
    });
}

extern "C" char *smj_tool_prompt_deltas(smj_tool_prompt *p, const char *text, bool partial, char *err_out,
                                        size_t err_size) {
    return guarded(err_out, err_size, "the answer's tool calls", [&]() -> char * {
        common_chat_msg msg = common_chat_parse(text ? text : "", partial, p->parser);
        msg.role = "assistant";
        name_calls(msg);
        common_json out = common_json::array();
        for (const auto &diff : common_chat_msg_diff::compute_diffs(p->streamed, msg)) {
            common_json delta = common_json::object();
            if (!diff.content_delta.empty()) delta["content"] = diff.content_delta;
            if (diff.tool_call_index != std::string::npos) {
                common_json call = {{"index", diff.tool_call_index}};
                if (!diff.tool_call_delta.id.empty()) {
                    call["id"] = diff.tool_call_delta.id;
                    call["type"] = "function";
                }
                common_json fn = common_json::object();
                if (!diff.tool_call_delta.name.empty()) fn["name"] = diff.tool_call_delta.name;
                if (!diff.tool_call_delta.arguments.empty()) fn["arguments"] = diff.tool_call_delta.arguments;
                if (!fn.empty()) call["function"] = fn;
                delta["tool_calls"] = common_json::array({call});
            }
            if (!delta.empty()) out.push_back(delta);
        }
        p->streamed = msg;
        return copy_out(out.dump());
    });
}

extern "C" char *smj_schema_to_grammar(const char *schema_json, char *err_out, size_t err_size) {
    return guarded(err_out, err_size, "json_schema", [&]() -> char * {
        return copy_out(json_schema_to_grammar(common_json::parse(schema_json ? schema_json : "")));
    });
}
