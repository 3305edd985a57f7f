"""TIR kernels of saddc's primitives with their CUDA and CPU schedules (one file each).

- ``shift_codes``  the packed power-of-two weight format (numpy): encode, decode, reference
- ``shift_gemm``   the shift GEMM kernels (add-only, decode-mma) and their schedules
- ``rules``        the DLight rule that applies each saddc kernel's schedule
"""
