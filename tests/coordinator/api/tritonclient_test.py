#!/usr/bin/env python3
"""tessera's KServe v2 gRPC API through the real `tritonclient[grpc]` package (PyPI).

  tritonclient_test.py --url HOST:PORT [--model fake-model]

Run against tests/coordinator/api/fake_kserve_server (see run_triton_e2e.py). Exits 77 (skip)
when tritonclient is not installed: python3 -m pip install 'tritonclient[grpc]'.
"""
import argparse
import json
import queue
import sys
import unittest

try:
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
except ImportError as e:  # pragma: no cover
    print(f"SKIP: tritonclient[grpc] is not installed ({e})", file=sys.stderr)
    sys.exit(77)

URL = None
MODEL = "fake-model"


def make_inputs(prompt, stream=None, sampling=None, exclude=None, extra_bools=()):
    inputs = []
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode("utf-8")], dtype=np.object_))
    inputs.append(text)

    def add_bool(name, value):
        tensor = grpcclient.InferInput(name, [1], "BOOL")
        tensor.set_data_from_numpy(np.array([value], dtype=bool))
        inputs.append(tensor)

    if stream is not None:
        add_bool("stream", stream)
    if sampling is not None:
        params = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
        params.set_data_from_numpy(np.array([json.dumps(sampling).encode()], dtype=np.object_))
        inputs.append(params)
    if exclude is not None:
        add_bool("exclude_input_in_output", exclude)
    for name in extra_bools:
        add_bool(name, True)
    return inputs


def text_of(result):
    return result.as_numpy("text_output")[0].decode("utf-8")


