"""The chunked KD engine alone (``chunked_kd_loss`` forward + backward under bf16 autocast, one
thread): user and kernel CPU seconds, wall seconds and page faults per call, by chunk size.

Usage: python benchmarks/bench_chunk_faults.py [CHUNK ...]   (default: 1024 128)

1,700 response tokens, SmolLM2's 49,152-token vocabulary and 576-wide head, random weights;
each chunk size is run twice, alternating, 1 warm-up call then the mean of 3. Kernel time here is
mostly page faults: glibc maps every block over 32 MiB afresh and the kernel zeroes its pages.
"""

from __future__ import annotations

import resource
import sys
import time

import torch

from spectrumkd.distillation.chunked import chunked_kd_loss

VOCAB, HIDDEN, TOKENS = 49_152, 576, 1_700


def usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student_hidden = torch.randn(TOKENS, HIDDEN, requires_grad=True)
    student_head = (torch.randn(VOCAB, HIDDEN) * 0.02).requires_grad_(True)
    teacher_hidden = torch.randn(TOKENS, HIDDEN)
    teacher_head = torch.randn(VOCAB, HIDDEN) * 0.02
    labels = torch.randint(0, VOCAB, (TOKENS,))

    def call(chunk: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            kd, _, _ = chunked_kd_loss(
                student_hidden,
                student_head,
                teacher_hidden,
                teacher_head,
                labels,
                "forward_kl",
                temperature=1.0,
                chunk_size=chunk,
            )
        kd.backward()

    for chunk in [int(c) for c in sys.argv[1:] or ("1024", "128")] * 2:
        call(chunk)  # warm-up
        user, kernel, faults = usage()
        wall = time.perf_counter()
        for _ in range(3):
            call(chunk)
        user2, kernel2, faults2 = usage()
        print(
            f"chunk {chunk}: user {(user2 - user) / 3:.2f} s, kernel {(kernel2 - kernel) / 3:.2f} s, "
            f"wall {(time.perf_counter() - wall) / 3:.2f} s, page faults {(faults2 - faults) / 3:,.0f} per call",
            flush=True,
        )


if __name__ == "__main__":
    main()
