#!/usr/bin/env python3
"""Sends the demo's requests to a running `tessera serve`: OpenAI completions and chat (streamed)
with the `openai` client, and a streamed KServe v2 request with `tritonclient`.
Usage: demo_requests.py HTTP_PORT GRPC_PORT MODEL"""
import json
import queue
import sys

import numpy as np
import openai
import tritonclient.grpc as grpcclient

http_port, grpc_port, model = sys.argv[1], sys.argv[2], sys.argv[3]

client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="none")
r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=12,
                              temperature=0)
print(f"OpenAI /v1/completions: {r.choices[0].text!r} ({r.usage.completion_tokens} tokens, "
      f"finish {r.choices[0].finish_reason})")
print("OpenAI /v1/chat/completions, streamed: ", end="", flush=True)
for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12,
        temperature=0.8, seed=42, stream=True):
    for choice in chunk.choices:
        print(repr(choice.delta.content or ""), end=" ", flush=True)
print()

results = queue.Queue()
triton = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
print(f"KServe: server live {triton.is_server_live()}, model ready {triton.is_model_ready(model)}")
triton.start_stream(callback=lambda result, error: results.put((result, error)))
inputs = []
for name, dtype, value in [("text_input", "BYTES", np.array([b"Once upon a time"], np.object_)),
                           ("stream", "BOOL", np.array([True])),
                           ("sampling_parameters", "BYTES", np.array(
                               [json.dumps({"max_tokens": 12, "temperature": 0}).encode()],
                               np.object_))]:
    i = grpcclient.InferInput(name, list(value.shape), dtype)
    i.set_data_from_numpy(value)
    inputs.append(i)
triton.async_stream_infer(model, inputs, request_id="demo", enable_empty_final_response=True)
pieces = []
while True:
    result, error = results.get(timeout=60)
    if error is not None:
        raise SystemExit(f"KServe error: {error}")
    text = result.as_numpy("text_output")
    if text is not None:
        pieces.append(b"".join(text).decode())
    if result.get_response().parameters["triton_final_response"].bool_param:
        break
triton.stop_stream()
print(f"KServe ModelStreamInfer, {len(pieces)} streamed responses: {''.join(pieces)!r}")
