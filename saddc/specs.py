"""Descriptions of model inputs and outputs, shared by the importer, manifest and runtime."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, shape (ints; strings for symbolic dims), dtype."""

    name: str
    shape: tuple
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, obj: dict) -> "TensorSpec":
        return cls(obj["name"], tuple(obj["shape"]), obj["dtype"])

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    def accepts(self, shape: tuple, dtype: str) -> bool:
        """Whether an array of this shape and dtype fits (symbolic dims take any size)."""
        return (
            dtype == self.dtype
            and len(shape) == len(self.shape)
            and all(isinstance(want, str) or want == got for want, got in zip(self.shape, shape))
        )
