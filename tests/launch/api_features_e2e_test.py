#!/usr/bin/env python3
"""End to end: vLLM's serving features beyond plain completions, on `tessera serve --api-key`
with the real clients.

1. OpenAI HTTP (`openai`): without the key, or with another, 401 AuthenticationError; with it,
   completions and /v1/models work. /health, /metrics and /version need no key.
2. /tokenize and /detokenize (vLLM's endpoints) with the key: a round trip, and the ids equal
   what the completion reports as its prompt. n = 3 completions of one prompt; logit_bias
   steering greedy decoding onto one token.
2b. Structured outputs: response_format json_schema sampled n = 4 ways from the random model,
   every choice ends and conforms; the client's chat.completions.parse with a Pydantic model; a
   string pattern; a structured_outputs regex and choice; json_object; a schema keyword the
   grammar cannot enforce is a 400 naming it.
2c. Tool calling (serve --tool-call-parser llama3_json): tool_choice "required" sampled n = 3
   ways, streamed too, always ends in calls of the given tools whose arguments conform;
   a named function; "auto" reading a call the model was steered to write (a json_schema) and
   plain text; the conversation goes on with the calls and their results.
3. KServe gRPC (`tritonclient`): without the key UNAUTHENTICATED; with headers={"authorization":
   "Bearer KEY"} a stream equals `tessera generate`; server liveness needs no key.
4. `tessera bench` over both APIs: OPENAI_API_KEY (as vllm bench serve) completes every request,
   without it bench fails and says why. A --structured-outputs regex workload completes too.
5. A key an Authorization header cannot carry is refused at start, naming the flag, not the key.

Usage: api_key_e2e_test.py TESSERA_BINARY
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Literal, Optional
import urllib.error
import urllib.request

import e2e_util as u
import numpy as np
import openai
import pydantic
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

TESSERA = os.path.abspath(sys.argv[1])


class GetWeather(pydantic.BaseModel):
    """A tool for the client's parse() (openai.pydantic_function_tool: a strict function)."""
    city: str = pydantic.Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]


class Form(pydantic.BaseModel):
    """What client.chat.completions.parse turns into a strict json_schema."""
    verdict: Literal["accept", "reject"]
    score: int
    weight: float
    urgent: Optional[bool]
KEY = "tk-e2e-0123456789"


