"""The Python bindings of spinel-ffi against the real model.

Run by ffi/tests/run-bindings-tests.sh, which generates the bindings from the
library just built and puts them on PYTHONPATH. The model path comes from
SPINEL_TEST_MODEL (scripts/fetch-model.sh prints it); the vision model, its
mmproj and a PNG image from SPINEL_TEST_VISION_MODEL, SPINEL_TEST_VISION_MMPROJ
and SPINEL_TEST_IMAGE (the script converts the tiny mllama test model).
"""

import os
import threading
import unittest

import spinel_ffi as spinel

MODEL = os.environ["SPINEL_TEST_MODEL"]
OPTIONS = spinel.LoadOptions(threads=2, context_length=1024)
GREEDY = spinel.GenerationParams(temperature=0.0)
VISION_MODEL = os.environ["SPINEL_TEST_VISION_MODEL"]
VISION_MMPROJ = os.environ["SPINEL_TEST_VISION_MMPROJ"]
with open(os.environ["SPINEL_TEST_IMAGE"], "rb") as _f:
    PNG = _f.read()


class Collector(spinel.GenerationListener):
    """Gathers one answer; `done` is set by on_complete or on_error."""

    def __init__(self, on_first_token=None):
        self.tokens = []
        self.stats = None
        self.error = None
        self.done = threading.Event()
        self.on_first_token = on_first_token

    def on_token(self, text):
        self.tokens.append(text)
        if len(self.tokens) == 1 and self.on_first_token:
            self.on_first_token()

    def on_complete(self, stats):
        self.stats = stats
        self.done.set()

    def on_error(self, error):
        self.error = error
        self.done.set()

    def wait(self, handle):
        handle.wait_for_completion()
        assert self.done.is_set(), "the handle finished before the listener was told"
        if self.error is not None:
            raise self.error
        return self.stats


class Progress(spinel.LoadProgressListener):
    def __init__(self):
        self.steps = []

    def on_progress(self, fraction, stage):
        self.steps.append((fraction, stage))


