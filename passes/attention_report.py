"""The report of the attention rewrites: one entry per attention site, and the model's error.

``LowerBinaryCodedAttention`` adds the binary-coded sites it lowered (lossless);
``ReplaceSoftmaxAttention`` adds every softmax block, rewritten (lossy, with its output cosine on
calibration inputs) or kept (with the reason), and the end-to-end error. The compile summary
prints ``summary_lines``; the manifest holds ``to_json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SOFTMAX = "softmax"
BINARY_CODED = "binary-coded"


@dataclass
class AttentionSite:
    """One attention site. ``index`` counts sites of its ``kind`` in program order (softmax
    blocks as ``saddc inspect`` lists them). ``result``: ``additive match``, ``additive
    shiftaddvit``, ``taylor``, ``kept softmax`` or ``lowered``."""

    kind: str
    index: int
    result: str
    exactness: str | None  # "lossless", "lossy", or None (kept as it was)
    heads: int | str
    query_tokens: int | str
    key_tokens: int | str
    head_dim: int | str
    stage: int | None = None
    bits: int | None = None
    hash: str | None = None
    output_cosine: float | None = None
    note: str = ""


@dataclass
class AttentionReport:
    """What the attention rewrites did to a model."""

    mode: str
    form: str | None
    sites: list[AttentionSite] = field(default_factory=list)
    calibration: str = "not needed (no lossy rewrite)"
    end_to_end: dict | None = None  # cosine, max_relative_error, top1_agreement (classifiers)

    @property
    def changed(self) -> list[AttentionSite]:
        return [site for site in self.sites if site.exactness is not None]

    def to_json(self) -> dict:
        return {"mode": self.mode, "form": self.form, "calibration": self.calibration,
                "end_to_end": self.end_to_end, "sites": [asdict(site) for site in self.sites]}

    def summary_lines(self) -> list[str]:
        lossless = sum(site.exactness == "lossless" for site in self.changed)
        kept = len(self.sites) - len(self.changed)
        lines = [
            f"attention:         {len(self.changed)} rewritten ({lossless} lossless, "
            f"{len(self.changed) - lossless} lossy), {kept} kept; mode {self.mode}"
            + (f", form {self.form}" if self.mode == "additive" else ""),
            f"attn calibration:  {self.calibration}",
        ]
        if self.end_to_end:
            measured = ", ".join(f"{name.replace('_', ' ')} {value:.4g}" for name, value in self.end_to_end.items())
            lines.append(f"attn end to end:   {measured} (model output before vs after)")
        for site in self.sites:
            shape = f"heads {site.heads}, {site.query_tokens}x{site.key_tokens} tokens, dim {site.head_dim}"
            detail = [site.result]
            if site.bits:
                detail.append(f"{site.bits} bits, {site.hash}")
            if site.output_cosine is not None:
                detail.append(f"output cosine {site.output_cosine:.5f}")
            if site.exactness == "lossless":
                detail.append("exact")
            if site.note:
                detail.append(site.note)
            lines.append(f"  {site.kind}[{site.index}] ({shape}): {'; '.join(detail)}")
        return lines