class TritonClientTest(unittest.TestCase):
    def setUp(self):
        self.client = grpcclient.InferenceServerClient(url=URL)

    def tearDown(self):
        self.client.stop_stream()
        self.client.close()

    def test_server_and_model_readiness(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready(MODEL))
        self.assertTrue(self.client.is_model_ready(MODEL, "1"))
        self.assertFalse(self.client.is_model_ready("no-such-model"))
        metadata = self.client.get_server_metadata(as_json=True)
        self.assertEqual(metadata["name"], "tessera")

    def test_model_metadata_and_config(self):
        metadata = self.client.get_model_metadata(MODEL, as_json=True)
        inputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]}
        self.assertEqual(inputs["text_input"], ("BYTES", ["1"]))  # int64 as JSON strings
        self.assertEqual(inputs["stream"], ("BOOL", ["1"]))
        self.assertEqual(inputs["sampling_parameters"], ("BYTES", ["1"]))
        outputs = {t["name"]: t["datatype"] for t in metadata["outputs"]}
        self.assertEqual(outputs["text_output"], "BYTES")
        self.assertEqual(outputs["finish_reason"], "BYTES")
        config = self.client.get_model_config(MODEL, as_json=True)["config"]
        self.assertTrue(config["model_transaction_policy"]["decoupled"])
        self.assertEqual(config["backend"], "vllm")
        optional = {i["name"]: i.get("optional", False) for i in config["input"]}
        self.assertFalse(optional["text_input"])
        self.assertTrue(optional["stream"])
        with self.assertRaises(InferenceServerException) as e:
            self.client.get_model_metadata("no-such-model")
        self.assertIn("Request for unknown model: 'no-such-model' is not found", e.exception.message())

    def stream_requests(self, requests, enable_empty_final_response):
        """Sends (id, inputs) pairs on one stream; returns {id: [(result, error), ...]}."""
        responses = queue.Queue()
        self.client.start_stream(callback=lambda result, error: responses.put((result, error)))
        for request_id, inputs in requests:
            self.client.async_stream_infer(
                MODEL, inputs, request_id=request_id,
                enable_empty_final_response=enable_empty_final_response)
        open_ids = {request_id for request_id, _ in requests}
        by_id = {request_id: [] for request_id in open_ids}
        errors = []
        while open_ids:
            result, error = responses.get(timeout=30)
            if error is not None:
                errors.append(error)
                # tritonclient hands errors over without the response: close the first open id
                # whose request was expected to fail.
                failing = sorted(i for i in open_ids if i.startswith("bad"))
                self.assertTrue(failing, f"unexpected error: {error}")
                by_id[failing[0]].append((None, error))
                open_ids.discard(failing[0])
                continue
            response = result.get_response()
            request_id = response.id
            self.assertIn(request_id, open_ids, f"response for {request_id!r} after its final one")
            self.assertIn("triton_final_response", response.parameters)
            by_id[request_id].append((result, None))
            if response.parameters["triton_final_response"].bool_param:
                open_ids.discard(request_id)
        self.client.stop_stream()
        return by_id, errors

    def check_streaming(self, enable_empty_final_response):
        sampling = {"max_tokens": "6", "temperature": "0.1", "top_p": 0.95}
        prompts = {f"req-{i}": f"The story number {i} begins" for i in range(4)}
        requests = [(rid, make_inputs(p, stream=True, sampling=sampling,
                                      extra_bools=["return_finish_reason"]))
                    for rid, p in prompts.items()]
        by_id, errors = self.stream_requests(requests, enable_empty_final_response)
        self.assertEqual(errors, [])
        for rid, prompt in prompts.items():
            results = [r for r, _ in by_id[rid]]
            self.assertEqual(len(results), 6, rid)  # one response per token
            flags = [r.get_response().parameters["triton_final_response"].bool_param
                     for r in results]
            self.assertEqual(flags, [False] * 5 + [True])
            reasons = [r.as_numpy("finish_reason")[0].decode() for r in results]
            self.assertEqual(reasons[-1], "length")
            streamed = "".join(text_of(r) for r in results)
            # The same request, not streamed and without the prompt, gives the same text.
            whole = self.client.infer(MODEL, make_inputs(prompt, sampling=sampling, exclude=True))
            self.assertEqual(streamed, text_of(whole))
            self.assertTrue(streamed)

    def test_streaming_with_final_flags(self):
        self.check_streaming(enable_empty_final_response=False)

    def test_streaming_with_empty_final_response_enabled(self):
        self.check_streaming(enable_empty_final_response=True)

    def test_stream_false_on_a_stream_sends_the_whole_text_once(self):
        by_id, errors = self.stream_requests(
            [("whole", make_inputs("Once upon a time", stream=False, sampling={"max_tokens": 5}))],
            enable_empty_final_response=False)
        self.assertEqual(errors, [])
        self.assertEqual(len(by_id["whole"]), 1)
        self.assertTrue(text_of(by_id["whole"][0][0]).startswith("Once upon a time"))

    def test_non_streaming_infer(self):
        result = self.client.infer(
            MODEL, make_inputs("Hello there", sampling={"max_tokens": 4},
                               extra_bools=["return_num_input_tokens", "return_num_output_tokens",
                                            "return_finish_reason"]),
            request_id="unary")
        self.assertEqual(result.get_response().id, "unary")
        self.assertTrue(text_of(result).startswith("Hello there"))
        self.assertGreater(len(text_of(result)), len("Hello there"))
        self.assertEqual(int(result.as_numpy("num_output_tokens")[0]), 4)
        self.assertGreater(int(result.as_numpy("num_input_tokens")[0]), 0)
        self.assertEqual(result.as_numpy("finish_reason")[0].decode(), "length")

    def test_request_parameters_as_sampling_parameters(self):
        result = self.client.infer(MODEL, make_inputs("Hi"), parameters={"max_tokens": 3},
                                   outputs=[grpcclient.InferRequestedOutput("num_output_tokens")])
        self.assertEqual(int(result.as_numpy("num_output_tokens")[0]), 3)

    def test_bad_requests_name_the_field(self):
        with self.assertRaises(InferenceServerException) as e:
            self.client.infer(MODEL, make_inputs("x", sampling={"bogus_key": 1}))
        self.assertIn("bogus_key", e.exception.message())
        self.assertEqual(e.exception.status(), "StatusCode.INVALID_ARGUMENT")
        with self.assertRaises(InferenceServerException) as e:
            self.client.infer(MODEL, make_inputs("x", sampling={"top_p": 7}))
        self.assertIn("top_p", e.exception.message())
        with self.assertRaises(InferenceServerException) as e:
            self.client.infer("no-such-model", make_inputs("x"))
        self.assertIn("Request for unknown model", e.exception.message())
        # On a stream the error arrives through the callback; the stream goes on.
        by_id, errors = self.stream_requests(
            [("bad-1", make_inputs("x", stream=True, sampling={"max_tokens": "many"})),
             ("good", make_inputs("y", stream=True, sampling={"max_tokens": 2}))],
            enable_empty_final_response=False)
        self.assertEqual(len(errors), 1)
        self.assertIn("max_tokens", str(errors[0]))
        self.assertEqual(len(by_id["good"]), 2)


def main():
    global URL, MODEL
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", default=MODEL)
    args, rest = parser.parse_known_args()
    URL, MODEL = args.url, args.model
    program = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2)
    sys.exit(0 if program.result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
