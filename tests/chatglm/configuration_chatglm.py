"""A small model with ChatGLM3's interface, written for rome-tuner's tests (loaded through
``trust_remote_code`` from a temporary directory with ``auto_map``, like a real checkpoint).

Like THUDM's ChatGLM3 code it does NOT define ``max_length`` or ``use_cache`` on the config, its
model reads both in ``__init__`` and never calls ``post_init()``: the three incompatibilities
with transformers 5 that rome-tuner's loader fixes in memory."""

from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"

    def __init__(self, num_layers=4, padded_vocab_size=256, hidden_size=128, ffn_hidden_size=512, kv_channels=32,
                 num_attention_heads=4, multi_query_group_num=1, seq_length=128, layernorm_epsilon=1e-5,
                 pad_token_id=0, **kwargs):
        self.num_layers = num_layers
        self.padded_vocab_size = padded_vocab_size
        self.vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.multi_query_group_num = multi_query_group_num
        self.seq_length = seq_length
        self.layernorm_epsilon = layernorm_epsilon
        super().__init__(pad_token_id=pad_token_id, **kwargs)
