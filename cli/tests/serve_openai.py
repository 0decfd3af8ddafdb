"""Drives a running `spinel serve` with the official `openai` client.

Usage: serve_openai.py BASE_URL MODEL_ID MODE
  MODE "real": SmolLM2 generating (chat, streaming, stop, seed, usage,
               errors, disconnect).
  MODE "tools": a server with a Llama 3.1-style tools template; each
               request's GBNF `grammar` forces SmolLM2's answer into a Llama
               3.1 JSON tool call: the tool-call mapping through the API,
               both ways, with real generation.
Exits non-zero (an AssertionError or an exception) on any failure.
"""

import json
import socket
import sys
import time
import urllib.error
import urllib.request

import openai  # a missing package is a failure, never a skip

BASE, MODEL, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=BASE + "/v1", api_key="unused", max_retries=0, timeout=120)


def raw(method, path, body=None, headers=None):
    """An HTTP request outside the client: (status, parsed JSON body)."""
    req = urllib.request.Request(BASE + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def check_error(status, body, want_status):
    assert status == want_status, (status, body)
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err


def health_ok():
    status, body = raw("GET", "/health")
    assert status == 200 and body["status"] == "ok", body


def ask(**kw):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name three colors."}], **kw
    )


def real():
    # /v1/models
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL], models

    # Non-streaming chat with usage counts. The first request fills a
    # session's cache; the one after it, like the streamed one below, reuses
    # that prefix and computes the rest the same way, so their greedy texts
    # must agree. (A fresh prompt is computed in one batch instead: at a
    # near-tie the other arithmetic may pick another first token.)
    ask(max_tokens=12, temperature=0)
    r = ask(max_tokens=12, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant"
    assert isinstance(text, str) and text, r
    assert r.choices[0].finish_reason in ("stop", "length"), r
    assert r.usage.prompt_tokens > 5, r.usage
    assert 0 < r.usage.completion_tokens <= 12, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    # Streaming gives the same greedy text, piece by piece, then usage.
    stream = ask(max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(pieces) == text, (pieces, text)
    assert len(pieces) > 1, pieces
    assert finish == r.choices[0].finish_reason, finish
    assert usage.completion_tokens == r.usage.completion_tokens, usage
    # The same prompt again reuses the cached prefix.
    assert usage.prompt_tokens_details.cached_tokens > 0, usage

    # Seed determinism with sampling on.
    a = ask(max_tokens=16, temperature=1.0, seed=1234).choices[0].message.content
    b = ask(max_tokens=16, temperature=1.0, seed=1234).choices[0].message.content
    assert a == b, (a, b)

    # Stop strings: the text ends before the stop string.
    words = text.split()
    assert len(words) >= 2, text
    stop_word = words[1]
    s = ask(max_tokens=12, temperature=0, stop=[stop_word])
    assert s.choices[0].finish_reason == "stop", s
    assert s.choices[0].message.content == text[: text.index(stop_word)], (s, text)
    s = ask(max_tokens=12, temperature=0, stop=stop_word)  # a plain string too
    assert s.choices[0].message.content == text[: text.index(stop_word)]

    # A system / assistant / user conversation.
    r2 = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is 2+2?"},
        ],
        max_tokens=8,
        temperature=0,
    )
    assert r2.choices[0].message.content

    # Legacy completions.
    c = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert c.choices[0].text and c.usage.completion_tokens <= 6, c

    # Errors: the client raises the right classes, the body has OpenAI's shape.
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.body["code"] == "model_not_found", e.body
    try:
        ask(max_tokens=10**7)
        raise AssertionError("max_tokens beyond the context accepted")
    except openai.BadRequestError as e:
        assert e.body["code"] == "context_length_exceeded", e.body
    try:
        ask(temperature="hot")
        raise AssertionError("a string temperature accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "temperature", e.body
    try:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 5000}], max_tokens=4
        )
        raise AssertionError("a prompt longer than the context accepted")
    except openai.BadRequestError as e:
        assert e.body["code"] == "context_length_exceeded", e.body

    check_error(*raw("POST", "/v1/chat/completions", b"{not json", {"Content-Type": "application/json"}), 400)
    check_error(*raw("POST", "/v1/chat/completions", b"[1, 2]"), 400)
    check_error(*raw("POST", "/v1/chat/completions", json.dumps({"messages": "hi"}).encode()), 400)
    check_error(*raw("GET", "/v1/nothing-here"), 404)
    # llama.cpp's /tokenize and /detokenize.
    status, t = raw("POST", "/tokenize", json.dumps({"content": "Hello world"}).encode())
    assert status == 200 and len(t["tokens"]) == 2, t
    status, d = raw("POST", "/detokenize", json.dumps({"tokens": t["tokens"]}).encode())
    assert status == 200 and d["content"] == "Hello world", d
    check_error(*raw("POST", "/detokenize", json.dumps({"tokens": ["x"]}).encode()), 400)
    check_error(*raw("POST", "/tokenize", json.dumps({"content": 5}).encode()), 400)
    with urllib.request.urlopen(BASE + "/", timeout=60) as page:
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        assert b"/v1/chat/completions" in page.read()
    check_error(*raw("POST", "/v1/chat/completions", b"x" * (5 << 20)), 413)
    health_ok()

    # A client that goes away mid-stream: the server stops generating (the
    # session is free again quickly) and keeps serving.
    body = json.dumps(
        {"model": MODEL, "stream": True, "max_tokens": 900, "ignore_eos": True, "temperature": 1.0, "seed": 7,
         "messages": [{"role": "user", "content": "Write a long story about a dragon."}]}
    ).encode()
    host, port = BASE.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    got = b""
    while got.count(b"data: ") < 3:
        got += sock.recv(4096)
    sock.close()
    deadline = time.time() + 5
    while True:
        status, h = raw("GET", "/health")
        if h["busy"] == 0:
            break
        assert time.time() < deadline, "generation went on after the client left"
        time.sleep(0.05)
    r3 = ask(max_tokens=4, temperature=0)
    assert r3.choices[0].message.content

    # A non-streaming client that goes away: the server notices (the
    # connection reads end of file while the answer is pending) and stops
    # long before the 900 tokens.
    body = json.dumps(
        {"model": MODEL, "max_tokens": 900, "ignore_eos": True, "temperature": 1.0, "seed": 3,
         "messages": [{"role": "user", "content": "Write a long story about a dragon."}]}
    ).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    deadline = time.time() + 30
    while raw("GET", "/health")[1]["busy"] == 0:
        assert time.time() < deadline, "the request never started"
        time.sleep(0.05)
    time.sleep(0.8)
    sock.close()
    closed = time.time()
    while raw("GET", "/health")[1]["busy"] != 0:
        assert time.time() < closed + 5, "a non-streamed generation went on after the client left"
        time.sleep(0.05)
    # A slow answer to a client that stays: one JSON body at the end.
    long = ask(max_tokens=120, temperature=0, extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 120, long.usage
    assert long.choices[0].finish_reason == "length"

    # More malformed requests, each a 400 with OpenAI's error shape.
    check_error(*raw("POST", "/v1/chat/completions", b'{"messages": "\xff\xfe"}'), 400)
    check_error(*raw("POST", "/v1/chat/completions", b"\xff\xfe\xfd"), 400)
    for bad in [{"messages": [{"role": 5, "content": "x"}]}, {"messages": [{"content": "x"}]},
                {"messages": [{"role": "user", "content": "x"}], "max_tokens": -3},
                {"messages": [{"role": "user", "content": "x"}], "stop": [1]},
                {"messages": [{"role": "user", "content": "x"}], "top_p": 7}]:
        check_error(*raw("POST", "/v1/chat/completions", json.dumps(bad).encode()), 400)
    check_error(*raw("POST", "/v1/completions", json.dumps({"prompt": 5}).encode()), 400)

    # Slow clients hold only their own connection: one that sends half its
    # headers, one that promises a body and sends part of it, and one that
    # streams an answer but never reads it. Meanwhile others are served, and
    # once they go away the server frees the session.
    half = socket.create_connection((host, int(port)))
    half.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
    slow_body = socket.create_connection((host, int(port)))
    slow_body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"mess")
    mute = socket.socket()
    mute.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    mute.connect((host, int(port)))
    body = json.dumps(
        {"model": MODEL, "stream": True, "max_tokens": 900, "ignore_eos": True,
         "messages": [{"role": "user", "content": "Write a long story about a dragon."}]}
    ).encode()
    mute.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    time.sleep(1.0)
    t0 = time.time()
    r4 = ask(max_tokens=8, temperature=0)
    assert r4.choices[0].message.content, r4
    assert time.time() - t0 < 30, "a request waited on the slow clients"
    health_ok()
    for s in (half, slow_body, mute):
        s.close()
    deadline = time.time() + 10
    while raw("GET", "/health")[1]["busy"] != 0:
        assert time.time() < deadline, "the session of a client that never read stayed busy"
        time.sleep(0.05)

    # Two clients streaming at once share decode steps (continuous batching).
    import threading
    before = raw("GET", "/health")[1]
    outs = {}

    def stream_one(i):
        s = client.chat.completions.create(
            model=MODEL, stream=True, max_tokens=24, temperature=0,
            extra_body={"ignore_eos": True},
            messages=[{"role": "user", "content": ["Count to ten.", "Name the planets."][i]}],
        )
        outs[i] = "".join(c.choices[0].delta.content or "" for c in s if c.choices)

    threads = [threading.Thread(target=stream_one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(outs.get(i) for i in range(2)), outs
    after = raw("GET", "/health")[1]
    steps = after["batched_steps"] - before["batched_steps"]
    rows = after["batched_rows"] - before["batched_rows"]
    assert rows == 2 * 23, (rows, steps)
    assert steps < rows, f"{rows} rows in {steps} steps: the two streams never shared a step"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# SmolLM2 does not call tools by itself: the grammar makes its answer a
# Llama 3.1 JSON tool call; the model still chooses the city.
TOOL_GRAMMAR = r'''root ::= "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"" [A-Za-z ]{1,20} "\"}}"'''
FORCED = {"grammar": TOOL_GRAMMAR}


def check_city(arguments):
    args = json.loads(arguments)
    assert set(args) == {"city"}, args
    city = args["city"]
    assert 1 <= len(city) <= 20 and all(c.isalpha() or c == " " for c in city), args
    return city


def tools():
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=40, extra_body=FORCED
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None, choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather", call
    assert call.id, call
    city = check_city(call.function.arguments)

    # Streaming: the call comes as a tool_calls delta, the same greedy one.
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], stream=True, temperature=0, max_tokens=40,
        extra_body=FORCED,
    )
    calls, finish, content = [], None, []
    for chunk in stream:
        for c in chunk.choices:
            if c.delta.tool_calls:
                calls.extend(c.delta.tool_calls)
            if c.delta.content:
                content.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert finish == "tool_calls" and calls[0].function.name == "get_weather", calls
    assert not "".join(content), content
    assert check_city(calls[0].function.arguments) == city

    # The answer goes back as a tool message (rendered as ipython by the
    # template) and the server takes the whole conversation.
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'})
    r2 = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=40, extra_body=FORCED
    )
    assert r2.choices[0].message.tool_calls, r2
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens, (r2.usage, r.usage)
    # The conversation's start was in a session's cache.
    assert r2.usage.prompt_tokens_details.cached_tokens > 0, r2.usage

    # Without tools offered, the same kind of text is plain content.
    r3 = client.chat.completions.create(
        model=MODEL, messages=messages[:1], temperature=0, max_tokens=40, extra_body=FORCED
    )
    assert r3.choices[0].message.tool_calls is None and r3.choices[0].finish_reason == "stop", r3
    content = r3.choices[0].message.content
    assert json.loads(content)["name"] == "get_weather", content

    # A grammar that does not parse is the client's error.
    try:
        ask(extra_body={"grammar": "root ::= ("})
        raise AssertionError("a broken grammar accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "grammar", e.body
    health_ok()


{"real": real, "tools": tools}[MODE]()
print("ok", MODE)
