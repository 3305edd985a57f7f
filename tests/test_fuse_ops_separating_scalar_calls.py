"""FuseOpsSeparatingScalarCalls: a group that takes a scalar (a dim passed to a kernel as a
PrimValue) and a shape (tir_vars), which TVM 0.27's FuseTIR fails on, is made without the
kernel called with the scalar; the module compiles and computes what it says."""

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax
from tvm.script import ir as I, relax as R, tirx as T

from saddc.passes import FuseOpsSeparatingScalarCalls


# pylint: disable=invalid-name,no-self-argument,missing-function-docstring
@I.ir_module
class OffsetRange:
    """``arange(m) + n``, with n turned into a tensor by a kernel that takes it as a scalar (as
    TVM legalizes ``shape_to_tensor``) and m a shape argument: Swin's pooled-output gather
    indices in its dynamo export with a symbolic batch, reduced."""

    @T.prim_func(private=True, s_tir=True)
    def scalar_to_tensor(n: T.int64, out: T.Buffer((T.int64(1),), "int64")):
        T.func_attr({"op_pattern": 0})
        for i in range(T.int64(1)):
            with T.sblock("scalar_to_tensor"):
                vi = T.axis.spatial(T.int64(1), i)
                out[vi] = n

    @T.prim_func(private=True, s_tir=True)
    def arange(var_out: T.handle):
        T.func_attr({"op_pattern": 0})
        m = T.int64()
        out = T.match_buffer(var_out, (m,), "int64")
        for i in range(m):
            with T.sblock("arange"):
                vi = T.axis.spatial(m, i)
                out[vi] = vi

    @T.prim_func(private=True, s_tir=True)
    def add(var_a: T.handle, b: T.Buffer((T.int64(1),), "int64"), var_out: T.handle):
        T.func_attr({"op_pattern": 0})
        m = T.int64()
        a = T.match_buffer(var_a, (m,), "int64")
        out = T.match_buffer(var_out, (m,), "int64")
        for i in range(m):
            with T.sblock("add"):
                vi = T.axis.spatial(m, i)
                out[vi] = a[vi] + b[0]

    @R.function
    def main(x: R.Tensor(("n",), "float32"), length: R.Shape(["m"])):
        n = T.int64()
        m = T.int64()
        with R.dataflow():
            indices = R.call_tir(OffsetRange.arange, R.tuple(), out_ty=R.Tensor((m,), "int64"))
            offset = R.call_tir(OffsetRange.scalar_to_tensor, (R.prim_value(n),), out_ty=R.Tensor((1,), "int64"))
            out = R.call_tir(OffsetRange.add, (indices, offset), out_ty=R.Tensor((m,), "int64"))
            R.output(out)
        return out
# pylint: enable=invalid-name,no-self-argument,missing-function-docstring


def fused_groups(mod: tvm.IRModule) -> list[str]:
    return sorted(gvar.name_hint for gvar, func in mod.functions_items()
                  if isinstance(func, relax.Function) and func.attrs is not None and func.attrs.get("Primitive"))


def test_tvm_fusetir_fails_on_the_group_fuseops_makes():
    """Why the pass exists; when this fails, TVM's FuseTIR takes such groups and the pass can go."""
    fused = relax.transform.FuseOps()(OffsetRange)
    assert fused_groups(fused) == ["fused_arange_scalar_to_tensor_add"]
    with pytest.raises(tvm.error.InternalError, match="VarRemapGet"):
        relax.transform.FuseTIR()(fused)


def test_scalar_call_is_kept_apart_and_the_module_computes_the_offset_range():
    fused = FuseOpsSeparatingScalarCalls()(OffsetRange)
    assert fused_groups(fused) == ["fused_arange_add"], "the rest of the group stays fused"
    assert fused["scalar_to_tensor"].attrs["op_pattern"] == 8
    executable = tvm.compile(relax.transform.FuseTIR()(fused), target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(np.zeros(3, "float32")), tvm.runtime.ShapeTuple([5]))
    np.testing.assert_array_equal(out.numpy(), np.arange(5) + 3)


def test_groups_without_a_scalar_and_a_shape_are_as_fuseops_makes_them():
    mod = OffsetRange.clone()
    main = mod["main"]
    # The same computation with the offset a tensor argument: no scalar anywhere.
    offset = relax.Var("offset", relax.TensorType((1,), "int64"))
    length = main.params[1]
    builder = relax.BlockBuilder()
    with builder.function("main", [offset, length]):
        with builder.dataflow():
            m = length.ty.values[0]
            indices = builder.emit(relax.call_tir(mod.get_global_var("arange"), [], relax.TensorType((m,), "int64")))
            out = builder.emit_output(relax.call_tir(mod.get_global_var("add"), [indices, offset], relax.TensorType((m,), "int64")))
        builder.emit_func_output(out)
    mod.update_func(mod.get_global_var("main"), builder.get()["main"])
    assert tvm_ffi.structural_equal(FuseOpsSeparatingScalarCalls()(mod), relax.transform.FuseOps()(mod))
