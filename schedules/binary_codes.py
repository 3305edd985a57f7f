"""Binary codes of queries and keys, and the attention forms built on them (numpy).

The format shared by the passes, the kernels and the torch modules (``saddc.nn``):

- A hash maps a row ``x`` (head dim ``d``) to ``b`` bits: ``bit_t = 1[x . A[:, t] + c_t > 0]``
  with a projection ``A`` (d, b) and an offset ``c`` (b). Heads may have their own: ``A`` is
  stored (P, d, b) and ``c`` (P, b), and the rows of group ``g`` (batch * head, head fastest)
  use ``A[g % P]``. SimHash draws ``A`` from N(0, 1) (random hyperplanes; ``c = 0``), seeded
  per block, so the compiler and the torch reference draw the same hyperplanes.
- Codes are packed into uint32 words: ``W = ceil(b / 32)`` words a row, bit ``t`` in word
  ``t // 32`` at bit position ``t % 32``; bits past ``b`` are zero.

Attention forms (``q``, ``k``, ``v``: (G, N, d) per group, ``B_Q``/``B_K`` the 0/1 codes):

- ``match``: normalized match-kernel attention. With SimHash the fraction of equal bits
  estimates the angular kernel ``1 - angle(q, k) / pi``; the output weighs values by matches,

      out_i = sum_j m_ij v_j / max(sum_j m_ij, 1),   m_ij = #{t : B_Q[i,t] == B_K[j,t]}

  and expands into masked sums: with ``G1 = B_K^T V``, ``G0 = (1 - B_K)^T V = colsum(V) - G1``
  and the bit counts ``c1 = sum_j B_K[j]``, ``out_i = sum_t (B_Q[i,t] ? G1_t : G0_t)`` over
  ``sum_t (B_Q[i,t] ? c1_t : N - c1_t)``: adds, selects, and one division a row. (The
  denominator is 0 only when every key's code is the complement of the query's; then the
  numerator is 0 too and the output is 0.)
- ``shiftaddvit``: ShiftAddViT's linear angular form, ``z_i = 0.5 v_i + (1/pi) sum_t B_Q[i,t]
  G1_t``, ``out_i = z_i / max(||z_i||, 1e-12)`` (a row L2 norm; needs as many keys as queries).
- ``taylor``: first-order Taylor attention after ViTALiTy, with keys centred on their mean
  over tokens (``softmax`` is invariant to that shift), ``s`` the scale of the scores:
  ``out_i = (sum_j v_j + s q_i (K^T V)) / (N + s q_i . sum_j k_j)``.
"""

from __future__ import annotations

import numpy as np

MAX_BITS = 64
WORD_BITS = 32
ANGULAR_NORM_EPS = 1e-12


