"""The decoding loop of chatforge.inference.decoding against ``model.generate``, and the chat layer on top.

A random model never emits EOS, which would leave the EOS paths of greedy and beam search
untested, so ``trained`` is the tiny model after 10 or 40 steps on four conversations: their
replies end in <|im_end|> at various lengths, so with max_new_tokens 24 many end mid-way and with
8 some are cut, and beam search picks other replies than greedy.
``ScriptedStep`` forces chosen tokens, for the text-level checks.
"""

from dataclasses import replace

import pytest
import torch
from conftest import train_tiny

from chatforge.inference.decoding import (
    ChatModel,
    Completion,
    DecodingConfig,
    ReplyPenaltyLogitsProcessor,
    TextStream,
    TorchStep,
    beam_search,
    load_chat_model,
    sample_tokens,
)
from chatforge.train.chat_format import encode_chat

PROMPTS = ["hello", "how are you?", "what is your favourite book?", "你好",                 # learnt
           "tell me about the weather", "数据清洗", "今天天气很好", "what does a reward model do?", "good night"]
MAX_NEW = 24

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained_models(tiny_tokenizer, tiny_model_config):
    """{steps: model} after 10 and 40 steps.

    After 10 steps (loss ~3.5) EOS is likely early and at odd places, so finished beams of very
    different lengths compete and the length normalisation decides; after 40 (loss ~0.15) the
    replies are learnt and end in EOS after 6-17 tokens.
    """
    return train_tiny(tiny_tokenizer, tiny_model_config, (10, 40))


@pytest.fixture(params=[10, 40], ids=["10-steps", "40-steps"])
def trained(request, trained_models, tiny_tokenizer, tiny_model_config):
    """(model, ChatModel, steps) for one of the trained models."""
    model = trained_models[request.param]
    return model, ChatModel(tiny_tokenizer, TorchStep(model), tiny_model_config.context_length), request.param


def generate_ids(model, chat: ChatModel, prompt: list[int], cfg: DecodingConfig, **sampling) -> list[int]:
    """transformers' reply ids for the same settings, without the padding generate adds."""
    beams = {}
    if cfg.num_beams > 1:
        beams = dict(num_beams=cfg.num_beams, early_stopping=True, length_penalty=cfg.length_penalty)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=cfg.max_new_tokens, eos_token_id=sorted(chat.eos_ids),
                         pad_token_id=chat.tokenizer.pad_token_id, repetition_penalty=cfg.repetition_penalty,
                         **beams, **sampling)[0, len(prompt):].tolist()
    while out and out[-1] == chat.tokenizer.pad_token_id:
        out.pop()
    return out


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("cfg", [
    DecodingConfig(max_new_tokens=MAX_NEW),
    DecodingConfig(max_new_tokens=MAX_NEW, repetition_penalty=1.3),
    DecodingConfig(max_new_tokens=MAX_NEW, num_beams=4),
    DecodingConfig(max_new_tokens=MAX_NEW, num_beams=3, length_penalty=0.5),
], ids=["greedy", "repetition-penalty", "beams4", "beams3-lp0.5"])
def test_deterministic_decoding_matches_generate(trained, cfg):
    model, chat, steps = trained
    ends = []
    for max_new in (MAX_NEW, 8):
        run = replace(cfg, max_new_tokens=max_new)
        for text in PROMPTS:
            prompt, _ = chat.prompt_ids(user(text), max_new)
            done = chat.complete(user(text), run)
            assert done.token_ids == generate_ids(model, chat, prompt, run, do_sample=False), (text, max_new)
            ends.append((done.finish_reason, len(done.token_ids), max_new))
    if steps < 40:
        return
    # The learnt model exercises both ways of ending: EOS before max_new_tokens, and running out of tokens.
    assert any(reason == "stop" and n < max_new for reason, n, max_new in ends), ends
    assert any(reason == "length" and n == max_new for reason, n, max_new in ends), ends


