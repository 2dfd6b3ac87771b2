"""Pretraining: packing, token shards, bits per byte, checkpoints, a tiny run, SIGKILL + resume, and 2-process
DDP, the runs reading memory-mapped token shards made by the tokenize step (2 tasks: 2 shards per split).

Every run here is a 2-layer, 32-wide Llama on a few kB of text with 32-token blocks: seconds each.
"""

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from chatforge.train.checkpoints import MARKER, last_complete_checkpoint, prepare_checkpoint_dir
from chatforge.data.cleaning.executor import ExecutorConfig
from chatforge.data.tokenize import TokenizeConfig, tokenize_corpus
from chatforge.train.packing import pack_ids, pretraining_blocks, token_corpus
from chatforge.train.perplexity import token_byte_lengths, unigram_counts, unigram_score
from chatforge.train.pretrain import PretrainConfig, pretrain

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "How are you doing today? I'm doing well, thanks for asking!",
    "What is your favourite book? I like reading science fiction at night.",
    "The weather is lovely today, let's go for a walk in the park.",
    "Did you watch the game last night? It was a great match.",
    "I am learning to cook; yesterday I made soup for my friends.",
    "My cat sleeps all day and plays all night.",
    "We should meet for coffee next week if you are free.",
    "今天天气很好，我们去公园散步吧。",
]


def write_documents(path: Path, n_train: int = 60, n_val: int = 12, seed: int = 0) -> Path:
    rng = random.Random(seed)
    records = []
    for i in range(n_train + n_val):
        text = "\n".join(rng.choice(SENTENCES) for _ in range(4))
        records.append({"id": f"d{i}", "text": text, "source": "test", "split": "train" if i < n_train else "validation"})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def tokenize(docs: Path, tok_dir: Path, out: Path, tasks: int = 2) -> Path:
    """The tokenize step on ``tasks`` tasks run one after another in this process (workers=1)."""
    tokenize_corpus(TokenizeConfig(input=docs, tokenizer=tok_dir, output=out, batch_size=16),
                    ExecutorConfig(tasks=tasks, workers=1, work_dir=out.parent / f"{out.name}-work"))
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_tokenizer):
    """A saved tokenizer directory and the token shards of a documents file with both splits."""
    root = tmp_path_factory.mktemp("corpus")
    tiny_tokenizer.save_pretrained(root / "tokenizer")
    docs = write_documents(root / "documents.jsonl")
    return root / "tokenizer", tokenize(docs, root / "tokenizer", root / "tokens")


def tiny_config(root: Path, corpus, **overrides) -> PretrainConfig:
    tok_dir, docs = corpus
    base = dict(input=docs, tokenizer=tok_dir, output=root / "base", checkpoint_dir=root / "ckpt",
                cache_dir=root.parent / "cache", report=root / "pretrain.json", loss_curve=root / "loss.csv",
                val_curve=root / "val.csv", block_size=32, batch_size=4, global_batch_size=8,
                max_tokens=16 * 8 * 32, lr=1.0e-2, warmup_fraction=0.1, logging_steps=2, eval_steps=8,
                eval_blocks=4, save_steps=4, sample_prompts=["How are"], sample_tokens=5, num_threads=1)
    return PretrainConfig(**{**base, **overrides})


def final_weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


# --- pure pieces ---------------------------------------------------------------------------------

def test_pack_ids_separates_documents_and_cuts_exact_blocks():
    blocks = pack_ids([[5, 6, 7], [8], [9, 10, 11, 12]], block_size=4, bos_id=0)
    assert blocks == [[0, 5, 6, 7], [0, 8, 0, 9]]           # the tail [10, 11, 12] is dropped


def test_token_shards_hold_the_packed_stream_whatever_the_task_count(tmp_path, corpus, tiny_tokenizer):
    tok_dir, _ = corpus
    docs = write_documents(tmp_path / "documents.jsonl", n_train=40, n_val=8, seed=3)
    one, three = tokenize(docs, tok_dir, tmp_path / "one", tasks=1), tokenize(docs, tok_dir, tmp_path / "three", tasks=3)
    index = json.loads((three / "index.json").read_text())
    assert index["dtype"] == "uint16" and len(index["splits"]["train"]["shards"]) == 3
    assert index["splits"]["train"]["documents"] == 40 and index["splits"]["validation"]["documents"] == 8
    stream = lambda root: np.concatenate([np.fromfile(p, np.uint16) for p in sorted((root / "train").glob("*.bin"))])
    assert np.array_equal(stream(one), stream(three))                 # same stream, only cut differently
    texts = [json.loads(line)["text"] for line in docs.read_text().splitlines()][:40]
    ids = tiny_tokenizer(texts, add_special_tokens=False)["input_ids"]
    blocks = pretraining_blocks(one, 16)["train"]
    assert blocks.blocks(len(blocks)).tolist() == pack_ids(ids, 16, tiny_tokenizer.bos_token_id)
    starts = np.load(one / "train" / "00000.docs.npy")
    assert len(starts) == 40 and (stream(one)[starts] == tiny_tokenizer.bos_token_id).all()