def words_per_row(bits: int) -> int:
    return -(-bits // WORD_BITS)


def check_bits(bits: int) -> int:
    if not 1 <= int(bits) <= MAX_BITS:
        raise ValueError(f"binary codes have 1 to {MAX_BITS} bits, not {bits}")
    return int(bits)


def simhash_projection(seed: int, block: int, heads: int, head_dim: int, bits: int) -> np.ndarray:
    """Random hyperplanes (heads, head_dim, bits) for attention block ``block``: N(0, 1)
    entries from a generator seeded by ``(seed, block)``."""
    check_bits(bits)
    rng = np.random.default_rng([int(seed), int(block)])
    return rng.standard_normal((heads, head_dim, bits)).astype(np.float32)


def project(x: np.ndarray, projection: np.ndarray | None, offset: np.ndarray | None = None) -> np.ndarray:
    """``x A[g % P] + c[g % P]`` for x (G, N, d), in float64; no projection: ``x + c``."""
    x = np.asarray(x, dtype=np.float64)
    if projection is None:
        values = x
        periods = 1
    else:
        projection = np.asarray(projection, dtype=np.float64)
        periods = projection.shape[0]
        heads = np.arange(x.shape[0]) % periods
        values = np.einsum("gnd,gdb->gnb", x, projection[heads])
    if offset is not None:
        offset = np.asarray(offset, dtype=np.float64).reshape(-1, values.shape[-1])
        values = values + offset[np.arange(x.shape[0]) % offset.shape[0]][:, None, :]
    return values


def pack(bits01: np.ndarray) -> np.ndarray:
    """0/1 codes (..., b) -> packed uint32 words (..., ceil(b / 32))."""
    bits01 = np.asarray(bits01).astype(bool)
    bits = bits01.shape[-1]
    padded = np.zeros(bits01.shape[:-1] + (words_per_row(bits) * WORD_BITS,), dtype=np.uint64)
    padded[..., :bits] = bits01
    weights = np.uint64(1) << np.arange(WORD_BITS, dtype=np.uint64)
    words = padded.reshape(bits01.shape[:-1] + (-1, WORD_BITS))
    return (words * weights).sum(axis=-1).astype(np.uint32)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """Packed words (..., W) -> 0/1 codes (..., bits) as float32."""
    packed = np.asarray(packed, dtype=np.uint32)
    positions = np.arange(words_per_row(bits) * WORD_BITS, dtype=np.uint32)
    words = packed[..., positions // WORD_BITS]
    return ((words >> (positions % WORD_BITS)) & 1)[..., :bits].astype(np.float32)


def hash_codes(x, projection=None, offset=None) -> np.ndarray:
    """Reference hash: packed codes (G, N, W) of rows x (G, N, d)."""
    return pack(project(x, projection, offset) > 0)


def masked_sum(packed: np.ndarray, v: np.ndarray, bits: int, complement: bool = False) -> np.ndarray:
    """``B^T V`` (or ``(1 - B)^T V``): (G, b, d), the sum of the value rows whose bit is set."""
    codes = unpack(packed, bits).astype(np.float64)
    if complement:
        codes = 1.0 - codes
    return np.einsum("gnb,gnd->gbd", codes, np.asarray(v, dtype=np.float64))


def code_counts(packed: np.ndarray, bits: int) -> np.ndarray:
    """How many rows have each bit set: (G, b)."""
    return unpack(packed, bits).sum(axis=-2)


def code_matmul(packed: np.ndarray, on_set, on_clear, bits: int) -> np.ndarray:
    """``sum_t (bit_t ? on_set_t : on_clear_t)`` per row: (G, N, d); a missing side is 0."""
    codes = unpack(packed, bits).astype(np.float64)
    out = 0.0
    if on_set is not None:
        out = out + np.einsum("gnb,gbd->gnd", codes, np.asarray(on_set, dtype=np.float64))
    if on_clear is not None:
        out = out + np.einsum("gnb,gbd->gnd", 1.0 - codes, np.asarray(on_clear, dtype=np.float64))
    return out


def match_attention(q, k, v, projection, offset=None) -> np.ndarray:
    """The ``match`` form from rows (G, N, d), through the masked sums."""
    bits = projection.shape[-1] if projection is not None else q.shape[-1]
    codes_q, codes_k = hash_codes(q, projection, offset), hash_codes(k, projection, offset)
    ones = masked_sum(codes_k, v, bits)
    zeros = np.asarray(v, dtype=np.float64).sum(axis=1, keepdims=True) - ones
    counts = code_counts(codes_k, bits)[:, None, :]
    numerator = code_matmul(codes_q, ones, zeros, bits)
    denominator = code_matmul(codes_q, np.swapaxes(counts, 1, 2), np.swapaxes(k.shape[1] - counts, 1, 2), bits)
    return (numerator / np.maximum(denominator, 1.0)).astype(np.float32)


def match_attention_direct(q, k, v, projection, offset=None) -> np.ndarray:
    """The ``match`` form by its definition (the N x N match counts), to check the expansion."""
    bits = projection.shape[-1] if projection is not None else q.shape[-1]
    codes_q = unpack(hash_codes(q, projection, offset), bits)
    codes_k = unpack(hash_codes(k, projection, offset), bits)
    matches = np.einsum("gib,gjb->gij", codes_q, codes_k) + np.einsum("gib,gjb->gij", 1 - codes_q, 1 - codes_k)
    out = np.einsum("gij,gjd->gid", matches, np.asarray(v, dtype=np.float64))
    return (out / np.maximum(matches.sum(-1, keepdims=True), 1.0)).astype(np.float32)


def angular_normalize(y, v) -> np.ndarray:
    z = 0.5 * np.asarray(v, dtype=np.float64) + np.asarray(y, dtype=np.float64) / np.pi
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), ANGULAR_NORM_EPS)


def shiftaddvit_attention(q, k, v, projection, offset=None) -> np.ndarray:
    """ShiftAddViT's form: ``normalize(0.5 v + (1/pi) B_Q (B_K^T V))``."""
    bits = projection.shape[-1] if projection is not None else q.shape[-1]
    codes_q, codes_k = hash_codes(q, projection, offset), hash_codes(k, projection, offset)
    y = code_matmul(codes_q, masked_sum(codes_k, v, bits), None, bits)
    return angular_normalize(y, v).astype(np.float32)


def taylor_attention(q, k, v, scale: float = 1.0) -> np.ndarray:
    """First-order Taylor attention with mean-centred keys, rows (G, N, d)."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    k = k - k.mean(axis=1, keepdims=True)
    q = q * scale
    numerator = v.sum(axis=1, keepdims=True) + q @ (np.swapaxes(k, 1, 2) @ v)
    denominator = k.shape[1] + q @ k.sum(axis=1)[:, :, None]
    return (numerator / denominator).astype(np.float32)


def softmax_attention(q, k, v, scale: float = 1.0) -> np.ndarray:
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    scores = scale * q @ np.swapaxes(k, 1, 2)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return ((weights / weights.sum(axis=-1, keepdims=True)) @ v).astype(np.float32)