def http(base, path, body=None, key=None):
    """(status, parsed JSON or text) of a GET (body None) or POST to base + path."""
    request = urllib.request.Request(base + path, method="GET" if body is None else "POST",
                                     data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as e:
        text, status = e.read().decode(), e.code
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def main():
    work = tempfile.mkdtemp(prefix="tessera-api-key-e2e-")
    # 5. A key with a space is refused before anything starts.
    bad = subprocess.run([TESSERA, "serve", "--api-key", "has space", "--work-dir", work],
                         capture_output=True, text=True, timeout=60)
    u.check(bad.returncode != 0 and "--api-key: key 1 holds whitespace" in bad.stderr + bad.stdout
            and "has space" not in bad.stderr + bad.stdout,
            f"a bad key was not refused by name: {bad.returncode} {bad.stdout} {bad.stderr}")

    serve, ports = u.start_serve(TESSERA, work, ["--num-replicas", "1", "--max-num-seqs", "8",
                                                 "--kv-cache-gib", "0.125",
                                                 "--tool-call-parser", "llama3_json"],
                                 env=dict(os.environ, TESSERA_API_KEY=KEY))
    try:
        base = f"http://127.0.0.1:{ports['http']}"
        grpc_url = f"127.0.0.1:{ports['grpc']}"
        u.check(any("-H \"Authorization: Bearer $TESSERA_API_KEY\"" in l for l in u.SERVE_LOG),
                "the ready message does not show how to send the key")
        u.check(not any(KEY in l for l in u.SERVE_LOG), "the key was printed")

        # 1. OpenAI HTTP.
        for key in (None, "wrong"):
            client = openai.OpenAI(base_url=base + "/v1", api_key=key or "none", max_retries=0)
            try:
                client.completions.create(model=u.MODEL, prompt=[5, 6, 7], max_tokens=2)
                u.fail(f"a completion with key {key!r} was served")
            except openai.AuthenticationError as e:
                u.check(e.status_code == 401, f"not 401: {e}")
        client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)
        r = client.completions.create(model=u.MODEL, prompt="the cat", max_tokens=4,
                                      temperature=0, extra_body={"ignore_eos": True})
        u.check(r.usage.completion_tokens == 4, f"completion with the key: {r}")
        u.check([m.id for m in client.models.list().data] == [u.MODEL], "models with the key")
        for path in ("/health", "/metrics", "/version"):
            status, _ = http(base, path)
            u.check(status == 200, f"{path} without a key: {status}")
        status, body = http(base, "/v1/models")
        u.check(status == 401 and body == {"error": "Unauthorized"}, f"/v1/models: {status} {body}")
        print("1. OpenAI HTTP: 401 without the key or with another, served with it; probes open",
              flush=True)

        # 2. /tokenize and /detokenize.
        status, body = http(base, "/tokenize", {"prompt": "the cat"})
        u.check(status == 401, f"/tokenize without a key: {status}")
        status, body = http(base, "/tokenize", {"model": u.MODEL, "prompt": "the cat",
                                                "return_token_strs": True}, key=KEY)
        u.check(status == 200 and body["count"] == len(body["tokens"]) == r.usage.prompt_tokens
                and len(body["token_strs"]) == body["count"] and body["max_model_len"] > 0,
                f"/tokenize: {status} {body}")
        status, back = http(base, "/detokenize", {"tokens": body["tokens"]}, key=KEY)
        u.check(status == 200 and back["prompt"].endswith("the cat"), f"/detokenize: {back}")
        status, chat = http(base, "/tokenize",
                            {"messages": [{"role": "user", "content": "hi"}]}, key=KEY)
        u.check(status == 200 and chat["count"] > 2, f"/tokenize messages: {status} {chat}")
        many = client.chat.completions.create(
            model=u.MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, n=3,
            temperature=1.0, seed=3)
        u.check(sorted(c.index for c in many.choices) == [0, 1, 2]
                and many.usage.completion_tokens == 9, f"n = 3: {many}")
        steered = client.completions.create(model=u.MODEL, prompt="the cat", max_tokens=5,
                                            temperature=0, logit_bias={"77": 100},
                                            extra_body={"ignore_eos": True})
        status, seventy_seven = http(base, "/detokenize", {"tokens": [77] * 5}, key=KEY)
        u.check(status == 200 and steered.choices[0].text == seventy_seven["prompt"],
                f"logit_bias 77: {steered.choices[0].text!r} != {seventy_seven}")
        # A priority on a replica that schedules first come, first served: refused by name.
        try:
            client.completions.create(model=u.MODEL, prompt="x", max_tokens=2,
                                      extra_body={"priority": 1})
            u.fail("a priority was accepted by an fcfs replica")
        except openai.BadRequestError as e:
            u.check("--scheduling-policy priority" in str(e), f"priority refusal: {e}")
        print(f"2. /tokenize ({body['count']} tokens, chat {chat['count']}) and /detokenize "
              "round trip; n = 3; logit_bias steers greedy decoding; a priority needs "
              "--scheduling-policy priority", flush=True)

        # 2b. Structured outputs: whatever the random model prefers, the output is the schema's.
        schema = {"type": "object", "title": "Answer",
                  "properties": {"answer": {"enum": ["yes", "no", "maybe"]},
                                 "confidence": {"type": "number"},
                                 "count": {"type": "integer"}},
                  "required": ["answer", "count"]}
        shaped = client.chat.completions.create(
            model=u.MODEL, messages=[{"role": "user", "content": "answer in JSON"}],
            max_tokens=150, n=4, temperature=1.0, seed=5,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "answer", "schema": schema}})
        for choice in shaped.choices:
            u.check(choice.finish_reason == "stop", f"json_schema did not end: {choice}")
            value = json.loads(choice.message.content)
            u.check(set(value) <= {"answer", "confidence", "count"} and
                    value["answer"] in ("yes", "no", "maybe") and
                    isinstance(value["count"], int) and
                    isinstance(value.get("confidence", 0.5), (int, float)),
                    f"not the schema's: {choice.message.content!r}")
        # The openai client's own structured outputs: a Pydantic model as response_format
        # (strict schema: every field required, Optional as anyOf with null, a Literal as enum),
        # parsed back into the model by the client.
        parsed = client.chat.completions.parse(
            model=u.MODEL, messages=[{"role": "user", "content": "fill the form"}],
            max_tokens=150, temperature=1.0, seed=9, response_format=Form)
        form = parsed.choices[0].message.parsed
        u.check(isinstance(form, Form) and form.verdict in ("accept", "reject"),
                f"parse(response_format=Form): {parsed.choices[0]}")
        zipped = client.chat.completions.create(
            model=u.MODEL, messages=[{"role": "user", "content": "a zip code"}], max_tokens=40,
            temperature=1.0, seed=2, response_format={"type": "json_schema", "json_schema": {
                "name": "zip", "schema": {"type": "object", "properties": {
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["zip"]}}})
        value = json.loads(zipped.choices[0].message.content)
        u.check(re.fullmatch(r"[0-9]{5}", value["zip"]) is not None, f"pattern: {value}")
        dated = client.completions.create(
            model=u.MODEL, prompt="the date:", max_tokens=20, temperature=1.0, seed=4,
            extra_body={"structured_outputs": {"regex": r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]"}})
        u.check(re.fullmatch(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]", dated.choices[0].text)
                is not None and dated.choices[0].finish_reason == "stop", f"regex: {dated}")
        picked = client.completions.create(
            model=u.MODEL, prompt="the cat", max_tokens=20, temperature=0,
            extra_body={"structured_outputs": {"choice": ["sat on the mat", "ran away"]}})
        u.check(picked.choices[0].text in ("sat on the mat", "ran away") and
                picked.choices[0].finish_reason == "stop", f"choice: {picked.choices[0]}")
        anything = client.chat.completions.create(
            model=u.MODEL, messages=[{"role": "user", "content": "JSON please"}], max_tokens=60,
            temperature=0, response_format={"type": "json_object"})
        text = anything.choices[0].message.content
        u.check(text.lstrip().startswith("{") and
                (anything.choices[0].finish_reason == "length" or
                 isinstance(json.loads(text), dict)), f"json_object: {text!r}")
        try:
            client.chat.completions.create(
                model=u.MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=5,
                response_format={"type": "json_schema", "json_schema": {
                    "name": "n", "schema": {"type": "integer", "multipleOf": 3}}})
            u.fail("a schema with multipleOf was accepted")
        except openai.BadRequestError as e:
            u.check("'multipleOf' is not supported" in str(e), f"multipleOf refusal: {e}")
        print("2b. structured outputs: json_schema (n = 4, sampled) always parses and conforms; "
              "the client's parse() with a Pydantic model; a pattern; a regex; a choice; "
              "json_object; multipleOf is refused by name", flush=True)

        # 2c. Tool calling.
        tools = [{"type": "function", "function": {
                     "name": "get_weather", "description": "Weather in a city",
                     "parameters": {"type": "object", "properties": {
                         "city": {"type": "string", "maxLength": 12},
                         "unit": {"enum": ["celsius", "fahrenheit"]}},
                         "required": ["city"], "additionalProperties": False}}},
                 {"type": "function", "function": {"name": "now"}}]

        def check_call(call, where):
            u.check(call.type == "function" and call.id.startswith("chatcmpl-tool-"),
                    f"{where}: {call}")
            args = json.loads(call.function.arguments)
            if call.function.name == "get_weather":
                u.check(isinstance(args.get("city"), str) and
                        set(args) <= {"city", "unit"} and
                        args.get("unit", "celsius") in ("celsius", "fahrenheit"),
                        f"{where}: arguments not the schema's: {call.function.arguments!r}")
            else:
                u.check(call.function.name == "now" and isinstance(args, dict),
                        f"{where}: {call}")

        weather = [{"role": "user", "content": "Weather in Oslo?"}]
        required = client.chat.completions.create(
            model=u.MODEL, messages=weather, tools=tools, tool_choice="required", n=3,
            temperature=1.0, seed=11, max_tokens=900)
        for choice in required.choices:
            u.check(choice.finish_reason == "tool_calls" and choice.message.tool_calls,
                    f"required: {choice}")
            for call in choice.message.tool_calls:
                check_call(call, "required")
        streamed_calls, finish = {}, None
        for chunk in client.chat.completions.create(
                model=u.MODEL, messages=weather, tools=tools, tool_choice="required",
                temperature=1.0, seed=12, max_tokens=900, stream=True):
            for delta in chunk.choices[0].delta.tool_calls or []:
                entry = streamed_calls.setdefault(delta.index, {"id": delta.id, "name": "",
                                                                "arguments": ""})
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        u.check(finish == "tool_calls" and streamed_calls, f"required, streamed: {finish}")
        for entry in streamed_calls.values():
            u.check(entry["name"] in ("get_weather", "now"), f"streamed call: {entry}")
            json.loads(entry["arguments"])
        named = client.chat.completions.create(
            model=u.MODEL, messages=weather, tools=tools, temperature=1.0, seed=13,
            max_tokens=200, tool_choice={"type": "function", "function": {"name": "get_weather"}})
        u.check(named.choices[0].finish_reason == "stop" and
                len(named.choices[0].message.tool_calls) == 1 and
                named.choices[0].message.tool_calls[0].function.name == "get_weather",
                f"named: {named.choices[0]}")
        check_call(named.choices[0].message.tool_calls[0], "named")
        # The client's own tool helpers: a Pydantic model as a strict function tool, its arguments
        # parsed back into the model by parse().
        helped = client.chat.completions.parse(
            model=u.MODEL, messages=weather, tools=[openai.pydantic_function_tool(GetWeather)],
            tool_choice="required", parallel_tool_calls=False, temperature=1.0, seed=15,
            max_tokens=400)
        call = helped.choices[0].message.tool_calls[0]
        u.check(isinstance(call.function.parsed_arguments, GetWeather),
                f"parse() with a function tool: {helped.choices[0]}")
        # "auto": the model writes a Llama 3 JSON call (steered to by a schema), the parser
        # reads it; without a call its text is the content.
        call_schema = {"type": "object", "properties": {
            "name": {"enum": ["get_weather"]},
            "parameters": tools[0]["function"]["parameters"]},
            "required": ["name", "parameters"], "additionalProperties": False}
        auto = client.chat.completions.create(
            model=u.MODEL, messages=weather, tools=tools, temperature=1.0, seed=14,
            max_tokens=200, response_format={"type": "json_schema", "json_schema": {
                "name": "call", "schema": call_schema}})
        u.check(auto.choices[0].finish_reason == "tool_calls" and
                auto.choices[0].message.content is None and
                auto.choices[0].message.tool_calls[0].function.name == "get_weather",
                f"auto: {auto.choices[0]}")
        check_call(auto.choices[0].message.tool_calls[0], "auto")
        prose = client.chat.completions.create(
            model=u.MODEL, messages=weather, tools=tools, temperature=0, max_tokens=8,
            extra_body={"structured_outputs": {"regex": "[a-z ]{8}"}})
        u.check(not prose.choices[0].message.tool_calls and
                prose.choices[0].message.content and
                prose.choices[0].finish_reason in ("stop", "length"), f"auto, prose: {prose}")
        # The conversation goes on: the calls and their results go back to the model.
        message = named.choices[0].message
        follow = client.chat.completions.create(
            model=u.MODEL, tools=tools, tool_choice="none", max_tokens=4, messages=weather + [
                message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": message.tool_calls[0].id,
                 "content": json.dumps({"temp": 3})}])
        u.check(follow.choices[0].message.content is not None and
                follow.usage.prompt_tokens > required.usage.prompt_tokens,
                f"follow-up: {follow}")
        print("2c. tool calling: required (n = 3, sampled, and streamed) always calls the tools "
              "with conforming arguments; a named function; the client's parse() with a "
              "pydantic_function_tool; auto reads a Llama 3 JSON call and "
              "leaves prose as content; a conversation carries calls and results", flush=True)

        # 3. KServe gRPC.
        model_dir = os.path.join(work, "demo-model")
        prompt = [1, 7, 9, 11]
        reference = u.generate_reference(TESSERA, model_dir, [prompt], 6)[0]
        probe = grpcclient.InferenceServerClient(url=grpc_url)
        text_input = grpcclient.InferInput("text_input", [1], "BYTES")
        text_input.set_data_from_numpy(np.array([b"the cat"], dtype=np.object_))
        for headers in (None, {"authorization": "Bearer wrong"}):
            try:
                probe.infer(u.MODEL, [text_input], headers=headers)
                u.fail(f"a gRPC infer with headers {headers} was served")
            except InferenceServerException as e:
                u.check(e.status() == "StatusCode.UNAUTHENTICATED" and "API key" in e.message(),
                        f"gRPC without the key: {e.status()} {e.message()}")
        _, ids = u.grpc_stream(grpc_url, prompt, 6, headers={"authorization": f"Bearer {KEY}"})
        u.check(ids == reference, f"gRPC with the key: {ids} != {reference}")
        u.check(probe.is_server_live(), "gRPC liveness without a key")
        print("3. KServe gRPC: UNAUTHENTICATED without the key, equal to tessera generate with it",
              flush=True)

        # 4. tessera bench.
        for backend, port in (("openai", ports["http"]), ("tessera-grpc", ports["grpc"])):
            result = os.path.join(work, f"bench-{backend}.json")
            argv = [TESSERA, "bench", "--backend", backend, "--port", str(port),
                    "--metrics-url", f"{base}/metrics", "--num-prompts", "6",
                    "--random-input-len", "16", "--random-output-len", "4", "--ignore-eos",
                    "--disable-tqdm", "--result-file", result]
            ran = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                 env=dict(os.environ, OPENAI_API_KEY=KEY))
            u.check(ran.returncode == 0, f"bench {backend} with the key: {ran.stdout[-1500:]}"
                    f"{ran.stderr[-1500:]}")
            run = json.load(open(result))["runs"][0]
            u.check(run["completed"] == 6 and run["failed"] == 0, f"bench {backend}: {run}")
            u.check(KEY not in open(result).read(), "the key is in bench's result file")
            env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
            refused = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
            out = refused.stdout + refused.stderr
            u.check(refused.returncode != 0 and ("401" in out or "UNAUTHENTICATED" in out or
                                                 "API key" in out),
                    f"bench {backend} without the key: {refused.returncode}\n{out[-1500:]}")
        # A structured-output workload (vLLM's benchmark_serving_structured_output, in kind).
        result = os.path.join(work, "bench-structured.json")
        ran = subprocess.run(
            [TESSERA, "bench", "--backend", "openai", "--port", str(ports["http"]),
             "--metrics-url", "none", "--num-prompts", "6", "--random-input-len", "16",
             "--random-output-len", "24", "--disable-tqdm", "--result-file", result,
             "--structured-outputs", json.dumps({"regex": "[a-z]+( [a-z]+){0,3}\\."})],
            capture_output=True, text=True, timeout=120, env=dict(os.environ, OPENAI_API_KEY=KEY))
        u.check(ran.returncode == 0, f"bench --structured-outputs: {ran.stdout[-1500:]}"
                f"{ran.stderr[-1500:]}")
        run = json.load(open(result))["runs"][0]
        u.check(run["completed"] == 6 and run["failed"] == 0, f"bench structured: {run}")
        print("4. tessera bench: every request with OPENAI_API_KEY over both APIs; refused "
              "without; a --structured-outputs workload", flush=True)
    finally:
        u.stop_serve(serve, work)
    print("PASS", flush=True)


if __name__ == "__main__":
    u.run(main)