def test_beams_without_eos_match_generate(tiny_model_dir):
    """A random model never ends its reply: every beam runs to max_new_tokens."""
    from transformers import AutoModelForCausalLM

    chat = load_chat_model(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for cfg in (DecodingConfig(max_new_tokens=12, num_beams=4),
                DecodingConfig(max_new_tokens=12, num_beams=3, length_penalty=0.5)):
        prompt, _ = chat.prompt_ids(user("hello"), cfg.max_new_tokens)
        done = chat.complete(user("hello"), cfg)
        assert done.finish_reason == "length" and len(done.token_ids) == 12
        assert done.token_ids == generate_ids(model, chat, prompt, cfg, do_sample=False)


def test_beam_search_differs_from_greedy_and_ends_in_eos(trained):
    _, chat, _ = trained
    greedy, beams = DecodingConfig(max_new_tokens=MAX_NEW), DecodingConfig(max_new_tokens=MAX_NEW, num_beams=4)
    pairs = [(chat.complete(user(t), greedy).token_ids, chat.complete(user(t), beams).token_ids) for t in PROMPTS]
    assert any(g != b for g, b in pairs)                    # otherwise the beam test above proves little
    prompt, _ = chat.prompt_ids(user("hello"), MAX_NEW)
    reply = beam_search(chat.step, prompt, beams, chat.eos_ids)
    assert reply == pairs[0][1] and (reply[-1] in chat.eos_ids) == (len(reply) < MAX_NEW)


def test_beam_search_keeps_n_beams_when_eos_ids_crowd_the_top(tiny_tokenizer):
    """Three EOS ids rank just below the best token on every beam: among the best 2n extensions
    there would be fewer than n without EOS, so the search looks at (1 + 3) n as generate does."""
    chat = scripted_chat(tiny_tokenizer, "x")
    eos = sorted(chat.eos_ids)
    word_a, word_b = (tiny_tokenizer.convert_tokens_to_ids(t) for t in ("a", "b"))
    widths = []

    def step(input_ids, attention_mask, past):
        widths.append(input_ids.shape[0])
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], len(tiny_tokenizer))
        logits[:, -1, word_a], logits[:, -1, word_b] = 5.0, 3.0
        logits[:, -1, eos] = 4.0
        return logits, None

    step.reorder = lambda past, index: past
    reply = beam_search(step, [1, 2], DecodingConfig(max_new_tokens=5, num_beams=2), chat.eos_ids)
    assert len(widths) > 1 and set(widths) == {2}
    # Finished at step 2: (log p(a) + log p(EOS)) / 2 beats log p(EOS) / 1, and the search stops
    # once n = 2 hypotheses are finished.
    assert reply[0] == word_a and reply[1] in chat.eos_ids and len(reply) == 2


@pytest.mark.parametrize("sampling", [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=50),
    dict(temperature=1.3, top_p=0.9),
    dict(temperature=0.9, top_k=40, top_p=0.8, repetition_penalty=1.2),
], ids=["t1", "t0.7-k50", "t1.3-p0.9", "all"])
def test_seeded_sampling_matches_generate(trained, sampling):
    """Same seed, same draws: the processors and the multinomial draw are generate's own."""
    model, chat, _ = trained
    cfg = DecodingConfig(max_new_tokens=MAX_NEW, seed=123, **sampling)
    prompt, _ = chat.prompt_ids(user("tell me about the weather"), MAX_NEW)
    torch.manual_seed(123)                                  # generate draws from the global generator
    expected = generate_ids(model, chat, prompt, cfg, do_sample=True, temperature=cfg.temperature,
                            top_k=cfg.top_k, top_p=cfg.top_p)
    assert list(sample_tokens(chat.step, prompt, cfg, chat.eos_ids)) == expected


