"""The two executors of a launch description: CuPy (GPU) and the host CPU."""