def test_a_documents_input_is_tokenised_once_into_the_cache(tmp_path, corpus):
    tok_dir, shards = corpus
    docs = shards.parent / "documents.jsonl"
    made = token_corpus(docs, tok_dir, tmp_path / "cache")
    assert made.parent == tmp_path / "cache" and token_corpus(docs, tok_dir, tmp_path / "cache") == made
    a, b = pretraining_blocks(made, 32)["validation"], pretraining_blocks(shards, 32)["validation"]
    assert np.array_equal(np.concatenate(list(a.token_chunks())), np.concatenate(list(b.token_chunks())))


def test_shards_of_another_tokenizer_or_cut_short_are_refused(tmp_path, corpus, tiny_tokenizer):
    import shutil

    from chatforge.core.files import InputError
    from chatforge.data.shards import TokenBlocks, TokenShardWriter, token_dtype, write_index

    tok_dir, shards = corpus
    other = tmp_path / "other-tokenizer"
    shutil.copytree(tok_dir, other)
    (other / "tokenizer_config.json").write_text((other / "tokenizer_config.json").read_text().replace("}", ' }', 1))
    with pytest.raises(InputError, match="made with another tokenizer"):
        token_corpus(shards, other, tmp_path / "cache")
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    writer = TokenShardWriter(tmp_path / "big" / "train", "00000", token_dtype(100_000), 99_999)
    writer.write([[70_000, 1], [65_536]])
    write_index(tmp_path / "big", {"train": [writer.close()]}, dtype="uint32", vocab_size=100_000)
    assert TokenBlocks(tmp_path / "big", "train", 5).block(0).tolist() == [99_999, 70_000, 1, 99_999, 65_536]
    with open(tmp_path / "big" / "train" / "00000.bin", "r+b") as fh:
        fh.truncate(8)
    with pytest.raises(InputError, match="00000.bin: 8 bytes, the index says 5 uint32 tokens"):
        TokenBlocks(tmp_path / "big", "train", 5)


def test_token_bytes_add_up_to_utf8_bytes(tiny_tokenizer):
    token_bytes = token_byte_lengths(tiny_tokenizer)
    for text in ["plain ascii", "数据清洗 and emoji 🎉", "\x00\ttabs\r\n"]:
        ids = [tiny_tokenizer.bos_token_id, *tiny_tokenizer(text, add_special_tokens=False)["input_ids"]]
        assert token_bytes[ids].sum() == len(text.encode("utf-8"))


def test_unigram_baseline_on_a_uniform_stream():
    vocab, token_bytes = 4, np.array([0, 1, 1, 2])
    counts = unigram_counts([np.array([[1, 2, 3, 0]] * 10)], vocab)           # 10 of each token
    score = unigram_score(counts, np.array([[0, 1, 2, 3]]), token_bytes)
    assert score.tokens == 3 and score.bytes == 4
    assert score.loss == pytest.approx(np.log(4))                            # uniform over 4 ids
    assert score.bpb == pytest.approx(3 * np.log(4) / np.log(2) / 4)


def test_checkpoint_dir_keeps_only_complete_checkpoints_of_the_same_run(tmp_path):
    for step, complete in [(4, True), (8, True), (12, False)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / MARKER).write_text("complete\n")
    assert prepare_checkpoint_dir(tmp_path, {"lr": 1}) == tmp_path / "checkpoint-8"
    assert not (tmp_path / "checkpoint-12").exists()                        # half-written: removed
    assert prepare_checkpoint_dir(tmp_path, {"lr": 1}) == tmp_path / "checkpoint-8"
    assert prepare_checkpoint_dir(tmp_path, {"lr": 2}) is None               # another run's: removed
    assert last_complete_checkpoint(tmp_path) is None


def test_config_checks():
    with pytest.raises(ValueError, match="multiple of 'batch_size'"):
        PretrainConfig(batch_size=3, global_batch_size=8)
    with pytest.raises(ValueError, match="save_total_limit"):
        PretrainConfig(save_total_limit=1)
    with pytest.raises(ValueError, match="processes"):
        PretrainConfig(batch_size=4, global_batch_size=8).accumulation_steps(world_size=3)


# --- training ------------------------------------------------------------------------------------

