"""The completion server (python -m minicodegen serve) as clients meet it: the real server in a
subprocess on 127.0.0.1 with the tiny model, the official ``openai`` package for completions
(streamed and not), raw HTTP for the errors. Its greedy and seeded text equals
minicodegen.generate; log-probabilities are the model's; a cancelled stream frees its row; 16
clients at once all get whole answers and leave the server's memory where it was; requests beyond
--max-batch wait; --api-key is enforced; Ctrl-C stops it with no traceback."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import socket
import time

import numpy as np
import openai
import pytest

from serve_helpers import Server

import minicodegen

KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    code, err = s.stop()
    assert code in (0, 130) and "Traceback" not in err, err


@pytest.fixture(scope="module")
def tiny():
    return minicodegen.load("tiny")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def wait_idle(server: Server, seconds: float = 20) -> dict:
    deadline = time.time() + seconds
    while True:
        h = server.get("/health")[1]
        if (h["rows"] == 0 and h["waiting"] == 0) or time.time() > deadline:
            return h
        time.sleep(0.05)


PROMPT = "def fibonacci(n):\n    "


def test_greedy_text_equals_generate_streamed_or_not(client, tiny):
    want = minicodegen.generate(tiny, PROMPT, 40)
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0)
    assert r.object == "text_completion" and r.model == "tiny" and r.id.startswith("cmpl-")
    assert r.choices[0].text == want and r.choices[0].finish_reason in ("stop", "length") and r.choices[0].index == 0
    assert r.usage.prompt_tokens == len(tiny.tokenizer.encode(PROMPT)) and r.usage.completion_tokens == 40
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, temperature=0, stream=True))
    assert len(chunks) > 10  # token by token, not one piece at the end
    assert "".join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "length"


def test_seeded_samples_equal_generate_and_each_choice_is_generates_row(client, tiny):
    """seed + temperature + top_p: choice i equals row i of generate's batch with the same seed,
    whether the server runs it alone or beside others (the batch never changes a token)."""
    kw = dict(max_tokens=24, temperature=0.8, top_p=0.95, seed=1234)
    want = minicodegen.generate(tiny, [PROMPT] * 3, 24, temperature=0.8, top_p=0.95, seed=1234)
    r = client.completions.create(model="tiny", prompt=PROMPT, n=3, **kw)
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == want
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # the same request beside three others
        others = [pool.submit(client.completions.create, model="tiny", prompt=p, max_tokens=30, temperature=1.0)
                  for p in ("import os\n", "class A:\n", "# sort a list\n")]  # fmt: skip
        again = pool.submit(client.completions.create, model="tiny", prompt=PROMPT, n=3, **kw).result()
        [f.result() for f in others]
    assert [c.text for c in sorted(again.choices, key=lambda c: c.index)] == want


def test_logprobs_are_the_models_and_echo_returns_the_prompt(client, tiny):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3, echo=True)
    c = r.choices[0]
    assert c.text.startswith(PROMPT)
    lp = c.logprobs
    n_prompt = len(tiny.tokenizer.encode(PROMPT))
    assert len(lp.tokens) == n_prompt + 8 and lp.token_logprobs[0] is None
    assert "".join(lp.tokens) == c.text and lp.text_offset[n_prompt] == len(PROMPT)
    ids = tiny.tokenizer.encode(c.text)[: n_prompt + 8]
    np.testing.assert_allclose(lp.token_logprobs[1:], minicodegen.score(tiny, ids).logprobs[1:], atol=2e-3)
    for tok, top in zip(lp.tokens[n_prompt:], lp.top_logprobs[n_prompt:]):
        assert len(top) == 3 and max(top, key=top.get) == tok  # greedy: the chosen token is the likeliest
    streamed = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2,
                                              stream=True))  # fmt: skip
    toks = [t for ch in streamed if ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    assert "".join(toks) == "".join(ch.choices[0].text for ch in streamed) == c.text[len(PROMPT):]


def test_stop_strings_and_the_engines_route(server, tiny):
    want = minicodegen.generate(tiny, PROMPT, 60, stop=["\n\n", "return"])
    status, _, r = server.post({"prompt": PROMPT, "max_tokens": 60, "temperature": 0, "stop": ["\n\n", "return"]},
                               path="/v1/engines/codegen/completions")  # fmt: skip
    assert status == 200 and r["choices"][0]["text"] == want and r["choices"][0]["finish_reason"] == "stop"
    status, _, r = server.post({"prompt": [PROMPT, tiny.tokenizer.encode("import os\n")], "max_tokens": 5, "n": 2,
                                "temperature": 0})  # fmt: skip
    assert status == 200 and [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    assert r["choices"][0]["text"] == r["choices"][1]["text"] == minicodegen.generate(tiny, PROMPT, 5)


def test_a_prompt_longer_than_the_window_keeps_its_end_or_is_refused(server, tiny):
    long = "x = 1\n" * 400  # 800 tokens > tiny's 512
    n = len(tiny.tokenizer.encode(long))
    status, head, r = server.post({"prompt": long, "max_tokens": 12, "temperature": 0})
    assert status == 200 and int(head["x-prompt-tokens-dropped"]) == n - (512 - 12)
    assert r["usage"]["prompt_tokens"] == 500 and r["usage"]["prompt_tokens_dropped"] == n - 500
    kept = tiny.tokenizer.encode(long)[n - 500:]
    assert r["choices"][0]["text"] == tiny.tokenizer.decode(minicodegen.generate(tiny, kept, 12))
    status, _, r = server.post({"prompt": long, "max_tokens": 12, "truncate_prompt": False})
    assert status == 400 and r["error"]["code"] == "context_length_exceeded" and r["error"]["param"] == "prompt"


@pytest.mark.parametrize("body,status,param", [
    ('{"prompt": "x", "max_tokens": ', 400, None),  # malformed JSON
    ('["a list"]', 400, None),
    ({"max_tokens": 5}, 400, "prompt"),
    ({"prompt": 7}, 400, "prompt"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": [[1, 2, 99999999]]}, 400, "prompt"),
    ({"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": -3}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 512}, 400, "max_tokens"),
    ({"prompt": "x", "n": 17}, 400, "n"),
    ({"prompt": ["x"] * 10, "n": 7}, 400, "n"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"prompt": "x", "stop": 3}, 400, "stop"),
    ({"prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ({"prompt": "x", "stream": "yes"}, 400, "stream"),
    ({"prompt": "x", "suffix": "}"}, 400, "suffix"),
    ({"prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
])  # fmt: skip
def test_bad_requests_get_openais_error_body_and_the_server_keeps_serving(server, body, status, param):
    got, _, r = server.post(body)
    assert got == status, r
    assert set(r["error"]) == {"message", "type", "param", "code"} and r["error"]["param"] == param
    assert r["error"]["type"] == "invalid_request_error" and r["error"]["message"]
    ok, _, r = server.post({"prompt": "x", "max_tokens": 1, "user": "someone", "an_unknown_field": [1]})
    assert ok == 200 and r["choices"][0]["finish_reason"] in ("stop", "length")


def test_routes_sizes_and_methods(server):
    status, _, r = server.post(b"{" + b" " * (1 << 20) + b"}")
    assert status == 413 and r["error"]["code"] == "body_too_large"
    status, _, data = server.request("GET", "/no/such/route")
    assert status == 404 and json.loads(data)["error"]["message"] == "no route /no/such/route"
    status, _, data = server.request("GET", "/v1/completions")
    assert status == 405 and "error" in json.loads(data)
    assert server.get("/v1/models") == (200, {"object": "list", "data": [
        {"id": "tiny", "object": "model", "created": 0, "owned_by": "minicodegen"}]})  # fmt: skip
    status, token = server.get("/copilot_internal/v2/token")
    assert status == 200 and token["token"] and token["expires_at"] > time.time()
    status, head, page = server.request("GET", "/")
    assert status == 200 and head["content-type"].startswith("text/html") and b"tiny" in page


def test_a_cancelled_stream_frees_its_row(server):
    """An editor cancels on every keystroke: closing the connection mid-stream frees the row at the
    next step, long before its 400 tokens would have been made."""
    before = wait_idle(server)["cancelled_rows"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": PROMPT, "max_tokens": 400, "stream": True,
                                                         "temperature": 0}), {"Content-Type": "application/json"})  # fmt: skip
    r = conn.getresponse()
    lines = [r.readline() for _ in range(8)]
    assert all(line.startswith(b"data: {") or line == b"\n" for line in lines)
    assert server.get("/health")[1]["rows"] == 1
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    t0 = time.time()
    h = wait_idle(server)
    assert h["rows"] == 0 and h["cancelled_rows"] == before + 1, h
    assert time.time() - t0 < 10


def test_a_client_that_hangs_up_on_a_plain_request_frees_its_rows(server):
    """Without streaming the server notices the closed connection while it waits (it polls every
    quarter second), frees the rows that run and drops the choices that wait. The request asks for
    4 prompts x 16 choices of 400 tokens, 4 waves of 16 rows: seconds of work, so that its rows
    cannot all finish before the server looks (one row of 400 tokens took 0.3 s on an AMD EPYC)."""
    before = wait_idle(server)["cancelled_rows"]
    sock = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"prompt": [PROMPT] * 4, "n": 16, "max_tokens": 400, "temperature": 0}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    deadline = time.time() + 20
    while server.get("/health")[1]["rows"] == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert server.get("/health")[1]["rows"] > 0
    sock.close()
    t0 = time.time()
    h = wait_idle(server)
    assert h["rows"] == 0 and h["waiting"] == 0, h
    assert before < h["cancelled_rows"] <= before + 16, h  # (the running rows: at most one wave)
    assert time.time() - t0 < 2, "the waiting choices ran instead of being dropped"


def test_sixteen_clients_at_once(server, tiny):
    """Every request gets a whole, well-formed answer; they share the batch (peak rows > 1); the
    server's resident memory afterwards is within 10% of before."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    client.completions.create(model="tiny", prompt="warm up", max_tokens=20)  # the first batch's pages
    wait_idle(server)
    rss0 = server.rss_kib()
    prompts = [f"def task_{i}(x):\n    " + "# step\n    " * (i % 5) for i in range(16)]

    def ask(i: int):
        if i % 2:
            return client.completions.create(model="tiny", prompt=prompts[i], max_tokens=30 + i, temperature=0.7, seed=i)
        chunks = list(client.completions.create(model="tiny", prompt=prompts[i], max_tokens=30 + i, temperature=0.7,
                                                seed=i, stream=True))  # fmt: skip
        return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    for i, a in enumerate(answers):
        text, reason = (a.choices[0].text, a.choices[0].finish_reason) if i % 2 else a
        assert reason in ("stop", "length")
        assert text == minicodegen.generate(tiny, prompts[i], 30 + i, temperature=0.7, seed=i), i
    h = wait_idle(server)
    assert h["peak_rows"] > 1 and h["rows"] == 0 and h["waiting"] == 0
    assert server.rss_kib() < 1.10 * rss0, (rss0, server.rss_kib())


