"""Continuous batching (``chatforge.inference.batching``) against one-at-a-time decoding.

Greedy replies from a batch that generations join and leave at different steps must equal
``sample_tokens`` token for token, through PyTorch and through the exported ONNX graph (whose
right-aligned rows are prefilled behind empty columns, or rebuilt when a longer prompt joins).
Seeded sampling reproduces ``sample_tokens`` too; cancelled rows leave without disturbing the
others; a failing step ends the generations in it, not the engine.
"""

import threading

import pytest
import torch

from chatforge.inference.batching import BatchEngine
from chatforge.inference.decoding import DecodingConfig, TorchStep, load_chat_model, sample_tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONVERSATIONS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": "how are you?"}],
    [{"role": "system", "content": "You are a friendly assistant who answers at length."},
     {"role": "user", "content": "what is your favourite book?"}],
    [{"role": "user", "content": "你好"}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there!"},
     {"role": "user", "content": "how are you? tell me about the weather today and your favourite book"}],
    [{"role": "user", "content": "The quick brown fox jumps over the lazy dog."}],
]


class Collector:
    """The sink of one generation: its tokens, the end, and a hook called after each token."""

    def __init__(self, on_token=None):
        self.tokens, self.error, self.done = [], None, threading.Event()
        self.on_token = on_token

    def __call__(self, item):
        if item is None:
            self.done.set()
        elif isinstance(item, BaseException):
            self.error = item
            self.done.set()
        else:
            self.tokens.append(item)
            if self.on_token:
                self.on_token(len(self.tokens))

    def wait(self):
        assert self.done.wait(120), "the generation never ended"
        return self.tokens


@pytest.fixture(scope="module")
def chat(trained_chat_dir):
    return load_chat_model(trained_chat_dir)


@pytest.fixture(scope="module")
def ort_chat(trained_chat_dir, tmp_path_factory):
    """The same model exported by the export stage's library and opened with ONNX Runtime."""
    pytest.importorskip("onnxruntime")
    from chatforge.inference.export import ExportConfig, export_policy, load_policy

    out = tmp_path_factory.mktemp("export")
    model, tokenizer = load_policy(trained_chat_dir)
    export_policy(model, tokenizer, out, ExportConfig(input=trained_chat_dir, output=out))
    return load_chat_model(out, onnx=True)


def prompts(chat, max_new_tokens):
    return [chat.prompt_ids(c, max_new_tokens)[0] for c in CONVERSATIONS]


def one_at_a_time(chat, prompt_ids, cfg):
    return [list(sample_tokens(chat.step, ids, cfg, chat.eos_ids)) for ids in prompt_ids]


def staggered(engine, prompt_ids, cfgs, join_after: int = 2):
    """Submit the first generation; each next one joins once the previous has ``join_after`` tokens
    (so rows join a running batch at different steps); return every generation's tokens."""
    sinks = []

    def submit(i):
        def hook(count):
            if count == join_after and i + 1 < len(prompt_ids):
                submit(i + 1)
        sinks.append(Collector(hook))
        engine.submit(prompt_ids[i], cfgs[i], sinks[i])

    submit(0)
    while len(sinks) < len(prompt_ids):
        sinks[-1].wait()                               # a generation shorter than join_after starts the next
        if len(sinks) < len(prompt_ids) and len(sinks[-1].tokens) < join_after:
            submit(len(sinks))
    return [s.wait() for s in sinks]


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_greedy_batched_equals_one_at_a_time(request, runtime):
    chat = request.getfixturevalue("chat" if runtime == "torch" else "ort_chat")
    cfg = DecodingConfig(max_new_tokens=20)
    ids = prompts(chat, cfg.max_new_tokens)
    expected = one_at_a_time(chat, ids, cfg)
    engine = BatchEngine(chat.step, chat.eos_ids, max_batch=8)
    try:
        # All at once (one prefill of six prompts), then joining a running batch one by one,
        # short prompts before long ones (on ONNX, a longer prompt rebuilds the batch).
        sinks = [Collector() for _ in ids]
        for prompt, sink in zip(ids, sinks):
            engine.submit(prompt, cfg, sink)
        assert [s.wait() for s in sinks] == expected
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        got = staggered(engine, [ids[i] for i in order], [cfg] * len(ids))
        assert got == [expected[i] for i in order]
    finally:
        engine.close()
    assert any(len(t) == cfg.max_new_tokens for t in expected) and any(len(t) < cfg.max_new_tokens for t in expected)


def test_a_random_model_decodes_the_same_tokens_batched(tiny_model_dir):
    """A model that never says EOS: every row runs its whole budget; rows of different lengths
    join and leave, and the cache columns no row uses any more are cut."""
    chat = load_chat_model(tiny_model_dir)
    cfgs = [DecodingConfig(max_new_tokens=n) for n in (30, 5, 17, 9, 24, 3)]
    ids = [chat.prompt_ids(c, 30)[0] for c in CONVERSATIONS]
    expected = [list(sample_tokens(chat.step, p, c, set())) for p, c in zip(ids, cfgs)]
    engine = BatchEngine(chat.step, set(), max_batch=4)            # fewer slots than generations: some wait
    try:
        assert staggered(engine, ids, cfgs, join_after=3) == expected
        sinks = [Collector() for _ in ids]
        for prompt, c, sink in zip(ids, cfgs, sinks):
            engine.submit(prompt, c, sink)
        assert [s.wait() for s in sinks] == expected
    finally:
        engine.close()


