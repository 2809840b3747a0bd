"""Tiny random-weight models of each supported family, built from their configs (no downloads)."""

import inspect

import torch
import transformers as tf

VOCAB = 96


def _common(**extra):
    return dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, **extra)


CONFIGS = {
    "mistral": lambda: tf.MistralConfig(**_common()),
    "llama": lambda: tf.LlamaConfig(**_common()),
    "qwen2": lambda: tf.Qwen2Config(**_common()),
    "gemma": lambda: tf.GemmaConfig(**_common(head_dim=16)),
    "gemma2": lambda: tf.Gemma2Config(**_common(head_dim=16)),
    "phi3": lambda: tf.Phi3Config(**_common(pad_token_id=0)),
    "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=128,
                                   bos_token_id=1, eos_token_id=2),
    "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=3, num_attention_heads=4,
                                         max_position_embeddings=128, bos_token_id=1,
                                         eos_token_id=2),
    "qwen3": lambda: tf.Qwen3Config(**_common(head_dim=16)),
    "gemma3": lambda: tf.Gemma3TextConfig(**_common(head_dim=16)),
    "mixtral": lambda: tf.MixtralConfig(**_common(num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(**_common(num_experts=4, num_experts_per_tok=2,
                                                     moe_intermediate_size=32,
                                                     shared_expert_intermediate_size=32)),
    "phi": lambda: tf.PhiConfig(**_common()),
    "olmo2": lambda: tf.Olmo2Config(**_common()),
    "starcoder2": lambda: tf.Starcoder2Config(**_common()),
    "opt": lambda: tf.OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=3,
                                num_attention_heads=4, max_position_embeddings=128,
                                word_embed_proj_dim=64, bos_token_id=1, eos_token_id=2,
                                pad_token_id=0),
    "falcon": lambda: tf.FalconConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, bos_token_id=1, eos_token_id=2),
    "bloom": lambda: tf.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=3, n_head=4,
                                    bos_token_id=1, eos_token_id=2),
    "gptj": lambda: tf.GPTJConfig(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, rotary_dim=8,
                                  n_positions=128, bos_token_id=1, eos_token_id=2),
    # a hybrid: its first layer a short convolution, not attention (LFM2, like Qwen3.5 or Jamba)
    "lfm2": lambda: tf.Lfm2Config(**_common(layer_types=["conv", "full_attention", "conv"])),
    "mpt": lambda: tf.MptConfig(vocab_size=VOCAB, d_model=64, n_layers=3, n_heads=4, max_seq_len=128),
    # a multimodal wrapper (its decoder at model.language_model), fed text only
    "llava": lambda: tf.LlavaConfig(
        text_config=tf.MistralConfig(**_common()), image_token_index=VOCAB - 1,
        vision_config=tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=28, patch_size=14)),
}
if hasattr(tf, "DeepseekV4Config"):  # (transformers 5.2x) hyper-connections: two residual streams
    CONFIGS["deepseek_v4"] = lambda: tf.DeepseekV4Config(
        vocab_size=VOCAB, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, q_lora_rank=16,
        num_experts_per_tok=2, n_routed_experts=4, hc_mult=2, hc_sinkhorn_iters=2, sliding_window=8,
        o_groups=2, o_lora_rank=16, index_n_heads=2, index_head_dim=16, index_topk=4,
        max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
IMAGE_TEXT = {"llava"}  # built with AutoModelForImageTextToText


def tiny(family: str = "mistral", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    auto = tf.AutoModelForImageTextToText if family in IMAGE_TEXT else tf.AutoModelForCausalLM
    return auto.from_config(config).eval()


def cache_name(model) -> str:
    """The keyword model.forward and generate take a cache by: "cache" since transformers 5.2x,
    which warns on the old "past_key_values"."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output):
    """The cache in a forward's ModelOutput, read as a plain dict (its attribute warns on 5.2x)."""
    return dict.get(output, "cache", dict.get(output, "past_key_values"))


def greedy(model, prompt, new_tokens, **kwargs):
    return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, pad_token_id=0, **kwargs)
