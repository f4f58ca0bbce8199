import platform
import subprocess
import sys

import pytest

# Allocates and frees a 64 MB tensor again and again, as inference does activations, and prints the
# page faults of the last twenty times. (Not numpy: it asks for huge pages, which hide the faults.)
FAULTS = """
import resource, sys
import torch
from dfq.device import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
for i in range(25):
    if i == 5:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_keep_freed_memory_stops_page_faults_on_reallocation():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    assert default > 20 * 15000  # all 16384 pages of 4 KB fault in again for each new block
    # The freed block is reused as it is. A machine may still fault a block's pages in a few more
    # times while the heap settles (CI did: 2 and then 3 blocks' worth), never once per allocation:
    # at most a quarter of the 20 blocks the default faults in.
    assert kept < 5 * 16384
    assert kept < default / 4
