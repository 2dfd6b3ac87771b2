"""The train_reward report's yardsticks: untrained scorers on the same held-out pairs."""

import math

import pytest

from chatforge.eval.reward_baselines import (inverse_document_frequency, pairwise_accuracy, pmi_scores,
                                             reward_baselines, word_scorers)


def pair(user: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": user}], "chosen": chosen, "rejected": rejected}


ON_TOPIC = [
    pair("Do you like hiking in the mountains?", "Yes, mountains are my favourite place for hiking.",
         "I had pasta for dinner yesterday and it was very good."),
    pair("What books do you read?", "Mostly science fiction books, sometimes history.", "Sure."),
    pair("Is your cat still sick?", "The cat is better now, thanks.", "We went to the beach on Sunday with friends."),
]


def test_word_overlap_finds_the_on_topic_reply_and_length_does_not():
    scorers = word_scorers(ON_TOPIC)
    assert pairwise_accuracy(ON_TOPIC, scorers["word_overlap"]) == 1.0
    assert pairwise_accuracy(ON_TOPIC, scorers["idf_overlap_norm"]) == 1.0
    # the longer reply is off topic in two of the three pairs
    assert pairwise_accuracy(ON_TOPIC, scorers["length"]) == pytest.approx(1 / 3)


def test_a_tie_counts_half():
    same = [pair("hello", "same reply", "same reply")]
    for fn in word_scorers(same).values():
        assert pairwise_accuracy(same, fn) == 0.5


def test_idf_weights_rare_words_more():
    idf = inverse_document_frequency(["the cat", "the dog", "the bird"])
    assert idf["the"] == pytest.approx(math.log(4 / 4))   # in every reply: no weight
    assert idf["cat"] == pytest.approx(math.log(4 / 2)) and idf["cat"] > idf["the"]
    assert idf[""] > idf["cat"]                              # unseen words weigh most


def test_pmi_is_higher_for_the_prompt_the_model_learnt_the_reply_with(trained_chat_dir):
    from chatforge.train.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(trained_chat_dir)
    # the conftest model was trained on CHAT_PAIRS: "hello" -> "hi there!", "how are you?" -> "I'm doing well..."
    hello, how = [{"role": "user", "content": "hello"}], [{"role": "user", "content": "how are you?"}]
    replies = ["hi there!", "I'm doing well, thanks for asking!"]
    own = pmi_scores(model, tok, [hello, how], replies)
    other = pmi_scores(model, tok, [how, hello], replies)
    assert own[0] > other[0] and own[1] > other[1]
    # max_length cuts the prompt at a turn boundary: a reply alone leaves no room for the first turn
    long = [{"role": "user", "content": "hello " * 10}, {"role": "assistant", "content": "hi there!"}, *how]
    last_turn = pmi_scores(model, tok, [how], replies[1:])
    assert pmi_scores(model, tok, [long], replies[1:], max_length=48) == pytest.approx(last_turn)
    assert pmi_scores(model, tok, [long], replies[1:]) != pytest.approx(last_turn)
    report = reward_baselines(ON_TOPIC, [pair("hello", "hi there!", "I'm doing well, thanks for asking!")],
                              model, tok)
    assert set(report) == {"baseline_length", "baseline_word_overlap", "baseline_idf_overlap",
                           "baseline_idf_overlap_norm", "baseline_pmi"}
    assert report["baseline_pmi"] in (0.0, 0.5, 1.0)