class PythonBindings(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.progress = Progress()
        cls.model = spinel.Model.load(MODEL, OPTIONS, cls.progress)

    def test_version(self):
        self.assertRegex(spinel.version(), r"^\d+\.\d+\.\d+")

    def test_load_progress(self):
        fractions = [f for f, _ in self.progress.steps]
        self.assertEqual(fractions[0], 0.0)
        self.assertEqual(fractions[-1], 1.0)
        self.assertEqual(fractions, sorted(fractions))

    def test_info(self):
        info = self.model.info()
        self.assertEqual(info.architecture, "llama")
        self.assertTrue(130e6 < info.parameters < 140e6, info.parameters)
        self.assertEqual(info.quantization, "Q4_1")
        self.assertEqual(info.context_length, 1024)
        self.assertEqual(info.training_context_length, 8192)
        self.assertEqual(info.vocabulary_size, 49152)
        self.assertEqual(info.layers, 30)
        self.assertIn("<|im_start|>", info.chat_template)

    def test_kv_cache_types(self):
        # Q8_0 keys, Q4_0 values: 30 layers x 3 KV heads x (68 + 36) bytes a
        # position, against 256 for f16; the KV cache's share of a 160 MiB
        # budget (half of what the ~90 MiB of weights leave) holds ~2.5x the
        # positions, below the model's 8192.
        def load(k, v):
            options = spinel.LoadOptions(threads=2, memory_budget=160 << 20,
                                         kv_cache_type=k, kv_cache_type_v=v)
            return spinel.Model.load(MODEL, options, None)
        model = load(spinel.KvCacheType.Q8_0, spinel.KvCacheType.Q4_0)
        n_f16 = load(None, None).info().context_length
        n = model.info().context_length
        self.assertLess(n, 8192)
        self.assertLess(abs(n * 104 - n_f16 * 256), 256)
        chat = model.chat_session(None)
        collector = Collector()
        params = spinel.GenerationParams(temperature=0.0, max_tokens=4)
        stats = collector.wait(chat.send("Hi", params, collector))
        self.assertGreaterEqual(stats.generated_tokens, 1)

    def test_tokenize_round_trip(self):
        ids = self.model.tokenize("Hello, world!", False)
        self.assertGreater(len(ids), 1)
        self.assertEqual(self.model.detokenize(ids), "Hello, world!")
        with self.assertRaises(spinel.SpinelError.Tokenizer):
            self.model.detokenize([10**9])

    def test_chat_streams_tokens_and_stats(self):
        chat = self.model.chat_session("You are a helpful assistant.")
        listener = Collector()
        handle = chat.send("What is the capital of France?",
                           spinel.GenerationParams(temperature=0.0, max_tokens=24), listener)
        stats = listener.wait(handle)
        self.assertTrue(handle.is_finished())
        answer = "".join(listener.tokens)
        self.assertTrue(answer.strip(), "an empty answer")
        self.assertGreater(len(listener.tokens), 1)
        self.assertGreater(stats.generated_tokens, 0)
        self.assertLessEqual(stats.generated_tokens, 24)
        self.assertGreater(stats.prompt_tokens, 10)
        self.assertGreater(stats.tokens_per_second, 0.0)
        self.assertIsNotNone(stats.time_to_first_token_seconds)
        self.assertLess(stats.time_to_first_token_seconds, stats.total_seconds)
        history = chat.history()
        self.assertEqual([m.role for m in history], ["system", "user", "assistant"])
        self.assertEqual(history[2].content, answer)
        self.assertIn("<|im_start|>assistant", chat.render_prompt())

        # The second turn reuses the first turn's cache.
        second = Collector()
        stats = second.wait(chat.send("And of Italy?", spinel.GenerationParams(
            temperature=0.0, max_tokens=16), second))
        self.assertGreater(stats.cached_tokens, 10)

    def test_stop_string(self):
        chat = self.model.chat_session(None)
        listener = Collector()
        stats = listener.wait(chat.send(
            "Count from 1 to 10, separated by commas.",
            spinel.GenerationParams(temperature=0.0, max_tokens=48, stop=["5"]), listener))
        self.assertEqual(stats.stop_reason, spinel.StopReason.STOP_STRING(stop="5"))
        self.assertNotIn("5", "".join(listener.tokens))

    def test_cancel_from_another_thread(self):
        chat = self.model.chat_session(None)
        holder = {"ready": threading.Event()}

        def cancel_soon():
            holder["ready"].wait()
            holder["handle"].cancel()

        # Cancelled from a separate thread as soon as the first token arrives.
        listener = Collector(on_first_token=lambda: threading.Thread(target=cancel_soon).start())
        handle = chat.send("Write a long story about a dragon.",
                           spinel.GenerationParams(temperature=0.0, max_tokens=400), listener)
        holder["handle"] = handle
        holder["ready"].set()
        stats = listener.wait(handle)
        self.assertTrue(stats.stop_reason.is_CANCELLED(), stats.stop_reason)
        self.assertLess(stats.generated_tokens, 400)
        # The cancelled turn's partial answer stays in the history.
        self.assertEqual(chat.history()[-1].content, "".join(listener.tokens))

    def test_cancel_before_start(self):
        chat = self.model.chat_session(None)
        listener = Collector()
        handle = chat.send("Hi", GREEDY, listener)
        handle.cancel()
        stats = listener.wait(handle)
        self.assertTrue(stats.stop_reason.is_CANCELLED() or stats.generated_tokens > 0)

    def test_two_sessions_on_two_threads(self):
        results = {}

        def turn(name, question):
            chat = self.model.chat_session(None)
            listener = Collector()
            results[name] = (listener.wait(chat.send(
                question, spinel.GenerationParams(temperature=0.0, max_tokens=16), listener)),
                "".join(listener.tokens))

        threads = [threading.Thread(target=turn, args=(n, q)) for n, q in
                   [("a", "What is 2+2?"), ("b", "Name a color.")]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(sorted(results), ["a", "b"])
        for stats, text in results.values():
            self.assertGreater(stats.generated_tokens, 0)
            self.assertTrue(text)

    def test_listener_exception_is_reported(self):
        class Throwing(Collector):
            def on_token(self, text):
                raise RuntimeError("listener bug")

        chat = self.model.chat_session(None)
        listener = Throwing()
        handle = chat.send("Hi", GREEDY, listener)
        handle.wait_for_completion()
        self.assertIsInstance(listener.error, spinel.SpinelError.Internal)

    def test_invalid_argument(self):
        chat = self.model.chat_session(None)
        listener = Collector()
        handle = chat.send("Hi", spinel.GenerationParams(stop=[""]), listener)
        handle.wait_for_completion()
        self.assertIsInstance(listener.error, spinel.SpinelError.InvalidArgument)

    def test_json_schema_answer(self):
        import json
        schema = {"type": "object",
                  "properties": {"city": {"type": "string", "maxLength": 20},
                                 "population": {"type": "integer", "minimum": 0}},
                  "required": ["city", "population"]}
        chat = self.model.chat_session(None)
        listener = Collector()
        stats = listener.wait(chat.send("Tell me about Rome as JSON.", spinel.GenerationParams(
            temperature=0.0, max_tokens=100, json_schema=json.dumps(schema)), listener))
        doc = json.loads("".join(listener.tokens))
        self.assertEqual(list(doc.keys()), ["city", "population"])
        self.assertIsInstance(doc["city"], str)
        self.assertLessEqual(len(doc["city"]), 20)
        self.assertIsInstance(doc["population"], int)
        self.assertGreaterEqual(doc["population"], 0)
        self.assertEqual(stats.stop_reason, spinel.StopReason.END_OF_GENERATION())

    def test_tool_calls_come_back_parsed(self):
        import json
        tools = [{"type": "function", "function": {
            "name": "get_weather", "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}}]
        # SmolLM2 does not call tools by itself: a grammar makes the answer
        # a Llama 3.1 JSON tool call.
        grammar = 'root ::= "{\\"name\\": \\"get_weather\\", \\"parameters\\": {\\"city\\": \\"" [A-Za-z ]{1,20} "\\"}}"'
        chat = self.model.chat_session(None)
        listener = Collector()
        stats = listener.wait(chat.send("What is the weather in Paris?", spinel.GenerationParams(
            temperature=0.0, max_tokens=40, tools=json.dumps(tools), grammar=grammar), listener))
        self.assertEqual(len(stats.tool_calls), 1, "".join(listener.tokens))
        self.assertEqual(stats.tool_calls[0].name, "get_weather")
        self.assertIsInstance(json.loads(stats.tool_calls[0].arguments_json)["city"], str)

    def test_prompt_lookup_keeps_the_answer(self):
        question = "Repeat exactly: one two three four, one two three four."
        answers = []
        for ngram in (None, 2):
            listener = Collector()
            stats = listener.wait(self.model.chat_session(None).send(question, spinel.GenerationParams(
                temperature=0.0, max_tokens=32, lookup_ngram=ngram), listener))
            answers.append(("".join(listener.tokens), stats.drafted_tokens))
        self.assertEqual(answers[0][0], answers[1][0])
        self.assertEqual(answers[0][1], 0)
        self.assertGreater(answers[1][1], 0)

    def test_missing_file_is_an_error(self):
        with self.assertRaises(spinel.SpinelError.Io) as caught:
            spinel.Model.load("/nonexistent/model.gguf", spinel.LoadOptions(), None)
        self.assertIn("nonexistent", str(caught.exception))

    def _turn(self, chat, message):
        listener = Collector()
        stats = listener.wait(chat.send(
            message, spinel.GenerationParams(temperature=0.0, max_tokens=16), listener))
        return "".join(listener.tokens), stats

    def test_save_and_restore(self):
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "chat.session")
            chat = self.model.chat_session("Answer briefly.")
            self._turn(chat, "Name a colour.")
            chat.save(path)
            restored = self.model.restore_session(path)
            self.assertEqual(restored.history(), chat.history())
            want, want_stats = self._turn(chat, "And a fruit?")
            got, got_stats = self._turn(restored, "And a fruit?")
            self.assertEqual(got, want)
            self.assertEqual(got_stats.cached_tokens, want_stats.cached_tokens)
            self.assertGreater(got_stats.cached_tokens, 0)
            with open(path, "rb") as f:
                data = f.read()
            bad = os.path.join(d, "truncated.session")
            with open(bad, "wb") as f:
                f.write(data[: len(data) // 2])
            with self.assertRaises(spinel.SpinelError.SessionFile) as caught:
                self.model.restore_session(bad)
            self.assertIn("truncated", str(caught.exception))

    def test_trim_memory(self):
        chat = self.model.chat_session("Answer briefly.")
        self._turn(chat, "Name a colour.")
        before = self.model.memory_usage()
        self.assertGreater(before.kv_cache_bytes, 0)
        self.assertGreater(before.weights_resident_bytes, 0)
        freed = self.model.trim_memory(spinel.TrimLevel.BACKGROUND)
        self.assertGreater(freed, 0)
        after = self.model.memory_usage()
        self.assertLess(after.kv_cache_bytes, before.kv_cache_bytes)
        fresh = self.model.chat_session(None)
        for m in chat.history():
            fresh.add_message(m)
        want, _ = self._turn(fresh, "And a fruit?")
        got, stats = self._turn(chat, "And a fruit?")
        self.assertEqual(got, want)
        self.assertEqual(stats.cached_tokens, 0)

    def test_readme_quick_start(self):
        import contextlib, io, tempfile
        model_path = MODEL
        with tempfile.TemporaryDirectory() as d, contextlib.redirect_stdout(io.StringIO()) as out:
            chat_path = os.path.join(d, "chat.session")
            # As in README.md:
            model = spinel.Model.load(model_path, spinel.LoadOptions(context_length=4096), None)
            chat = model.chat_session("You are a helpful assistant.")
            class Printer(spinel.GenerationListener):
                def on_token(self, text): print(text, end="", flush=True)
                def on_complete(self, stats): print(f"\n{stats.tokens_per_second:.1f} tokens/s")
                def on_error(self, error): print(error)
            chat.send("What is the capital of France?", spinel.GenerationParams(max_tokens=24), Printer()).wait_for_completion()
            chat.save(chat_path)
            again = model.restore_session(chat_path)
        self.assertIn("tokens/s", out.getvalue())
        self.assertEqual(again.history(), chat.history())

    def test_download_model(self):
        import hashlib, http.server, tempfile, time

        payload = os.urandom(1 << 20)
        digest = hashlib.sha256(payload).hexdigest()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                slow = self.path == "/slow"
                for i in range(0, len(payload), 1 << 16):
                    if slow:
                        time.sleep(0.05)
                    try:
                        self.wfile.write(payload[i:i + (1 << 16)])
                    except OSError:
                        return

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"

        class Listener(spinel.DownloadListener):
            def __init__(self, cancel_at=None):
                self.progress, self.error, self.completed = [], None, False
                self.handle, self.cancel_at = None, cancel_at

            def on_progress(self, downloaded_bytes, total_bytes):
                self.progress.append((downloaded_bytes, total_bytes))
                if self.cancel_at is not None and downloaded_bytes >= self.cancel_at and self.handle:
                    self.handle.cancel()

            def on_complete(self):
                self.completed = True

            def on_error(self, error):
                self.error = error

        try:
            with tempfile.TemporaryDirectory() as d:
                dest = os.path.join(d, "model.gguf")
                ok = Listener()
                spinel.download_model(f"{base}/model", dest, digest, ok).wait_for_completion()
                self.assertTrue(ok.completed, ok.error)
                self.assertEqual(ok.progress[-1], (len(payload), len(payload)))
                with open(dest, "rb") as f:
                    self.assertEqual(f.read(), payload)

                bad_dest = os.path.join(d, "bad.gguf")
                bad = Listener()
                spinel.download_model(f"{base}/model", bad_dest, "00" * 32, bad).wait_for_completion()
                self.assertIsInstance(bad.error, spinel.SpinelError.ChecksumMismatch)
                self.assertFalse(os.path.exists(bad_dest))

                cancel_dest = os.path.join(d, "cancelled.gguf")
                cancelled = Listener(cancel_at=1)
                cancelled.handle = spinel.download_model(f"{base}/slow", cancel_dest, None, cancelled)
                cancelled.handle.wait_for_completion()
                self.assertIsInstance(cancelled.error, spinel.SpinelError.Cancelled)
                self.assertFalse(os.path.exists(cancel_dest))
        finally:
            server.shutdown()
            server.server_close()

    def test_images_with_a_message(self):
        options = spinel.LoadOptions(threads=2, context_length=512, mmproj_path=VISION_MMPROJ)
        model = spinel.Model.load(VISION_MODEL, options, None)
        self.assertTrue(model.info().supports_images)
        self.assertFalse(self.model.info().supports_images)
        params = spinel.GenerationParams(temperature=0.0, max_tokens=8)

        def ask(chat, images):
            listener = Collector()
            stats = listener.wait(chat.send("What is in this image?", params, listener, images=images))
            return "".join(listener.tokens), stats

        chat = model.chat_session(None)
        answer, stats = ask(chat, [PNG])
        self.assertTrue(answer, "an empty answer")
        self.assertGreater(stats.image_encode_seconds, 0.0)
        self.assertIn("<|image|>What is in this image?", chat.render_prompt())
        # Greedy: a new chat given the same bytes answers the same.
        self.assertEqual(ask(model.chat_session(None), [PNG])[0], answer)
        # Without images: nothing encoded, no image in the prompt.
        plain = model.chat_session(None)
        _, plain_stats = ask(plain, [])
        self.assertEqual(plain_stats.image_encode_seconds, 0.0)
        self.assertNotIn("<|image|>", plain.render_prompt())

        # A truncated PNG: the runtime's decoder error; the history is as it was.
        bad = model.chat_session(None)
        with self.assertRaises(spinel.SpinelError.InvalidArgument) as e:
            ask(bad, [PNG[: len(PNG) // 2]])
        self.assertIn("corrupt or truncated", str(e.exception))
        self.assertEqual(bad.history(), [])
        # Images for the text-only demo model.
        text_only = self.model.chat_session(None)
        with self.assertRaises(spinel.SpinelError.InvalidArgument) as e:
            ask(text_only, [PNG])
        self.assertIn("images need a vision model", str(e.exception))
        # Its mmproj on the text-only model does not load.
        with self.assertRaises(spinel.SpinelError.InvalidModel):
            spinel.Model.load(MODEL, spinel.LoadOptions(mmproj_path=VISION_MMPROJ), None)

    def test_not_a_model_is_an_error(self):
        with self.assertRaises(spinel.SpinelError.InvalidModel):
            spinel.Model.load(__file__, spinel.LoadOptions(), None)


if __name__ == "__main__":
    unittest.main(verbosity=2)
