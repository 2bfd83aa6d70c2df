"""CUDA C++ kernel sources of cudcn, shipped as package data.

The same files are compiled by NVRTC for the GPU (through CuPy) and by the
host C++ compiler for the CPU backend (through ``cpu_shim.h``).
"""
