"""What a GPU can hold at once, for choosing launches that fill it.

A launch fills a GPU when it has enough threads for every streaming
multiprocessor (SM) to keep its full complement resident; what an SM can
hold depends on the kernel's registers per thread and its block size. The
launch description (cudcn/_launch.py) asks this model how many threads make
a wave, on the device at hand (the executor reads the SM count and the
kernel's registers from the driver) or on a reference device (gpu-plan).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    sms: int
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    registers_per_sm: int = 65536
    max_registers_per_thread: int = 255
    register_granularity: int = 256  # registers are allocated per warp in units of this
    warp: int = 32
    max_threads_per_block: int = 1024

    def blocks_per_sm(self, registers, block):
        """Blocks of ``block`` threads one SM holds, with ``registers`` per thread."""
        warps = -(-block // self.warp)
        per_warp = -(-max(registers, 1) * self.warp // self.register_granularity) * \
            self.register_granularity
        by_registers = self.registers_per_sm // (per_warp * warps)
        return max(0, min(self.max_blocks_per_sm, self.max_threads_per_sm // block, by_registers))

    def resident_threads(self, registers, block):
        """Threads the whole device holds at once."""
        return self.sms * self.blocks_per_sm(registers, block) * block


# The reference devices of `cudcn gpu-plan`: SM counts of the A100 (SXM) and H100 (SXM).
REFERENCE = {
    "sm_80": Device("A100 (sm_80, 108 SMs)", 108),
    "sm_90": Device("H100 (sm_90, 132 SMs)", 132),
}
