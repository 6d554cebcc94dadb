#!/usr/bin/env python3
"""The official `openai` python client against tessera's OpenAI HTTP server.

Run by run_openai_client_test.sh against fake_openai_server (FakeFrontend behind it), or by hand
against any tessera coordinator:  python3 openai_client_test.py --base-url http://HOST:PORT/v1
Exits non-zero on the first failed check.
"""
import argparse
import sys
import unittest

import openai

BASE_URL = None


class OpenAiClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = openai.OpenAI(base_url=BASE_URL, api_key="unused", max_retries=0,
                                   timeout=30)
        cls.model = cls.client.models.list().data[0].id

    def test_models_list(self):
        models = self.client.models.list()
        self.assertGreaterEqual(len(models.data), 1)
        self.assertEqual(models.data[0].object, "model")
        self.assertEqual(models.data[0].owned_by, "tessera")

    def test_completion(self):
        out = self.client.completions.create(model=self.model, prompt="Hello world", max_tokens=5)
        self.assertEqual(out.object, "text_completion")
        self.assertTrue(out.id.startswith("cmpl-"))
        self.assertEqual(len(out.choices), 1)
        self.assertEqual(out.choices[0].finish_reason, "length")
        self.assertTrue(out.choices[0].text)
        self.assertEqual(out.usage.completion_tokens, 5)
        self.assertGreater(out.usage.prompt_tokens, 0)
        self.assertEqual(out.usage.total_tokens,
                         out.usage.prompt_tokens + out.usage.completion_tokens)

    def test_completion_streaming_matches_non_streaming(self):
        whole = self.client.completions.create(model=self.model, prompt="Stream me",
                                               max_tokens=6)
        chunks = list(self.client.completions.create(
            model=self.model, prompt="Stream me", max_tokens=6, stream=True,
            stream_options={"include_usage": True}))
        token_chunks = [c for c in chunks if c.choices]
        self.assertEqual(len(token_chunks), 6)
        self.assertEqual("".join(c.choices[0].text for c in token_chunks), whole.choices[0].text)
        self.assertEqual(token_chunks[-1].choices[0].finish_reason, "length")
        self.assertTrue(all(c.choices[0].finish_reason is None for c in token_chunks[:-1]))
        usage_chunk = chunks[-1]
        self.assertEqual(usage_chunk.choices, [])
        self.assertEqual(usage_chunk.usage.completion_tokens, 6)
        self.assertEqual(usage_chunk.usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_chat(self):
        out = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Hi there"}],
            max_tokens=4)
        self.assertEqual(out.object, "chat.completion")
        self.assertTrue(out.id.startswith("chatcmpl-"))
        self.assertEqual(out.choices[0].message.role, "assistant")
        self.assertTrue(out.choices[0].message.content)
        self.assertEqual(out.choices[0].finish_reason, "length")
        self.assertEqual(out.usage.completion_tokens, 4)

    def test_chat_streaming_with_usage(self):
        messages = [{"role": "user", "content": [{"type": "text", "text": "Count"}]}]
        whole = self.client.chat.completions.create(model=self.model, messages=messages,
                                                    max_completion_tokens=5)
        chunks = list(self.client.chat.completions.create(
            model=self.model, messages=messages, max_completion_tokens=5, stream=True,
            stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].object, "chat.completion.chunk")
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        self.assertEqual(chunks[0].choices[0].delta.content, "")
        token_chunks = chunks[1:-1]
        self.assertEqual(len(token_chunks), 5)
        self.assertEqual("".join(c.choices[0].delta.content for c in token_chunks),
                         whole.choices[0].message.content)
        self.assertEqual(token_chunks[-1].choices[0].finish_reason, "length")
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 5)
        self.assertEqual(chunks[-1].usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_chat_streaming_without_usage(self):
        chunks = list(self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": "x"}], max_tokens=3,
            stream=True))
        self.assertEqual(len(chunks), 4)
        self.assertTrue(all(c.usage is None for c in chunks))

    def test_n_choices(self):
        out = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, n=3,
            seed=5)
        self.assertEqual([c.index for c in out.choices], [0, 1, 2])
        self.assertTrue(all(c.finish_reason == "length" for c in out.choices))
        self.assertEqual(out.usage.completion_tokens, 9)
        one = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
        self.assertEqual(out.usage.prompt_tokens, one.usage.prompt_tokens)  # counted once
        chunks = list(self.client.completions.create(model=self.model, prompt="Hi", max_tokens=2,
                                                     n=2, stream=True))
        self.assertEqual(sorted({c.choices[0].index for c in chunks if c.choices}), [0, 1])

    def test_bad_request_names_the_field(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.completions.create(model=self.model, prompt="x", max_tokens=4,
                                           temperature=-1)
        self.assertIn("temperature", str(caught.exception))
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": "x"}], top_p=1.5)
        self.assertIn("top_p", str(caught.exception))
        with self.assertRaises(openai.BadRequestError) as caught:
            self.client.completions.create(model=self.model, prompt="x", max_tokens=0)
        self.assertIn("max_tokens", str(caught.exception))

    def test_unknown_model_is_not_found(self):
        with self.assertRaises(openai.NotFoundError) as caught:
            self.client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
        self.assertIn("no-such-model", str(caught.exception))


def main():
    global BASE_URL
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    args, rest = parser.parse_known_args()
    BASE_URL = args.base_url
    print(f"openai {openai.__version__} against {BASE_URL}", flush=True)
    result = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
