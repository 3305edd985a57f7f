"""TIR kernels of saddc's primitives with their CUDA and CPU schedules (one file each)."""