def test_seeds_reproduce_and_differ(tiny_model_dir):
    chat = load_chat_model(tiny_model_dir)                  # random weights: near-uniform next-token choice
    messages = user("hello")
    draws = {seed: chat.complete(messages, DecodingConfig(max_new_tokens=16, temperature=1.0, seed=seed)).token_ids
             for seed in (1, 2, 3)}
    again = chat.complete(messages, DecodingConfig(max_new_tokens=16, temperature=1.0, seed=1)).token_ids
    assert again == draws[1]
    assert len({tuple(d) for d in draws.values()}) == 3
    # top-k 1 leaves one candidate: sampling is greedy whatever the seed.
    greedy = chat.complete(messages, DecodingConfig(max_new_tokens=16)).token_ids
    top1 = DecodingConfig(max_new_tokens=16, temperature=1.0, top_k=1, seed=9)
    assert chat.complete(messages, top1).token_ids == greedy


class ScriptedStep:
    """A step whose logits pick the scripted tokens in order, then EOS."""

    def __init__(self, script: list[int], vocab: int, eos: int):
        self.script, self.vocab, self.eos = script, vocab, eos

    def __call__(self, input_ids, attention_mask, past):
        done = 0 if past is None else past
        token = self.script[done] if done < len(self.script) else self.eos
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        logits[:, -1, token] = 10.0
        return logits, done + 1

    def reorder(self, past, index):
        return past


def scripted_chat(tokenizer, text: str, context_length: int = 128) -> ChatModel:
    script = tokenizer.encode(text, add_special_tokens=False)
    return ChatModel(tokenizer, ScriptedStep(script, len(tokenizer), tokenizer.eos_token_id), context_length)


def streamed(chat: ChatModel, cfg: DecodingConfig) -> tuple[list[str], Completion]:
    *deltas, done = chat.stream(user("hi"), cfg)
    assert all(isinstance(d, str) and d for d in deltas) and isinstance(done, Completion)
    return deltas, done


