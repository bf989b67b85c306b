"""ChatGLM3-style causal LM for tests: sequence-first activations ([T, B, h]) everywhere except
the returned logits, multi-query attention, rotary embeddings on half of each head, RMSNorm,
SwiGLU MLP named ``dense_h_to_4h`` / ``dense_4h_to_h``, modules under ``transformer.encoder``."""


import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:
    from .configuration_chatglm import ChatGLMConfig
except ImportError:  # imported directly by the tests, not as a dynamic module
    from configuration_chatglm import ChatGLMConfig


class RMSNorm(nn.Module):
    def __init__(self, hidden, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden))  # as upstream: never initialised here
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def rotary(x, pos):
    """x: [T, B, heads, d]; rotate the first half of d by position (as ChatGLM does)."""
    d = x.shape[-1] // 2
    rot, keep = x[..., :d], x[..., d:]
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device=x.device).float() / d))
    ang = pos.t().float()[..., None] * inv  # [T, B, d/2]
    cos, sin = ang.cos()[:, :, None, :], ang.sin()[:, :, None, :]
    r1, r2 = rot[..., 0::2], rot[..., 1::2]
    out = torch.stack([r1 * cos - r2 * sin, r1 * sin + r2 * cos], -1).flatten(-2)
    return torch.cat([out.to(x.dtype), keep], -1)


class SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.d, self.g = c.num_attention_heads, c.kv_channels, c.multi_query_group_num
        self.query_key_value = nn.Linear(c.hidden_size, self.h * self.d + 2 * self.g * self.d)
        self.dense = nn.Linear(self.h * self.d, c.hidden_size, bias=False)

    def forward(self, x, mask, pos):  # x: [T, B, h]
        T, B, _ = x.shape
        qkv = self.query_key_value(x)
        q, k, v = qkv.split([self.h * self.d, self.g * self.d, self.g * self.d], -1)
        q = rotary(q.view(T, B, self.h, self.d), pos)
        k = rotary(k.view(T, B, self.g, self.d), pos)
        v = v.view(T, B, self.g, self.d)
        rep = self.h // self.g  # multi-query: every query head shares the group's key/value
        k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [B, heads, T, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.dense(out.permute(2, 0, 1, 3).reshape(T, B, self.h * self.d))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(c.hidden_size, 2 * c.ffn_hidden_size, bias=False)
        self.dense_4h_to_h = nn.Linear(c.ffn_hidden_size, c.hidden_size, bias=False)

    def forward(self, x):
        a, b = self.dense_h_to_4h(x).chunk(2, -1)
        return self.dense_4h_to_h(F.silu(a) * b)


class GLMBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.layernorm_epsilon)
        self.self_attention = SelfAttention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.layernorm_epsilon)
        self.mlp = MLP(c)

    def forward(self, x, mask, pos):
        x = x + self.self_attention(self.input_layernorm(x), mask, pos)
        return x + self.mlp(self.post_attention_layernorm(x))


class GLMTransformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layers = nn.ModuleList([GLMBlock(c) for _ in range(c.num_layers)])
        self.final_layernorm = RMSNorm(c.hidden_size, c.layernorm_epsilon)

    def forward(self, x, mask, pos):
        for layer in self.layers:
            x = layer(x, mask, pos)
        return self.final_layernorm(x)


class Embedding(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.padded_vocab_size, c.hidden_size)

    def forward(self, ids):  # [B, T] -> [T, B, h]
        return self.word_embeddings(ids).transpose(0, 1).contiguous()


class ChatGLMModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embedding = Embedding(c)
        self.encoder = GLMTransformer(c)
        self.output_layer = nn.Linear(c.hidden_size, c.padded_vocab_size, bias=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
        mask = causal[None] & attention_mask.bool()[:, None, :]  # [B, T, T]
        mask = mask | torch.eye(T, dtype=torch.bool, device=input_ids.device)[None]  # pad rows see themselves
        h = self.encoder(self.embedding(input_ids), mask[:, None], position_ids)
        return self.output_layer(h)  # [T, B, V]


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"

    def _init_weights(self, module):
        return  # as upstream: nothing


class ChatGLMForConditionalGeneration(ChatGLMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.max_sequence_length = config.max_length  # incompatibility 1: removed from configs in transformers 5
        self.use_cache = config.use_cache  # incompatibility 2
        self.transformer = ChatGLMModel(config)
        # incompatibility 3: no self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None, **kwargs):
        logits = self.transformer(input_ids, attention_mask, position_ids).transpose(0, 1).contiguous()  # [B, T, V]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)
