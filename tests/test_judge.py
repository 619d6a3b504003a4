"""LLM-as-judge: verdict parsing, position-bias aggregation, the crash-safe cache, retries, and
an end-to-end run against a real OpenAI-compatible server on loopback serving SmolLM2."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from spectrumkd.evaluation.judge import (
    PROMPT_VERSION,
    JudgeConfig,
    JudgeItem,
    JudgmentCache,
    OpenAIJudge,
    build_messages,
    cache_key,
    judge_cache_path,
    judge_eval_runs,
    judge_items,
    load_questions,
    pair_score,
    parse_verdict,
    redact_url,
    student_score,
    summarize_pairs,
)
from spectrumkd.io import read_jsonl, write_jsonl

KEY = "sk-test-0123456789-secret"
KEY_ENV = "SPECTRUMKD_TEST_JUDGE_KEY"


# --------------------------------------------------------------------------- loopback server

Responder = Callable[[dict[str, Any], int], tuple[int, dict[str, Any]]]


class ChatServer:
    """A real HTTP server on 127.0.0.1 (a free port) answering ``POST /v1/chat/completions``
    in the OpenAI format. ``responder(body, request_number)`` returns (status, JSON payload);
    every request body and its arrival time are logged, and the bearer key is checked."""

    def __init__(self, responder: Responder, key: str = KEY) -> None:
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if self.headers.get("Authorization") != f"Bearer {key}":
                    return self._send(401, {"error": {"message": "bad key"}})
                with server.lock:
                    server.requests.append(body)
                    server.times.append(time.monotonic())
                    number = len(server.requests)
                status, payload = server.responder(body, number)
                self._send(status, payload)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(text: str, model: str = "judge", finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def canned(text: str) -> Responder:
    return lambda body, number: (200, completion(text, body.get("model", "judge")))


def config_for(server: ChatServer, **kwargs: Any) -> JudgeConfig:
    options = {"model": "judge", "key_env": KEY_ENV, "max_retries": 2, "workers": 1}
    return JudgeConfig(base_url=server.base_url, **{**options, **kwargs})


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A is more precise.\n[[A]]", "A"),
        ("[[B]]", "B"),
        ("Both are fine. Verdict: [[C]]", "C"),
        ("[[ b ]]", "B"),  # spacing and case are typing, not doubt
        ("[[A]] ... final answer: [[A]]", "A"),  # the same verdict repeated
        ("Reply A is better.", None),  # no bracketed verdict: not guessed from prose
        ("[A]", None),
        ("[[D]]", None),
        ("Output [[A]] if A is better, [[B]] if B is better", None),  # two different ones
        ("[[A]] no wait [[C]]", None),
        ("", None),
        (None, None),
    ],
)
def test_verdict_parsing(text, expected):
    assert parse_verdict(text) == expected


def test_position_bias_cancels_over_both_orders():
    # The student's slot is A in order ab and B in order ba.
    assert student_score("A", "ab") == 1.0 and student_score("A", "ba") == 0.0
    assert student_score("B", "ab") == 0.0 and student_score("B", "ba") == 1.0
    assert student_score("C", "ab") == student_score("C", "ba") == 0.5
    assert student_score(None, "ab") is None
    with pytest.raises(ValueError, match="order must be"):
        student_score("A", "xy")
    # A judge that always picks the first position gives exactly a half win rate.
    assert pair_score("A", "A") == 0.5
    assert pair_score("A", "B") == 1.0 and pair_score("B", "A") == 0.0
    assert pair_score("A", "C") == 0.75 and pair_score("C", "C") == 0.5
    assert pair_score("A", None) is None and pair_score(None, "B") is None

    rows = [
        {"verdict_ab": "A", "verdict_ba": "B"},  # student wins twice
        {"verdict_ab": "A", "verdict_ba": "A"},  # position bias: win + loss
        {"verdict_ab": "C", "verdict_ba": "B"},  # tie + win
        {"verdict_ab": None, "verdict_ba": "B"},  # unparseable: pair excluded
        {"verdict_ab": None, "verdict_ba": None, "finish_ab": "length"},  # both cut off
    ]
    summary = summarize_pairs(rows)
    assert summary == {
        "n": 5,
        "win_rate": pytest.approx(100 * (1.0 + 0.5 + 0.75) / 3),
        "wins": 4,
        "ties": 1,
        "losses": 1,
        "unparseable": 3,
        "unparseable_share": pytest.approx(3 / 10),
        "scored_pairs": 3,
        "excluded_pairs": 2,
        "consistent_pairs": 1,
        "cut_off": 1,
    }
    assert summary["win_rate"] == pytest.approx(
        100 * (summary["wins"] + summary["ties"] / 2) / (2 * summary["scored_pairs"])
    )
    assert summarize_pairs([{"verdict_ab": None, "verdict_ba": None}])["win_rate"] is None


def test_cache_key_depends_on_everything_the_judgment_depends_on():
    base = {
        "question": "q",
        "answer_a": "a",
        "answer_b": "b",
        "order": "ab",
        "model": "m",
        "temperature": 0.7,
        "max_tokens": 16,
    }
    keys = {cache_key(**base)}
    for field, other in [
        ("question", "q2"),
        ("answer_a", "b"),
        ("answer_b", "a"),
        ("order", "ba"),
        ("model", "m2"),
        ("temperature", 0.0),
        ("max_tokens", 32),
    ]:
        keys.add(cache_key(**{**base, field: other}))
    keys.add(cache_key(**base, prompt_version="other"))
    assert len(keys) == 9
    assert cache_key(**base) == cache_key(**dict(reversed(list(base.items()))))


# --------------------------------------------------------------------------- cache


def test_cache_survives_a_truncated_last_line_and_keeps_appending(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = JudgmentCache(path)
    cache.put({"key": "k1", "raw_text": "[[A]]"})
    cache.put({"key": "k2", "raw_text": "no verdict"})
    # A kill mid-write leaves half a row without its newline.
    with path.open("a") as handle:
        handle.write('{"key": "k3", "raw_text": "[[B')
    reread = JudgmentCache(path)
    assert reread.dropped_partial_line and len(reread) == 2
    assert reread.get("k1")["verdict"] == "A" and reread.get("k2")["verdict"] is None
    assert "k3" not in reread and reread.get("k3") is None
    reread.put({"key": "k3", "raw_text": "[[B]]"})
    assert [row["key"] for row in read_jsonl(path)] == ["k1", "k2", "k3"]  # a clean file again

    # A complete last row that lost only its newline is kept, and the next row starts a line.
    path.write_text(path.read_text().rstrip("\n"))
    again = JudgmentCache(path)
    assert len(again) == 3 and not again.dropped_partial_line
    again.put({"key": "k4", "raw_text": "[[C]]"})
    assert [row["key"] for row in read_jsonl(path)] == ["k1", "k2", "k3", "k4"]

    # Corruption that is not a tail being written is an error naming the line.
    path.write_text('{"key": "k1", "raw_text": "[[A]]"}\nnot json\n{"key": "k2"}\n')
    with pytest.raises(ValueError, match=r"cache.jsonl:2: corrupt judgment cache line"):
        JudgmentCache(path)


def test_cached_verdicts_are_reparsed_from_the_raw_text(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text(json.dumps({"key": "k", "verdict": "A", "raw_text": "[[C]]"}) + "\n")
    assert JudgmentCache(path).get("k")["verdict"] == "C"


# --------------------------------------------------------------------------- endpoint


def test_retries_a_server_that_fails_twice_with_500(monkeypatch):
    def flaky(body, number):
        if number <= 2:
            return 500, {"error": {"message": "overloaded"}}
        return 200, completion("Reply B follows the request. [[B]]")

    monkeypatch.setenv(KEY_ENV, KEY)
    with ChatServer(flaky) as server:
        judge = OpenAIJudge(config_for(server, max_tokens=64))
        reply = judge.complete(build_messages("q", "a", "b"))
    assert parse_verdict(reply.text) == "B" and reply.finish_reason == "stop"
    assert len(server.requests) == 3
    gaps = [
        later - earlier for earlier, later in zip(server.times[:-1], server.times[1:], strict=True)
    ]
    assert all(gap >= 0.2 for gap in gaps)  # backed off (0.5 s, then 1 s, less <= 25 % jitter)
    body = server.requests[-1]
    assert body["temperature"] == 0.7 and body["max_tokens"] == 64 and body["model"] == "judge"
    assert body["messages"] == build_messages("q", "a", "b")


def test_endpoint_errors_are_one_line_and_never_show_the_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with ChatServer(canned("[[A]]")) as server:
        with pytest.raises(ValueError, match=f"set the environment variable {KEY_ENV}"):
            OpenAIJudge(config_for(server))
        monkeypatch.setenv(KEY_ENV, "sk-wrong-key")
        judge = OpenAIJudge(config_for(server))
        assert "sk-wrong-key" not in repr(judge)
        with pytest.raises(ValueError, match=rf"refused the key in \${KEY_ENV} \(HTTP 401\)"):
            judge.complete(build_messages("q", "a", "b"))

    always_down = ChatServer(lambda body, number: (503, {"error": {"message": "down"}}))
    monkeypatch.setenv(KEY_ENV, KEY)
    with always_down as server:
        judge = OpenAIJudge(config_for(server, max_retries=1))
        with pytest.raises(ConnectionError, match="still answers HTTP 503 after 1 retries"):
            judge.complete(build_messages("q", "a", "b"))
    assert len(server.requests) == 2
    assert redact_url("https://user:pw@host:8443/v1?key=abc") == "https://host:8443/v1"


def test_a_crash_costs_nothing_twice(tmp_path, monkeypatch):
    """A run that dies on its third request keeps the two finished judgments; the rerun asks
    only for the rest, and a third run asks for nothing."""
    failing = {"on": 3}

    def responder(body, number):
        if number == failing["on"]:
            return 400, {"error": {"message": "context too long"}}
        user = body["messages"][1]["content"]
        return 200, completion("[[A]]" if "Reply A\n<<<\ngood" in user else "[[B]]")

    items = [JudgeItem(f"{i:06d}", f"question {i}", "good", "bad") for i in range(3)]
    monkeypatch.setenv(KEY_ENV, KEY)
    cache_path = tmp_path / "cache.jsonl"
    with ChatServer(responder) as server:
        config = config_for(server)
        judge = OpenAIJudge(config)

        def run() -> list[dict[str, Any]]:
            return judge_items(
                items,
                judge.complete,
                JudgmentCache(cache_path),
                model=config.model,
                temperature=config.temperature,
                max_tokens=config.max_tokens,
            )

        with pytest.raises(ValueError, match="answered HTTP 400: context too long"):
            run()
        assert len(list(read_jsonl(cache_path))) == 2
        failing["on"] = -1
        rows = run()
        assert len(server.requests) == 3 + 4  # 3 in the crashed run, then only the missing 4
        run()
        assert len(server.requests) == 7
    # The judge always prefers the good answer, in whichever slot: the student wins every pair.
    assert [row["score"] for row in rows] == [1.0, 1.0, 1.0]
    assert all(row["verdict_ab"] == "A" and row["verdict_ba"] == "B" for row in rows)
    assert len(list(read_jsonl(cache_path))) == 6


# --------------------------------------------------------------------------- evaluation folders


def write_eval(folder, rows_by_set, run="greedy"):
    for name, rows in rows_by_set.items():
        write_jsonl(folder / name / f"{run}.jsonl", rows)


def eval_rows(shared_data, answers, ids=None):
    questions = load_questions("dolly", shared_data)
    ids = ids or sorted(questions)[: len(answers)]
    return [
        {"id": i, "prediction": a, "references": list(questions[i][1]), "rougeL": 0.0}
        for i, a in zip(ids, answers, strict=True)
    ]


def test_answer_sets_must_cover_the_same_examples(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    student, reference = tmp_path / "student", tmp_path / "reference"
    write_eval(student, {"dolly": eval_rows(shared_data, ["x", "y", "z"])})
    ids = ["000000", "000001", "000007"]
    write_eval(reference, {"dolly": eval_rows(shared_data, ["p", "q", "r"], ids)})
    config = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", key_env=KEY_ENV)
    options = {"data_root": shared_data, "progress": False}
    with pytest.raises(
        ValueError,
        match=(
            "missing from the reference answers: 000002; missing from the student answers: 000007"
        ),
    ):
        judge_eval_runs(student, reference, tmp_path / "out", config, **options)

    write_eval(reference, {"dolly": eval_rows(shared_data, ["p", "q", "r"])}, run="seed10")
    with pytest.raises(FileNotFoundError, match="run 'seed20' is not in both"):
        judge_eval_runs(student, reference, tmp_path / "out", config, run="seed20", **options)
    (reference / "dolly" / "greedy.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="no generation run common"):
        judge_eval_runs(student, reference, tmp_path / "out", config, **options)

    wrong = eval_rows(shared_data, ["p", "q", "r"])
    wrong[1]["references"] = ["another file's answer"]
    write_eval(reference, {"dolly": wrong})
    with pytest.raises(ValueError, match="id 000001 has other reference answers"):
        judge_eval_runs(student, reference, tmp_path / "out", config, **options)
    with pytest.raises(ValueError, match="unknown set"):
        judge_eval_runs(student, reference, tmp_path / "out", config, suites=["gsm8k"], **options)
    assert not (tmp_path / "out").exists()  # nothing judged, nothing written


def parse(argv):
    from spectrumkd.cli.judge import register

    parser = argparse.ArgumentParser()
    parser.add_argument("--debug", action="store_true")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_judge_end_to_end_against_a_loopback_server(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    student, reference = tmp_path / "student", tmp_path / "reference"
    write_eval(student, {"dolly": eval_rows(shared_data, ["good 0", "good 1"])})
    write_eval(reference, {"dolly": eval_rows(shared_data, ["bad 0", "bad 1"])})
    # A first-position-biased judge: [[A]] always. Both orders cancel it: 50 % win rate.
    with ChatServer(canned("Hmm. [[A]]")) as server:
        argv = [
            "judge",
            "--student-eval",
            str(student),
            "--reference-eval",
            str(reference),
            "--data-root",
            str(shared_data),
            "--base-url",
            server.base_url,
            "--model",
            "judge-model",
            "--judge-key-env",
            KEY_ENV,
            "--max-tokens",
            "32",
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
        args = parse(argv)
        args.run(args)
        assert len(server.requests) == 4
        summary = json.loads((tmp_path / "out" / "judge" / "summary.json").read_text())
        assert summary["dolly"]["win_rate"] == 50.0 and summary["dolly"]["wins"] == 2
        assert summary["judge"]["model"] == "judge-model"
        assert summary["judge"]["temperature"] == 0.7
        assert summary["judge"]["prompt_version"] == PROMPT_VERSION
        assert server.requests[0]["max_tokens"] == 32
        again = parse(argv)
        again.run(again)
        assert len(server.requests) == 4  # all cached

    with pytest.raises(ValueError, match="--temperature must be >= 0"):
        args = parse([*argv, "--temperature", "-1"])
        args.run(args)


# --------------------------------------------------------------------------- real model


class SmolLM2Server:
    """The real SmolLM2-135M-Instruct behind the OpenAI chat format: the tokenizer's chat
    template, then ``generate`` at the request's temperature and ``max_tokens``."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.lock = threading.Lock()  # one generation at a time on the shared CPU

    def __call__(self, body: dict[str, Any], number: int) -> tuple[int, dict[str, Any]]:
        inputs = self.tokenizer.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        temperature = float(body.get("temperature", 1.0))
        sampling: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            sampling.update(temperature=temperature, top_k=0, top_p=1.0)
        max_new = int(body.get("max_tokens") or 32)
        with self.lock, torch.no_grad():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        new = output[0, inputs["input_ids"].shape[1] :]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "stop" if int(new[-1]) == self.tokenizer.eos_token_id else "length"
        return 200, completion(text, body["model"], finish)


