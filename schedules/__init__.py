"""TIR kernels of saddc's primitives with their CUDA and CPU schedules (one file each).

- ``shift_codes``    the packed power-of-two weight format (numpy): encode, decode, reference
- ``shift_gemm``     the shift GEMM kernels (add-only, decode-mma) and their schedules
- ``binary_codes``   binary Q/K codes and the linear attention forms (numpy): format, references
- ``binary_hash``    hash kernel: projection, compare, pack into bits
- ``masked_sum``     ``B_K^T V`` and the bit counts: adds only
- ``code_matmul``    ``B_Q G``: adds only
- ``row_normalize``  the forms' row normalizations, one division a row
- ``rules``          the DLight rule that applies each saddc kernel's schedule
"""