def test_stream_deltas_join_to_the_reply_across_multibyte_characters(tiny_tokenizer):
    text = "你好，世界 🙂 café ✨ ok"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    # The emoji are not in the tiny vocabulary: their UTF-8 bytes come as separate tokens.
    assert any(tiny_tokenizer.decode([i]).endswith("\ufffd") for i in ids)
    stream = TextStream(tiny_tokenizer)
    pieces = [stream.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == text

    deltas, done = streamed(scripted_chat(tiny_tokenizer, text), DecodingConfig(max_new_tokens=64))
    assert "".join(deltas) == done.text == text
    assert len(deltas) > 5 and all("\ufffd" not in d for d in deltas)
    assert done.finish_reason == "stop" and done.token_ids == ids + [tiny_tokenizer.eos_token_id]


def test_reply_is_stripped_and_deltas_still_join(tiny_tokenizer):
    deltas, done = streamed(scripted_chat(tiny_tokenizer, "\n  Hello there.\n\nHow are you?  \n"),
                            DecodingConfig(max_new_tokens=64))
    assert done.text == "Hello there.\n\nHow are you?" == "".join(deltas)


def test_stop_strings_end_the_reply_before_them(tiny_tokenizer):
    chat = scripted_chat(tiny_tokenizer, "Hello there. User: how are you? User: again")
    deltas, done = streamed(chat, DecodingConfig(max_new_tokens=64, stop=("User:", "never")))
    assert done.text == "Hello there." == "".join(deltas)
    assert done.finish_reason == "stop"
    assert chat.tokenizer.eos_token_id not in done.token_ids          # stopped by the string, not by EOS
    # A string that only starts like a stop string is sent once it turns out not to be one.
    deltas, done = streamed(scripted_chat(tiny_tokenizer, "a Use b"),
                            DecodingConfig(max_new_tokens=64, stop=("User:",)))
    assert done.text == "a Use b" == "".join(deltas)
    # Running out of tokens is "length", and what came so far is the reply.
    deltas, done = streamed(scripted_chat(tiny_tokenizer, "one two three four five six"),
                            DecodingConfig(max_new_tokens=3))
    assert done.finish_reason == "length" and done.completion_tokens == 3 and done.text == "".join(deltas) != ""


def test_context_truncation_drops_the_oldest_turns_and_says_how_many(tiny_tokenizer):
    chat = scripted_chat(tiny_tokenizer, "ok", context_length=128)
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(8):
        messages += [{"role": "user", "content": f"question {i}: how are you doing today?"},
                     {"role": "assistant", "content": f"answer {i}: I'm doing well, thanks for asking!"}]
    messages.append({"role": "user", "content": "and now?"})
    cfg = DecodingConfig(max_new_tokens=32)
    ids, dropped = chat.prompt_ids(messages, cfg.max_new_tokens)
    assert dropped > 0 and dropped % 2 == 0 and len(ids) + cfg.max_new_tokens <= 128
    kept = messages[:1] + messages[1 + dropped:]                       # the system message stays
    assert kept[1]["role"] == "user"
    assert ids == encode_chat(kept, tiny_tokenizer, 128, add_generation_prompt=True).input_ids
    done = chat.complete(messages, cfg)
    assert done.dropped_messages == dropped and done.prompt_tokens == len(ids) and done.text == "ok"
    assert chat.complete(messages[-3:], cfg).dropped_messages == 0
    with pytest.raises(ValueError, match="leaves no room for the prompt"):
        chat.prompt_ids(messages, 128)


def test_eos_ids_end_a_reply_at_any_turn_boundary(tiny_tokenizer):
    chat = scripted_chat(tiny_tokenizer, "x")
    specials = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")
    assert chat.eos_ids == {tiny_tokenizer.convert_tokens_to_ids(t) for t in specials}
    start = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    def encode(text):
        return tiny_tokenizer.encode(text, add_special_tokens=False)

    script = encode("Sure.") + [start] + encode("user\nhi")
    chat = ChatModel(tiny_tokenizer, ScriptedStep(script, len(tiny_tokenizer), tiny_tokenizer.eos_token_id), 128)
    done = chat.complete(user("hi"), DecodingConfig(max_new_tokens=32))
    assert done.text == "Sure." and done.finish_reason == "stop" and done.token_ids[-1] == start


def test_reply_penalties_as_openai_defines_them():
    proc = ReplyPenaltyLogitsProcessor(prompt_len=2, frequency=0.5, presence=1.0)
    ids = torch.tensor([[3, 3, 1, 1, 2]])                   # prompt [3, 3]; reply [1, 1, 2]
    scores = torch.zeros(1, 5)
    # token 1: twice in the reply -> -(2 * 0.5 + 1); token 2: once -> -(0.5 + 1); token 3 is only in the prompt
    assert proc(ids, scores).tolist() == [[0.0, -2.0, -1.5, 0.0, 0.0]]


def test_presence_penalty_breaks_a_repetition(tiny_model_dir):
    chat = load_chat_model(tiny_model_dir)                  # random weights: greedy repeats one token
    plain = chat.complete(user("hello"), DecodingConfig(max_new_tokens=12)).token_ids
    assert len(set(plain)) == 1
    penalised = chat.complete(user("hello"), DecodingConfig(max_new_tokens=12, presence_penalty=2.0)).token_ids
    assert len(set(penalised)) > 1


@pytest.mark.parametrize("kwargs, field", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(num_beams=0), "num_beams"),
    (dict(num_beams=2, temperature=0.7), "temperature 0 with num_beams"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(frequency_penalty=2.5), "frequency_penalty"),
    (dict(presence_penalty=-3.0), "presence_penalty"),
    (dict(stop=("",)), "stop"),
    (dict(stop=["x"]), "stop"),
])
def test_decoding_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DecodingConfig(**kwargs)


def test_sample_tokens_refuses_beams(tiny_tokenizer):
    chat = scripted_chat(tiny_tokenizer, "x")
    with pytest.raises(ValueError, match="beam_search"):
        next(sample_tokens(chat.step, [1, 2], DecodingConfig(num_beams=2), chat.eos_ids))
