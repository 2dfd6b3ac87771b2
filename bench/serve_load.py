"""``chatforge serve`` under load: one generation at a time against continuous batching, on PyTorch
and on ONNX Runtime, with 1, 4 and 16 concurrent clients, measured side by side in one run.

The model is the params.yaml (tiny profile) architecture with random weights and a BPE trained on
synthetic text; random weights rarely say EOS, so replies run their whole ``--max-tokens``
budget. It is saved, exported by the export stage's library, and served by real
``python -m flows.cli serve`` processes on 127.0.0.1: per runtime one with ``--max-batch 1`` (one
at a time) and one with ``--max-batch 16`` (batched), both up at once, each idle while the other
is measured. Phases alternate between the two for ``--rounds`` rounds and the best round of each
counts (the machine is shared: the best is the least disturbed).

Decoding is greedy with OpenAI's ``frequency_penalty`` (``--penalty``, 1.0): a random model
with tied embeddings greedily repeats the template's last token (a newline) and its reply is
empty, so without the penalty no content would arrive before the end and time to first token
would read as the whole latency. The penalty runs a logits processor for every row of every
step, which the plain greedy rows of a batch skip: the figures are on the conservative side.

Every client streams its requests back to back (``stream_options.include_usage``) until the
phase has sent its requests (``--requests-per-client`` each) or run ``--seconds`` (both bounds;
a request started before the time bound runs to its end). Per phase: generated tokens/s
(completion tokens over the phase's wall time), requests/s, time to first token (the first
content chunk) and total latency at p50/p95, and the server's peak RSS (VmHWM so far, so it
grows with the phases). "x one-at-a-time" is the batched figure over the one-at-a-time one with
the same runtime and clients; "same replies" counts prompts whose reply was the same in both.

Run: python bench/serve_load.py [--max-tokens 48] [--requests-per-client 2] [--seconds 60] [--rounds 2]
     [--clients 1 4 16] [--runtimes torch onnx] [--threads 1] [--penalty 1.0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pretrain_throughput import synthetic_texts  # noqa: E402

PROMPTS = [
    "hello",
    "how are you today?",
    "what is your favourite book and why do you like it so much?",
    "tell me about the weather where you live",
    "can you recommend a good place to walk in the park on a sunny afternoon?",
    "why is the sky blue?",
    "write a short note to a friend who just moved to a new city far away from home",
    "what did you have for breakfast?",
]


def build_model(workdir: Path) -> tuple[Path, Path]:
    """(model directory, ONNX export directory) of the tiny-profile model with random weights."""
    from chatforge.inference.export import ExportConfig, export_policy
    from chatforge.train.model import ModelConfig
    from chatforge.train.model import build_model as build
    from chatforge.train.tokenizer import TokenizerConfig, train_tokenizer

    tokenizer = train_tokenizer(synthetic_texts(300_000), TokenizerConfig(vocab_size=4096, min_frequency=2))
    model = build(ModelConfig(), tokenizer, seed=0).eval()
    model_dir, export_dir = workdir / "model", workdir / "export"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    export_policy(model, tokenizer, export_dir, ExportConfig(input=model_dir, output=export_dir))
    return model_dir, export_dir


class Server:
    """``python -m flows.cli serve`` in a subprocess on 127.0.0.1, a free port."""

    def __init__(self, model: Path, onnx: bool, max_batch: int, max_tokens: int, threads: int):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
        env.pop("CHATFORGE_API_KEY", None)
        cmd = [sys.executable, "-m", "flows.cli", "serve", "--model", str(model), "--port", "0",
               "--max-batch", str(max_batch), "--max-waiting", "256", "--max-new-tokens", str(max_tokens)]
        self.proc = subprocess.Popen(cmd + (["--onnx"] if onnx else []), cwd=REPO, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            if "listening on" in line:
                self.url = line.split("listening on ")[1].split()[0]
                break
        else:
            raise RuntimeError("the server did not start:\n" + "".join(lines))
        # Its log goes on; drain it so that the pipe never fills.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def one_request(url: str, prompt: str, max_tokens: int, penalty: float) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "frequency_penalty": penalty, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, text, tokens = None, [], 0
    with httpx.stream("POST", url + "v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"]["message"])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event["choices"]:
                if choice["delta"].get("content"):
                    first = first or time.perf_counter()
                    text.append(choice["delta"]["content"])
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens, "text": "".join(text),
            "prompt": prompt}


def phase(url: str, clients: int, requests: int, seconds: float, max_tokens: int,
          penalty: float) -> tuple[dict, list[dict]]:
    """``clients`` threads sending requests back to back until ``requests`` are sent or ``seconds`` pass."""
    lock, done, sent = threading.Lock(), [], [0]
    start = time.perf_counter()

    def client() -> None:
        while True:
            with lock:
                if sent[0] >= requests or time.perf_counter() - start > seconds:
                    return
                n = sent[0]
                sent[0] += 1
            result = one_request(url, PROMPTS[n % len(PROMPTS)], max_tokens, penalty)
            with lock:
                done.append(result)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start

    def pct(key: str, q: float) -> float:
        values = sorted(r[key] for r in done)
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]

    return {"requests": len(done), "tokens_per_s": sum(r["tokens"] for r in done) / wall,
            "requests_per_s": len(done) / wall, "ttft_p50": pct("ttft", 50), "ttft_p95": pct("ttft", 95),
            "latency_p50": pct("latency", 50), "latency_p95": pct("latency", 95)}, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per reply (random weights rarely stop)")
    parser.add_argument("--requests-per-client", type=int, default=2, help="requests each client sends in a phase")
    parser.add_argument("--seconds", type=float, default=60.0, help="no new request after this long in a phase")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each phase counts")
    parser.add_argument("--penalty", type=float, default=1.0, help="frequency_penalty of every request")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per phase")
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the servers (PyTorch's threads)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for chatty in ("onnx_ir", "onnxscript", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)

    modes = {"one-at-a-time": 1, "batched": 16}
    rows, replies = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, export_dir = build_model(Path(tmp))
        for runtime in args.runtimes:
            servers = {}
            try:
                for mode, max_batch in modes.items():
                    servers[mode] = Server(export_dir if runtime == "onnx" else model_dir, runtime == "onnx",
                                           max_batch, args.max_tokens, args.threads)
                for clients in args.clients:
                    best = {}
                    for _ in range(args.rounds):
                        for mode, server in servers.items():
                            stats, done = phase(server.url, clients, clients * args.requests_per_client,
                                                args.seconds, args.max_tokens, args.penalty)
                            if mode not in best or stats["tokens_per_s"] > best[mode]["tokens_per_s"]:
                                best[mode] = stats
                            for r in done:
                                replies.setdefault((runtime, mode), {})[r["prompt"]] = r["text"]
                            print(f"  {runtime} {mode} {clients} clients: {stats['tokens_per_s']:.0f} tok/s",
                                  flush=True)
                    for mode, server in servers.items():
                        rows.append((runtime, mode, clients, {**best[mode], "rss_mb": server.peak_rss_mb()}))
            finally:
                for server in servers.values():
                    server.stop()

    one = {(rt, c): s for rt, m, c, s in rows if m == "one-at-a-time"}
    print(f"\ntiny-profile model (params.yaml, random weights), {args.max_tokens} tokens per reply, greedy with "
          f"frequency_penalty {args.penalty:g}, streamed; servers with OMP_NUM_THREADS={args.threads}; "
          f"best of {args.rounds} alternating rounds")
    header = ("runtime", "server", "clients", "requests", "tokens/s", "x one-at-a-time", "requests/s",
              "TTFT p50 (s)", "TTFT p95 (s)", "latency p50 (s)", "latency p95 (s)", "peak RSS (MB)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for runtime, mode, clients, s in rows:
        ratio = s["tokens_per_s"] / one[runtime, clients]["tokens_per_s"] if (runtime, clients) in one else float("nan")
        print(f"| {runtime} | {mode} | {clients} | {s['requests']} | {s['tokens_per_s']:,.0f} | {ratio:.2f} "
              f"| {s['requests_per_s']:.2f} | {s['ttft_p50']:.3f} | {s['ttft_p95']:.3f} | {s['latency_p50']:.2f} "
              f"| {s['latency_p95']:.2f} | {s['rss_mb']:,.0f} |")
    for runtime in args.runtimes:
        a, b = replies.get((runtime, "one-at-a-time"), {}), replies.get((runtime, "batched"), {})
        common = sorted(set(a) & set(b))
        same = sum(a[p] == b[p] for p in common)
        print(f"{runtime}: the same reply batched and one at a time for {same} of {len(common)} prompts")


if __name__ == "__main__":
    main()
