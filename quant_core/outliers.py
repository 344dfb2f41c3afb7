"""Sparse fp16 outliers of a quantized weight: ``W = dequantize(codes) + R`` with ``R`` sparse.

Two layouts (``structure``), both fp16 values plus compressed indices:

* ``"unstructured"``: compressed sparse rows. ``values`` fp16 ``[nnz]``, ``indices`` the input
  column of each value (int16 when ``in_features <= 32767``, else int32) ``[nnz]``, sorted
  within each row, and ``row_ptr`` int32 ``[out_features + 1]``: row ``r``'s values are
  ``values[row_ptr[r]:row_ptr[r + 1]]``. About 4 bytes per outlier.
* ``"columns"``: whole input columns. ``indices`` int32 ``[c]`` (sorted, distinct) and
  ``values`` fp16 ``[out_features, c]``: column ``indices[i]`` of ``R`` is ``values[:, i]``.
  About 2 bytes per outlier.

``prepare().matmul(x)`` computes ``x @ R^T`` in fp32 (a gather and ``index_add`` for few rows
of ``x``, a CSR sparse-dense product for many, a dense product of the outlier columns); every
kernel path adds it to the packed matmul (``QuantLinear.forward``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

STRUCTURES = ("unstructured", "columns")
INT16_MAX_COLUMNS = 32767  # column indices fit int16 up to here (safetensors has no uint16 in torch < 2.3)


def index_dtype(structure: str, in_features: int) -> torch.dtype:
    if structure == "columns" or in_features > INT16_MAX_COLUMNS:
        return torch.int32
    return torch.int16


@dataclass
class SparseResidual:
    structure: str
    values: torch.Tensor
    indices: torch.Tensor
    row_ptr: torch.Tensor | None = None  # unstructured only

    @classmethod
    def from_dense(cls, residual: torch.Tensor, mask: torch.Tensor, structure: str) -> "SparseResidual":
        """The entries of ``residual [N, K]`` where ``mask`` holds (for ``"columns"``: the columns
        where it holds anywhere), values rounded to fp16."""
        n, k = residual.shape
        if structure == "columns":
            cols = torch.nonzero(mask.any(0)).flatten()
            return cls(structure, residual[:, cols].to(torch.float16).contiguous(), cols.to(torch.int32))
        if structure != "unstructured":
            raise ValueError(f"outlier structure {structure!r} is not one of {STRUCTURES}")
        rows, cols = torch.nonzero(mask, as_tuple=True)  # row-major order: sorted within rows
        row_ptr = torch.zeros(n + 1, dtype=torch.int64, device=residual.device)
        row_ptr[1:] = torch.bincount(rows, minlength=n).cumsum(0)
        return cls(structure, residual[rows, cols].to(torch.float16), cols.to(index_dtype(structure, k)),
                   row_ptr.to(torch.int32))

    @property
    def count(self) -> int:
        """Stored outliers: nonzeros (unstructured) or columns."""
        return self.indices.numel()

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"outlier_values": self.values, "outlier_indices": self.indices}
        if self.row_ptr is not None:
            out["outlier_row_ptr"] = self.row_ptr
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def dense(self, out_features: int, in_features: int, dtype=torch.float32) -> torch.Tensor:
        r = torch.zeros(out_features, in_features, dtype=dtype, device=self.values.device)
        if self.structure == "columns":
            r[:, self.indices.long()] = self.values.to(dtype)
        else:
            rows = torch.repeat_interleave(torch.arange(out_features, device=r.device),
                                           (self.row_ptr[1:] - self.row_ptr[:-1]).long())
            r[rows, self.indices.long()] = self.values.to(dtype)
        return r

    def prepare(self, out_features: int, in_features: int) -> "PreparedResidual":
        """The residual in the form ``matmul`` reads, built once per device by ``QuantLinear``."""
        values = self.values.float()
        if self.structure == "columns":
            return PreparedResidual(self.structure, values, self.indices.long())
        rows = torch.repeat_interleave(torch.arange(out_features, device=values.device),
                                       (self.row_ptr[1:] - self.row_ptr[:-1]).long())
        with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what we measured
            warnings.simplefilter("ignore", UserWarning)
            # fp32: MKL and cuSPARSE take fp32; ``problems`` checked the indices, so torch's
            # invariant checks are not needed
            csr = torch.sparse_csr_tensor(self.row_ptr, self.indices.to(torch.int32), values,
                                          size=(out_features, in_features), check_invariants=False)
        return PreparedResidual(self.structure, values, self.indices.long(), rows, csr, out_features)

    def problems(self, out_features: int, in_features: int) -> list[str]:
        """What makes these tensors unfit for an ``[out_features, in_features]`` weight (empty when
        they fit): shapes, dtypes and every index that addresses memory."""
        expected = expected_outlier_shapes(self.structure, out_features, in_features, self.count)
        out = [f"{name} has shape {tuple(t.shape)}, expected {expected[name][1]}"
               for name, t in self.tensors().items() if tuple(t.shape) != expected[name][1]]
        out += [f"{name} is {t.dtype}, expected {expected[name][0]}"
                for name, t in self.tensors().items() if t.dtype != expected[name][0]]
        if out or self.indices.is_meta or not self.count:
            return out
        idx = self.indices.long()
        if int(idx.min()) < 0 or int(idx.max()) >= in_features:
            out.append(f"outlier_indices hold columns outside 0..{in_features - 1}")
        if self.structure == "columns":
            if bool((idx[1:] <= idx[:-1]).any()):
                out.append("outlier_indices are not sorted and distinct")
            return out
        ptr = self.row_ptr.long()
        if int(ptr[0]) != 0 or int(ptr[-1]) != self.count or bool((ptr[1:] < ptr[:-1]).any()):
            out.append(f"outlier_row_ptr is not a non-decreasing 0..{self.count} row index")
        return out


def expected_outlier_shapes(structure: str, out_features: int, in_features: int,
                            count: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """dtype and shape of each outlier tensor of a layer with ``count`` outliers (nonzeros or columns)."""
    if structure == "columns":
        return {"outlier_values": (torch.float16, (out_features, count)),
                "outlier_indices": (torch.int32, (count,))}
    return {"outlier_values": (torch.float16, (count,)),
            "outlier_indices": (index_dtype(structure, in_features), (count,)),
            "outlier_row_ptr": (torch.int32, (out_features + 1,))}


# Below this many products (rows of x times nonzeros) the gather + index_add form is used: plain
# dense ops (CUDA-graph capturable, no sparse-library call per decode step); above it CSR, whose
# memory does not grow with the rows of x.
GATHER_LIMIT = 1 << 22


@dataclass
class PreparedResidual:
    structure: str
    values: torch.Tensor  # fp32
    columns: torch.Tensor  # int64: input column of each value (unstructured) or each stored column
    rows: torch.Tensor | None = None  # int64 output row of each value (unstructured)
    csr: torch.Tensor | None = None
    out_features: int = 0

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, K] @ R^T`` in fp32, ``[M, N]``."""
        x = x.float()
        if self.structure == "columns":
            return x[:, self.columns] @ self.values.T
        if x.shape[0] * self.columns.numel() <= GATHER_LIMIT:
            out = torch.zeros(x.shape[0], self.out_features, device=x.device)
            return out.index_add_(1, self.rows, x[:, self.columns] * self.values)
        return (self.csr @ x.T).T