@pytest.mark.slow
def test_judge_with_the_real_smollm2_behind_a_loopback_server(
    shared_data, tiny_tokenizer, tmp_path, monkeypatch
):
    from conftest import build_tiny_llama

    from spectrumkd.evaluation import Decoding, evaluate_instruction_following
    from spectrumkd.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    smollm2 = load_model("smollm2")
    # Two real answer sets on three DollyEval questions: SmolLM2's own greedy answers (the
    # reference) and a tiny random model's (the student), written by the evaluation stage.
    options = {
        "suites": ["dolly"],
        "data_root": shared_data,
        "limit": 3,
        "max_prompt_tokens": 4096,
        "decoding": Decoding(greedy=True, max_new_tokens=16, batch_size=3),
        "quality": False,
        "progress": False,
    }
    reference, student = tmp_path / "teacher-eval", tmp_path / "student-eval"
    evaluate_instruction_following(smollm2, tokenizer, reference, **options)
    tiny = build_tiny_llama(len(tiny_tokenizer), seed=1)
    evaluate_instruction_following(tiny, tiny_tokenizer, student, **options)

    monkeypatch.setenv(KEY_ENV, KEY)
    out = tmp_path / "judged"
    with ChatServer(SmolLM2Server(smollm2, tokenizer)) as server:
        config = JudgeConfig(
            base_url=server.base_url, model="smollm2", max_tokens=24, key_env=KEY_ENV, workers=2
        )
        summary = judge_eval_runs(
            student, reference, out, config, data_root=shared_data, progress=False
        )
        first_requests = list(server.requests)
        again = judge_eval_runs(
            student, reference, out, config, data_root=shared_data, progress=False
        )
        assert len(server.requests) == len(first_requests) == 6  # the rerun asked nothing
    assert again["dolly"]["requested"] == 0 and summary["dolly"]["requested"] == 6

    rows = list(read_jsonl(out / "judge" / "dolly.jsonl"))
    student_answers = {r["id"]: r["prediction"] for r in read_jsonl(student / "dolly/greedy.jsonl")}
    teacher_answers = {
        r["id"]: r["prediction"] for r in read_jsonl(reference / "dolly/greedy.jsonl")
    }
    questions = load_questions("dolly", shared_data)
    assert [r["id"] for r in rows] == ["000000", "000001", "000002"]
    assert student_answers != teacher_answers
    # Both orders of every pair were asked, with the question text and the real answers.
    asked = [request["messages"] for request in first_requests]
    for row in rows:
        question = questions[row["id"]][0]
        student_answer, teacher_answer = student_answers[row["id"]], teacher_answers[row["id"]]
        assert build_messages(question, student_answer, teacher_answer) in asked  # order ab
        assert build_messages(question, teacher_answer, student_answer) in asked  # order ba
    assert all(r["temperature"] == 0.7 and r["max_tokens"] == 24 for r in first_requests)

    # The cache holds every judgment, and each verdict is the parse of the judge's own text.
    cache_rows = list(read_jsonl(judge_cache_path(out, "smollm2", "dolly")))
    assert len(cache_rows) == 6 and len({r["key"] for r in cache_rows}) == 6
    by_order = {(r["id"], r["order"]): r for r in cache_rows}
    for row in rows:
        for order in ("ab", "ba"):
            cached = by_order[row["id"], order]
            assert cached["raw_text"] == row[f"raw_{order}"]
            assert row[f"verdict_{order}"] == parse_verdict(cached["raw_text"])
            assert row[f"score_{order}"] == student_score(row[f"verdict_{order}"], order)
        both = (row["score_ab"], row["score_ba"])
        assert row["score"] == (None if None in both else sum(both) / 2)

    # Unparseable verdicts are counted, never guessed; the summary is the rows' arithmetic.
    result = summary["dolly"]
    verdicts = [row[f"verdict_{order}"] for row in rows for order in ("ab", "ba")]
    assert result["unparseable"] == verdicts.count(None)
    assert result["unparseable_share"] == pytest.approx(verdicts.count(None) / 6)
    scored = [row for row in rows if row["score"] is not None]
    assert result["scored_pairs"] == len(scored)
    assert result["excluded_pairs"] == 3 - len(scored)
    if scored:
        mean = sum(r["score"] for r in scored) / len(scored)
        assert result["win_rate"] == pytest.approx(100 * mean)
    else:
        assert result["win_rate"] is None
    judged = [s for r in scored for s in (r["score_ab"], r["score_ba"])]
    assert (result["wins"], result["ties"], result["losses"]) == (
        judged.count(1.0),
        judged.count(0.5),
        judged.count(0.0),
    )
    assert summary["judge"] == {
        "base_url": server.base_url,
        "model": "smollm2",
        "temperature": 0.7,
        "max_tokens": 24,
        "prompt_version": PROMPT_VERSION,
        "key_env": KEY_ENV,
    }
    assert again["dolly"] == {**result, "requested": 0}
    for path in out.rglob("*"):  # the key is never written anywhere
        if path.is_file():
            assert KEY not in path.read_text()