def test_sampling_settings_are_per_row_and_seeded(chat):
    ids = prompts(chat, 16)[:4]
    cfgs = [DecodingConfig(max_new_tokens=16, temperature=1.3, top_k=40, seed=1),
            DecodingConfig(max_new_tokens=16),
            DecodingConfig(max_new_tokens=16, temperature=0.8, top_p=0.9, seed=2, repetition_penalty=1.3),
            DecodingConfig(max_new_tokens=16, frequency_penalty=1.0, presence_penalty=0.5)]
    expected = [list(sample_tokens(chat.step, p, c, chat.eos_ids)) for p, c in zip(ids, cfgs)]
    engine = BatchEngine(chat.step, chat.eos_ids)
    try:
        assert staggered(engine, ids, cfgs, join_after=1) == expected
    finally:
        engine.close()


def test_a_cancelled_row_leaves_and_the_others_go_on(tiny_model_dir):
    chat = load_chat_model(tiny_model_dir)
    cfg = DecodingConfig(max_new_tokens=25)
    ids = [chat.prompt_ids(c, 25)[0] for c in CONVERSATIONS[:3]]
    expected = [list(sample_tokens(chat.step, p, cfg, set())) for p in ids]
    engine = BatchEngine(chat.step, set())
    try:
        gens = []
        sinks = [Collector(), Collector(lambda n: n == 4 and gens[1].cancel()), Collector()]
        gens += [engine.submit(p, cfg, s) for p, s in zip(ids, sinks)]
        assert sinks[0].wait() == expected[0] and sinks[2].wait() == expected[2]
        # The cancelled one got at most one more token (the step already running), and no end.
        assert 4 <= len(sinks[1].tokens) <= 5 and not sinks[1].done.is_set()
        assert engine.active == 0
    finally:
        engine.close()


class FailingStep(TorchStep):
    fail_after = 10**9

    def forward_batch(self, *args):
        self.fail_after -= 1
        if self.fail_after < 0:
            raise RuntimeError("the accelerator caught fire")
        return super().forward_batch(*args)


def test_a_failing_step_ends_its_generations_and_the_engine_goes_on(chat):
    step = FailingStep(chat.step.model)
    engine = BatchEngine(step, chat.eos_ids)
    cfg = DecodingConfig(max_new_tokens=8)
    ids = prompts(chat, 8)[:2]
    try:
        step.fail_after = 3
        sinks = [Collector(), Collector()]
        for p, s in zip(ids, sinks):
            engine.submit(p, cfg, s)
        for s in sinks:
            s.wait()
            assert "caught fire" in str(s.error)
        step.fail_after = 10**9
        again = Collector()
        engine.submit(ids[0], cfg, again)
        assert again.wait() == one_at_a_time(chat, ids[:1], cfg)[0] and again.error is None
    finally:
        engine.close()


def test_a_plain_step_runs_one_generation_at_a_time(chat):
    class Plain:
        def __init__(self, inner):
            self.inner, self.widths = inner, []

        def __call__(self, input_ids, attention_mask, past):
            self.widths.append(input_ids.shape[0])
            return self.inner(input_ids, attention_mask, past)

    step = Plain(chat.step)
    engine = BatchEngine(step, chat.eos_ids, max_batch=8)
    cfg = DecodingConfig(max_new_tokens=10)
    ids = prompts(chat, 10)[:3]
    try:
        sinks = [Collector() for _ in ids]
        for p, s in zip(ids, sinks):
            engine.submit(p, cfg, s)
        assert [s.wait() for s in sinks] == one_at_a_time(chat, ids, cfg)
    finally:
        engine.close()
    assert engine.max_batch == 1 and set(step.widths) == {1}


def test_the_batch_shares_steps(tiny_model_dir):
    """Eight generations of 12 tokens submitted together take 12 forward passes, not 96."""
    chat = load_chat_model(tiny_model_dir)
    cfg = DecodingConfig(max_new_tokens=12)
    ids = [chat.prompt_ids(c, 12)[0] for c in CONVERSATIONS[:4]] * 2
    engine = BatchEngine(chat.step, set(), max_batch=8)
    gate = threading.Event()
    try:
        first = Collector(lambda n: gate.wait(60))          # holds the engine until all are queued
        engine.submit(ids[0], cfg, first)
        sinks = [first] + [Collector() for _ in ids[1:]]
        for p, s in zip(ids[1:], sinks[1:]):
            engine.submit(p, cfg, s)
        gate.set()
        assert all(len(s.wait()) == 12 for s in sinks)
    finally:
        engine.close()
    # One prefill of all eight and 11 decode steps; or, when the first started alone, its
    # prefill and first step, then one prefill of the other seven and 11 decode steps.
    assert engine.steps in (1 + 11, 2 + 1 + 11)


def test_the_engine_refuses_beams_and_empty_prompts(chat):
    engine = BatchEngine(chat.step, chat.eos_ids)
    with pytest.raises(ValueError, match="beam"):
        engine.submit([1, 2], DecodingConfig(num_beams=2), Collector())
    with pytest.raises(ValueError, match="prompt token"):
        engine.submit([], DecodingConfig(), Collector())
    engine.close()
    assert torch.get_num_threads() == 1
