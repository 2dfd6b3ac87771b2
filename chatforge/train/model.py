"""The model: a transformers Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention) built from
the ``model:`` params section, never downloaded.

Using the stock ``LlamaForCausalLM`` means every saved model is a standard Hugging Face
directory that ``AutoModelForCausalLM.from_pretrained`` loads with no custom code, and that
TRL, ONNX export, TensorRT-LLM and vLLM all know.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatforge.core.config import field_help


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = field_help(128, "width of the residual stream")
    num_layers: int = field_help(4, "transformer blocks")
    num_heads: int = field_help(4, "attention (query) heads")
    num_kv_heads: int = field_help(2, "key/value heads; fewer than num_heads is grouped-query attention")
    intermediate_size: int = field_help(384, "SwiGLU hidden width (Llama uses ~8/3 x hidden_size)")
    context_length: int = field_help(256, "maximum sequence length (RoPE positions)")
    rope_theta: float = field_help(10000.0, "RoPE base frequency")
    tie_word_embeddings: bool = field_help(True, "share input and output embeddings (saves params at small sizes)")
    initializer_range: float = field_help(0.02, "std of the normal weight init")

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("'hidden_size' must be divisible by 'num_heads'")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("'num_heads' must be divisible by 'num_kv_heads'")


def llama_config(cfg: ModelConfig, tokenizer):
    """The transformers LlamaConfig for ``cfg`` and the tokenizer's vocabulary and special ids."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.context_length,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(cfg: ModelConfig, tokenizer, seed: int | None = None):
    """A freshly initialised LlamaForCausalLM (seeded when ``seed`` is given)."""
    import torch
    from transformers import LlamaForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(cfg, tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