def test_tiny_pretrain_learns_and_saves_a_standard_model(tmp_path, corpus, tiny_model_config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_config(tmp_path, corpus, max_tokens=30 * 8 * 32, eval_steps=10)
    result = pretrain(cfg, tiny_model_config, seed=0)
    r = result.report
    assert r["steps"] == 30 and r["tokens_seen"] == 30 * 8 * 32 and r["tokens_per_second"] > 0
    assert r["val_bpb"] < 0.8 * r["unigram_bpb"]                 # well past token frequencies
    assert r["val_perplexity"] == pytest.approx(np.exp(r["val_loss"]), rel=1e-3)
    curve = (tmp_path / "loss.csv").read_text().splitlines()
    first, last = float(curve[1].split(",")[1]), float(curve[-1].split(",")[1])
    assert curve[0] == "step,train_loss,lr" and last < first - 1.0
    assert len((tmp_path / "val.csv").read_text().splitlines()) == 1 + 3      # steps 10, 20, 30
    model = AutoModelForCausalLM.from_pretrained(str(cfg.output))
    assert AutoTokenizer.from_pretrained(str(cfg.output)).chat_template
    assert model.config.num_hidden_layers == 2 and len(result.samples) == 1
    assert last_complete_checkpoint(cfg.checkpoint_dir).name == "checkpoint-30"


def test_a_finished_run_run_again_trains_no_step_more(tmp_path, corpus, tiny_model_config):
    """`dvc repro` re-runs pretrain when only its code changed: the last checkpoint holds every step, and
    transformers' Trainer resumed there would train one more (977 of 976 on the default profile)."""
    cfg = tiny_config(tmp_path, corpus, max_tokens=8 * 8 * 32, logging_steps=1)
    first = pretrain(cfg, tiny_model_config, seed=0).report
    curve, weights = loss_curve(cfg.loss_curve), final_weights(cfg.output)
    again = pretrain(cfg, tiny_model_config, seed=0).report
    assert first["steps"] == again["steps"] == again["resumed_from_step"] == 8
    assert loss_curve(cfg.loss_curve) == curve and again["val_loss"] == first["val_loss"]
    rerun = final_weights(cfg.output)
    assert all(np.array_equal(weights[k], rerun[k]) for k in weights)


KILLER = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from transformers import TrainerCallback
    from chatforge.core.config import build_dataclass
    from chatforge.train.model import ModelConfig
    from chatforge.train.pretrain import PretrainConfig, pretrain

    class KillAt(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            print(f"rank {os.environ.get('RANK', '0')} starts after step {state.global_step}", flush=True)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)       # no cleanup, like an OOM kill or a power cut

    cfg = build_dataclass(PretrainConfig, json.loads(sys.argv[1]))
    result = pretrain(cfg, build_dataclass(ModelConfig, json.loads(sys.argv[2])), seed=0, callbacks=[KillAt()])
    if result.report:                                      # rank 0
        Path(cfg.report).write_text(json.dumps(result.report))
""")

# The corpus fixture holds 225 train blocks of 32 tokens: 56 micro-batches of 4 (drop_last), 28 optimizer
# steps of 8 blocks per epoch. 36 steps cross into the second epoch, whose order the sampler draws anew
# (seed + epoch), so a resume there must restore the epoch as well as the offset within it.
RESUME_STEPS, STEPS_PER_EPOCH = 36, 28


def resume_config(root: Path, corpus, **overrides) -> PretrainConfig:
    """Every step's loss logged (logging_steps=1): the loss of a step is a fingerprint of its batch."""
    return tiny_config(root, corpus, max_tokens=RESUME_STEPS * 8 * 32, logging_steps=1, **overrides)


def loss_curve(path: Path) -> list[tuple[int, float]]:
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return [(int(step), float(loss)) for step, loss, _ in rows]


def run_killer(cfg: PretrainConfig, model_cfg, kill_at: int, nproc: int = 1) -> subprocess.CompletedProcess:
    """pretrain() in a fresh process (or ``nproc`` under torchrun) that SIGKILLs itself after step ``kill_at``
    (never when it is 0)."""
    from chatforge.core.config import to_dict

    script = cfg.report.parent / "killer.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(KILLER)
    launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc_per_node={nproc}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([*launch, str(script), json.dumps(to_dict(cfg)), json.dumps(to_dict(model_cfg)),
                           str(kill_at)], cwd=REPO, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus, tiny_model_config):
    """The 36-step run that nothing interrupts: its per-step losses and final weights."""
    cfg = resume_config(tmp_path_factory.mktemp("uninterrupted"), corpus)
    report = pretrain(cfg, tiny_model_config, seed=0).report
    assert report["steps"] == RESUME_STEPS and report["epochs"] > 1      # the run crosses an epoch boundary
    return report, loss_curve(cfg.loss_curve), final_weights(cfg.output)


def test_sigkill_then_rerun_resumes_at_the_exact_next_batch(tmp_path, corpus, tiny_model_config, uninterrupted,
                                                            mlflow_uri):
    from chatforge.core.config import to_dict
    from stages.pretrain import main

    reference, ref_curve, ref_w = uninterrupted
    assert len({loss for _, loss in ref_curve}) == RESUME_STEPS     # every step's batch gives its own loss

    cfg = resume_config(tmp_path / "killed", corpus)
    # killed after step 6 (first epoch): checkpoint-4 is the last complete one, steps 5-6 are lost
    proc = run_killer(cfg, tiny_model_config, kill_at=6)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert last_complete_checkpoint(cfg.checkpoint_dir).name == "checkpoint-4" and not cfg.output.exists()
    # resumed from 4, killed again after step 34 (second epoch, 6 steps into it): checkpoint-32 is the last
    proc = run_killer(cfg, tiny_model_config, kill_at=34)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert "rank 0 starts after step 4" in proc.stdout
    assert last_complete_checkpoint(cfg.checkpoint_dir).name == "checkpoint-32" and not cfg.output.exists()

    # the stage, run again as `dvc repro` would, resumes from checkpoint-32 (epoch 1, 4 steps in)
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"seed": 0, "model": to_dict(tiny_model_config), "pretrain": to_dict(cfg)}))
    main(["--params", str(params)])
    resumed = json.loads(cfg.report.read_text())
    assert resumed["resumed_from_step"] == 32 and resumed["steps"] == RESUME_STEPS
    # Each step's loss (5 decimals) equals the uninterrupted run's: steps 5-32 were trained after the first
    # resume and 33-36 after the second, each on the very batch the uninterrupted run took at that step.
    assert loss_curve(cfg.loss_curve) == ref_curve
    assert resumed["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-5)
    res_w = final_weights(cfg.output)
    assert max(np.abs(ref_w[k] - res_w[k]).max() for k in ref_w) < 1e-5


def test_two_processes_killed_resume_on_the_one_process_curve(tmp_path, corpus, tiny_model_config, uninterrupted):
    """torchrun, 2 processes (gloo): both ranks SIGKILLed after step 30 (second epoch), then resumed."""
    reference, ref_curve, ref_w = uninterrupted
    cfg = resume_config(tmp_path / "two", corpus)                   # 2 ranks x 4 blocks, no accumulation
    proc = run_killer(cfg, tiny_model_config, kill_at=30, nproc=2)
    assert proc.returncode != 0 and not cfg.output.exists(), proc.stderr[-3000:]
    assert last_complete_checkpoint(cfg.checkpoint_dir).name == "checkpoint-28"
    proc = run_killer(cfg, tiny_model_config, kill_at=0, nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 starts after step 28" in proc.stdout and "rank 1 starts after step 28" in proc.stdout
    two = json.loads(cfg.report.read_text())
    assert two["resumed_from_step"] == 28 and two["steps"] == RESUME_STEPS
    # 2 ranks x 4 blocks reduce in another order than 1 process x 2 micro-batches: equal within float error
    curve = loss_curve(cfg.loss_curve)
    assert [s for s, _ in curve] == [s for s, _ in ref_curve]
    assert max(abs(a - b) for (_, a), (_, b) in zip(curve, ref_curve)) < 1e-4
    w2 = final_weights(cfg.output)
    assert max(np.abs(ref_w[k] - w2[k]).max() for k in ref_w) < 1e-4


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, corpus, tiny_model_config, mlflow_uri):
    from chatforge.core.config import to_dict

    one = pretrain(tiny_config(tmp_path / "one", corpus, max_tokens=8 * 8 * 32), tiny_model_config, seed=0).report

    cfg = tiny_config(tmp_path / "two", corpus, max_tokens=8 * 8 * 32, launcher="torchrun", nproc_per_node=2)
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"seed": 0, "model": to_dict(tiny_model_config), "pretrain": to_dict(cfg)}))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "stages.pretrain", "--params", str(params)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "accumulation 1" in proc.stderr and "2 process(es)" in proc.stderr
    two = json.loads(cfg.report.read_text())
    assert two["steps"] == one["steps"] == 8 and two["tokens_seen"] == one["tokens_seen"]
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-4)
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-4)
    w1, w2 = final_weights(tmp_path / "one" / "base"), final_weights(cfg.output)
    assert max(np.abs(w1[k] - w2[k]).max() for k in w1) < 1e-4
