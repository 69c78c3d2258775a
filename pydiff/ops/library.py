"""pydiff's ops as PyTorch operators: ``torch.ops.pydiff.<name>`` (``torch.library``).

Registered operators are what ``torch.compile`` (no graph break: TorchDynamo puts the call in the graph, FakeTensor
tracing uses the fake implementation), ``torch.library.opcheck`` and autograd understand. Every op follows one
pattern, written in its own module next to its reference twin (``fused_step.py`` is the full example):

1. **Schema** (``define``): every argument the kernel writes is annotated ``Tensor(a!)``; the integers a traced
   program may vary (seeds, offsets) are ``SymInt``; a 64-bit seed travels as its int64 bit pattern
   (``seed_to_int64``); the last argument is ``str? backend``. An op that writes into caller-provided outputs
   returns nothing (an operator must not return an alias of an input); where autograd is needed there is also a
   functional form that allocates and returns its outputs.
2. **One implementation**, registered for the ``CPU`` and ``CUDA`` dispatch keys (and for every other device,
   where only the reference backend runs): it applies the checks that need real data (a CPU index out of range,
   partial overlaps: they cannot run on the fake tensors of a trace), picks the backend
   (``dispatch.resolve_backend``: ``backend=``, ``PYDIFF_BACKEND``, the registry's automatic order) and calls the
   backend's normalized function (docs/ops.md). A call of the operator itself (not the public function's direct
   eager call) first checks the normalized signature (``define(check=...)``, ``_contract``: the backends read raw
   pointers) and, for an op that writes in place, refuses inputs that autograd records (``mutating_inputs``).
3. **A fake implementation**: output shapes and dtypes only, for tracing.
4. **Autograd**: a formula (``torch.library.register_autograd``) on the functional form; an op without one says
   so when a gradient is asked of it (``no_backward``) instead of returning zeros.

The public functions of ``pydiff.ops`` validate their arguments in plain Python (shapes, dtypes, devices: all
traceable) and call the operator -- except in plain eager mode (``eager``: real tensors, no autograd recording,
not tracing, no dispatch or function mode active), where they call the same implementation directly. Why,
measured on a 2-core x86-64 CPU with torch 2.13 (a 1x4x2x2 float32 step): a mutating
``torch.library.custom_op`` costs ~30 us a call in its Python wrapper; the low-level ``Library.define`` used here
~2.7 us for an 8-argument schema but ~9 us for fused_step's 17 arguments (each boxed into and out of the
dispatcher), and an op with a registered autograd formula ~15 us more on every call, gradient or not. The direct
call keeps the eager step at its previous cost (+0.5 us for the check); everything that traces or differentiates
goes through the operator.
"""
from __future__ import annotations

import torch

NAMESPACE = "pydiff"
LIB = torch.library.Library(NAMESPACE, "DEF")

#: dispatch keys the one implementation is registered for; CompositeExplicitAutograd covers other devices
_KEYS = ("CPU", "CUDA", "CompositeExplicitAutograd")


def define(name: str, schema: str, impl, fake, *, check=None, mutating_inputs=None,
           tags=()) -> torch._ops.OpOverload:
    """Define ``pydiff::name`` with ``schema`` (``"(args) -> returns"``), its implementation and fake.

    ``check(*args)``: the contract of the normalized arguments (``_contract``), run before ``impl`` on every call
    of the operator; the public function's direct eager call of ``impl`` has normalized them already and skips it.
    ``mutating_inputs``: for an op that writes its outputs in place (no autograd formula can attach to them), the
    positions of its differentiable inputs: a call while autograd records a gradient for one of them raises
    instead of returning outputs that silently do not track it (the public function runs the functional form).
    Returns the operator's default overload (``torch.ops.pydiff.name.default``), the object to call.
    """
    LIB.define(name + schema, tags=tags)
    op_impl = impl
    if check is not None or mutating_inputs is not None:
        def op_impl(*args):
            if mutating_inputs is not None and needs_grad(*(_flat(args[i]) for i in mutating_inputs)):
                raise RuntimeError(f"torch.ops.pydiff.{name} writes its outputs in place and records no gradient, "
                                   "but an input requires one: call pydiff.ops." + name + " (it runs the "
                                   "differentiable form then), or detach the inputs")
            if check is not None:
                check(*args)
            return impl(*args)
    for key in _KEYS:
        LIB.impl(name, op_impl, key)
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=LIB)
    return getattr(getattr(torch.ops, NAMESPACE), name).default


def no_backward(name: str, differentiable_args: str):
    """An autograd formula for an op that has no derivative: a clear error instead of silent zero gradients."""

    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(f"pydiff.ops.{name} has no backward: no gradient flows to {differentiable_args}. "
                           "Detach its inputs, or compute this step with differentiable torch operations.")

    torch.library.register_autograd(f"{NAMESPACE}::{name}", backward, setup_context=setup_context, lib=LIB)


_dispatch_depth = torch._C._len_torch_dispatch_stack
_function_mode = torch._C._is_torch_function_mode_enabled
_compiling = torch.compiler.is_compiling


def eager(x) -> bool:
    """True when a call with first tensor ``x`` may skip the dispatcher: ``x`` a plain tensor (not a FakeTensor or
    another subclass), not under TorchDynamo/export, no TorchDispatchMode or TorchFunctionMode active."""
    return type(x) is torch.Tensor and not _compiling() and not _dispatch_depth() and not _function_mode()


_grad_enabled = torch.is_grad_enabled


def _flat(arg):
    """A tensor, or the first tensor of a list that requires a gradient (a history list), or None."""
    if isinstance(arg, (list, tuple)):
        return next((t for t in arg if t is not None and t.requires_grad), None)
    return arg


def needs_grad(*tensors) -> bool:
    """True when autograd is recording and one of ``tensors`` (None skipped) requires a gradient."""
    if not _grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False
