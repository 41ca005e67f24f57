"""Arrays at raw addresses, for kernels whose state reaches them as integers in a port row.

A port's compiled face is one row of uint64 (see `_port`); the arrays it owns are named there
by address, and the Python object that made them keeps them alive while the row is in use.
"""

from numba import carray, types
from numba.core.extending import intrinsic


def _pointer_to(element):
    @intrinsic
    def pointer(typingctx, address):
        signature = types.CPointer(element)(address)

        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], context.get_value_type(sig.return_type))
        return signature, codegen
    return pointer


u8_pointer = _pointer_to(types.uint8)
u32_pointer = _pointer_to(types.uint32)
u64_pointer = _pointer_to(types.uint64)
i64_pointer = _pointer_to(types.int64)

__all__ = ["carray", "u8_pointer", "u32_pointer", "u64_pointer", "i64_pointer"]