def test_api_key_max_batch_and_a_queue():
    """--api-key: 401 without the key or with a wrong one (the page and /health stay open);
    --max-batch 2: six requests at once all complete, never more than two rows decoding."""
    s = Server("--api-key", KEY, "--max-batch", "2")
    try:
        status, _, r = s.post({"prompt": "x", "max_tokens": 2})
        assert status == 401 and r["error"]["code"] == "invalid_api_key"
        status, _, r = s.post({"prompt": "x", "max_tokens": 2}, headers={"Authorization": "Bearer wrong"})
        assert status == 401
        assert s.get("/health")[0] == 200 and s.request("GET", "/")[0] == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).completions.create(
                model="tiny", prompt="x", max_tokens=2)
        client = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: client.completions.create(model="tiny", prompt=f"# {i}\n", max_tokens=20,
                                                                        temperature=0), range(6)))  # fmt: skip
        assert all(a.choices[0].finish_reason in ("stop", "length") for a in answers)
        h = wait_idle(s)
        assert h["peak_rows"] == 2 and h["admitted"] == 6
    finally:
        code, err = s.stop()
    assert code in (0, 130) and "Traceback" not in err, err


def test_a_public_address_without_a_key_warns_and_ctrl_c_stops_cleanly():
    s = Server(host="0.0.0.0")
    assert s.post({"prompt": "x", "max_tokens": 2})[0] == 200
    code, err = s.stop()  # SIGINT, as Ctrl-C sends
    assert code in (0, 130), err
    assert "warning: serving on 0.0.0.0 without --api-key" in err and "Traceback" not in err


def test_serve_usage_errors():
    from minicodegen.__main__ import main

    assert main(["serve", "--model", "tiny", "--port", "70000"]) == 2
    assert main(["serve", "--model", "tiny", "--max-batch", "0"]) == 2
    assert main(["serve", "--model", os.devnull]) == 1
