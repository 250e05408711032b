"""A random-weight LLaMA model in GGUF, written at test time (no weights can be downloaded).

The model is a real LLaMA graph that llama.cpp runs like any other: RMS norms, rotary
attention, SwiGLU feed-forward, an output projection over a SentencePiece ("llama") vocabulary.
Only its weights are random (numpy, fixed seed), so every run writes the same file.

Vocabulary: ``<unk>`` (unknown), ``<s>`` and ``</s>`` (control), the 256 byte tokens
``<0x00>``..``<0xFF>`` (so any prompt tokenizes), then ``2 * n_embd`` word tokens
``▁w0``, ``▁w1``, ... which decode to `` w0``, `` w1``, ...

Why it cannot end early and emits only word tokens, whatever the sampler settings:

- The output rows (``output.weight``) of every non-word token (``<unk>``, ``<s>``, ``</s>``,
  bytes) are zero, so their logit is exactly 0 at every step.
- The word rows are ``+c * Q`` and ``-c * Q`` for an orthogonal ``n_embd x n_embd`` matrix
  ``Q``. The last hidden state is ``h = rms_norm(x)`` (output norm gain 1), so
  ``|h| = sqrt(n_embd)`` and ``|Q h| = |h|``; some component of ``Q h`` is at least
  ``|h| / sqrt(n_embd) = 1`` in absolute value, and one of its two signed rows turns it into a
  positive logit. So at every step, for every possible hidden state, the best word logit is at
  least ``c`` (``WORD_LOGIT_FLOOR``) above the logit of any non-word token, and exactly
  ``n_embd`` words have logit >= 0.
- Greedy decoding therefore always picks a word; top-k (k <= n_embd) keeps only words with
  logit >= 0, min-p removes anything ``c / temperature`` below the best (0.05 is about 3 nats),
  and even with every filter off at temperature 1 all non-word tokens together have probability
  below ``259 * exp(-c)`` (about 1e-15 for c = 40) per step. The repeat penalty divides positive
  logits by 1.1 and leaves 0 at 0, so it cannot change this either.

``tests_e2e/test_llama_cpp.py::test_model_runs_to_max_tokens_with_only_word_tokens`` checks it:
three completions of ``max_tokens=N`` stream exactly N word pieces each.

Size (``SPEC``): n_embd 512, 16 layers, n_ff 2048, 8 heads, f16 weights: 68 M parameters,
137 MB, written in about 1.5 s. Every token reads all the weights once, so llama.cpp on one
thread generates at a real, CPU-bound rate: about 40-50 tokens/s on an idle core of the
2-core CI machine, 25-35 when it is busy (measured each run, written to RESULTS.md). The
f16 rounding of ``Q`` (relative error ~5e-4) moves the floor below by a negligible amount.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import gguf
import numpy as np

__all__ = ["SPEC", "WORD_LOGIT_FLOOR", "WORD_PIECE", "ModelSpec", "write_model"]

SEED = 20261125
WORD_LOGIT_FLOOR = 40.0  # c above: the best word's logit is at least this, others are 0
WORD_PIECE = re.compile(r"^ ?w\d+$")  # what one streamed token may look like


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    n_embd: int = 512
    n_layer: int = 16
    n_ff: int = 2048
    n_head: int = 8
    n_ctx: int = 2048
    f16: bool = True

    @property
    def n_words(self) -> int:
        return 2 * self.n_embd

    @property
    def n_vocab(self) -> int:
        return 3 + 256 + self.n_words

    @property
    def n_params(self) -> int:
        per_layer = 4 * self.n_embd**2 + 3 * self.n_embd * self.n_ff + 2 * self.n_embd
        return self.n_layer * per_layer + 2 * self.n_vocab * self.n_embd + self.n_embd


SPEC = ModelSpec()


def _vocab(spec: ModelSpec) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens += [f"\u2581w{i}" for i in range(spec.n_words)]
    types += [gguf.TokenType.NORMAL] * spec.n_words
    # SentencePiece scores are log-probabilities: special and byte tokens 0, words decreasing.
    scores = [0.0] * 259 + [-1.0 - i / spec.n_words for i in range(spec.n_words)]
    return tokens, scores, [int(t) for t in types]


def _output_rows(spec: ModelSpec, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((spec.n_embd, spec.n_embd)))
    q *= np.sign(np.diag(r))  # a uniformly random orthogonal matrix
    out = np.zeros((spec.n_vocab, spec.n_embd), dtype=np.float32)
    out[259 : 259 + spec.n_embd] = WORD_LOGIT_FLOOR * q
    out[259 + spec.n_embd :] = -WORD_LOGIT_FLOOR * q
    return out


def write_model(path: Path, spec: ModelSpec = SPEC, seed: int = SEED) -> Path:
    """Write the model to ``path`` (deterministic for a given spec and seed) and return it."""
    rng = np.random.default_rng(seed)
    wtype = np.float16 if spec.f16 else np.float32
    e, ff, head_dim = spec.n_embd, spec.n_ff, spec.n_embd // spec.n_head

    def rand(rows: int, cols: int) -> np.ndarray:
        # numpy (rows, cols) is ggml {cols, rows}: a matrix taking cols inputs to rows outputs.
        w = rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(cols))
        return w.astype(wtype)

    ones = np.ones(e, dtype=np.float32)  # norm gains stay f32, as llama.cpp expects
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("streamguard-random-llama")
    writer.add_context_length(spec.n_ctx)
    writer.add_embedding_length(e)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(spec.n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if spec.f16 else gguf.LlamaFileType.ALL_F32)
    tokens, scores, types = _vocab(spec)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    embd = rng.standard_normal((spec.n_vocab, e), dtype=np.float32)
    writer.add_tensor("token_embd.weight", embd.astype(wtype))
    for i in range(spec.n_layer):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{blk}.{name}.weight", rand(e, e))
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones)
        writer.add_tensor(f"{blk}.ffn_gate.weight", rand(ff, e))
        writer.add_tensor(f"{blk}.ffn_up.weight", rand(ff, e))
        writer.add_tensor(f"{blk}.ffn_down.weight", rand(e, ff))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", _output_rows(spec, rng).astype(wtype))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
