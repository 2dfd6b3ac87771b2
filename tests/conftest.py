"""Shared fixtures. The environment comes first, before anything imports prefect/mlflow/dvc.

Tests are hermetic: no network, no home-directory caches, CPU only. The tiny tokenizer and model
are trained/built in-process from text written here.
"""

import os
import shutil
import tempfile
import threading

_TMP_HOME = tempfile.mkdtemp(prefix="chatforge-test-")
for key, val in {
    "PREFECT_HOME": os.path.join(_TMP_HOME, "prefect"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "chatforge,stages",
    # library code logging outside a flow run would otherwise warn (quoting the source line) on every call
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HOME": os.path.join(_TMP_HOME, "hf"),
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
}.items():
    os.environ.setdefault(key, val)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("CHATFORGE_PARENT_RUN_ID", None)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A few dozen lines of English and Chinese, enough to train a byte-level BPE for tests.
TINY_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "Reinforcement learning from human feedback tunes a model with a reward model.",
    "The reward model is trained on pairs of replies where people chose the better one.",
    "Supervised fine-tuning teaches the model to answer in the assistant's turn.",
    "Tokenizers split text into pieces; byte-level BPE never meets an unknown character.",
    "How are you doing today? I'm doing well, thanks for asking!",
    "What is your favourite book? I like reading science fiction at night.",
    "The weather is lovely today, let's go for a walk in the park.",
    "Data cleaning removes navigation menus, adverts and duplicated paragraphs.",
    "大型语言模型通过预测下一个词来学习语言。",
    "人类反馈强化学习使用奖励模型来调整模型的行为。",
    "今天天气很好，我们去公园散步吧。",
    "数据清洗会去掉导航栏、广告和重复的段落。",
    "你好，最近怎么样？我很好，谢谢你的关心！",
] * 3


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE with our chat template, trained in-process on TINY_TEXTS."""
    from chatforge.train.tokenizer import TokenizerConfig, train_tokenizer

    return train_tokenizer(TINY_TEXTS, TokenizerConfig(vocab_size=512, min_frequency=1))


@pytest.fixture(scope="session")
def tiny_model_config():
    from chatforge.train.model import ModelConfig

    return ModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                       context_length=128)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer, tiny_model_config):
    """A saved 2-layer Llama + tokenizer directory (random weights), like models/base/."""
    from chatforge.train.model import build_model

    path = tmp_path_factory.mktemp("tiny-model")
    build_model(tiny_model_config, tiny_tokenizer, seed=0).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API server (~12-25 s to start on 2 cores), once per test run: the in-process
    pipeline tests and the pool-mode cluster (tests/test_across_machines.py) share it. Yields its URL."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    # Prefect configures its logging on the first `from prefect import flow`, and its console handler
    # keeps the sys.stderr of that moment: inside a test with capsys, a stream closed after that test,
    # so the next test's flow logs to a closed file (and, printing the error through log_prints,
    # recurses). Configure it here, outside any test.
    ensure_logging_setup()
    with prefect_test_harness(server_startup_timeout=180):
        yield get_current_settings().api.url


@pytest.fixture(scope="session")
def _mlflow_seed_db(tmp_path_factory):
    """An MLflow sqlite DB migrated once per test run (migrations take ~5 s; a copy takes 0.2 s)."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow-seed") / "seed.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def forget_mlflow_experiment():
    """Drop the experiment a previous ``mlflow.set_experiment`` made active in this process.

    set_experiment keeps the id in a module global and in ``MLFLOW_EXPERIMENT_ID``; against the
    next test's fresh store that id does not exist ("No Experiment with id=1 exists").
    """
    import mlflow.tracking.fluent

    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture
def mlflow_uri(_mlflow_seed_db, tmp_path, monkeypatch):
    """A fresh MLflow store for one test, set in the environment like a user would."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copyfile(_mlflow_seed_db, db)
    uri = f"sqlite:///{db}"
    forget_mlflow_experiment()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # The stages' experiment, made here with its artifacts in tmp_path, and active: otherwise
    # configure_mlflow would put artifacts in <cwd>/mlartifacts and bare start_run() calls in
    # the Default experiment's ./mlruns, both inside the repo.
    from chatforge.core.tracking import DEFAULT_EXPERIMENT

    exp_id = mlflow.create_experiment(DEFAULT_EXPERIMENT, (tmp_path / "mlartifacts").as_uri())
    mlflow.set_experiment(experiment_id=exp_id)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    forget_mlflow_experiment()


# --------------------------------------------------------------------------------------------
# A tiny model that answers: the chat, server and page tests need real replies ending in EOS
# --------------------------------------------------------------------------------------------

CHAT_PAIRS = [
    ("hello", "hi there!"),
    ("how are you?", "I'm doing well, thanks for asking!"),
    ("what is your favourite book?", "I like reading science fiction at night."),
    ("你好", "你好，最近怎么样？"),
]


def train_tiny(tokenizer, model_config, steps: tuple[int, ...] = (40,)) -> dict[int, object]:
    """{step: model}: the tiny model (seed 0) trained with AdamW on CHAT_PAIRS, a copy taken
    after each of ``steps``. The chat, server and page tests use the 40-step one."""
    import copy

    import torch

    from chatforge.train.chat_format import encode_chat
    from chatforge.train.model import build_model

    model = build_model(model_config, tokenizer, seed=0)
    rows = [encode_chat([{"role": "user", "content": u}, {"role": "assistant", "content": a}], tokenizer,
                        model_config.context_length).input_ids for u, a in CHAT_PAIRS]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])     # (4, T)
    mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    snapshots = {}
    for step in range(1, max(steps) + 1):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in steps:
            snapshots[step] = copy.deepcopy(model).eval()
    return snapshots


@pytest.fixture(scope="session")
def trained_chat_dir(tmp_path_factory, tiny_tokenizer, tiny_model_config):
    """The 40-step model of ``train_tiny`` saved with its tokenizer ("hello" -> "hi there!")."""
    path = tmp_path_factory.mktemp("trained-chat-model")
    train_tiny(tiny_tokenizer, tiny_model_config)[40].save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tensors this small decode faster on one thread; on 2 busy cores a second one costs ~10x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class GatedStep:
    """The model's step, logging each call's width and pausing at call ``pause_at`` until ``gate`` opens."""

    def __init__(self, model, pause_at: int):
        from chatforge.inference.decoding import TorchStep

        self.inner = TorchStep(model)
        self.calls: list[int] = []
        self.pause_at = pause_at
        self.paused, self.gate = threading.Event(), threading.Event()

    def __call__(self, input_ids, attention_mask, past):
        self.calls.append(input_ids.shape[1])              # > 1: a request's first step (its prompt)
        if len(self.calls) == self.pause_at:
            self.paused.set()
            assert self.gate.wait(60), "the test never opened the gate"
        return self.inner(input_ids, attention_mask, past)

    def reorder(self, past, index):
        return self.inner.reorder(past, index)
