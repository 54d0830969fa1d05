"""`python -m uepo.cuda_check`: are uepo's CUDA kernels compiled in, and do they run?

Without a GPU it checks what can be checked: the library loaded, was built with CUDA,
registers CUDA kernels for every op, and holds GPU code (it lists the architectures). With a
GPU it also runs both ops against their references.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import torch

from uepo import ops

OPS = ("uepo::divergence", "uepo::divergence_backward", "uepo::multiseed_sample", "uepo::residual_head")


def gpu_architectures(library: str) -> list[str]:
    """The GPU code embedded in the library, read from its .nv_fatbin section: entries of kind 2
    are machine code (sm_XX), kind 1 PTX (compute_XX). Layout of the fatbin headers as
    documented by open-source fatbin readers (magic 0xBA55ED50, arch at byte 28 of an entry)."""
    data = Path(library).read_bytes()
    section = _elf_section(data, b".nv_fatbin")
    found, pos = set(), 0
    while section is not None and pos + 16 <= len(section):
        magic, _, header_size, fat_size = struct.unpack_from("<IHHQ", section, pos)
        if magic != 0xBA55ED50:
            pos += 8  # blobs are 8-byte aligned
            continue
        entry, end = pos + header_size, pos + header_size + fat_size
        while entry + 32 <= end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", section, entry)
            arch = struct.unpack_from("<I", section, entry + 28)[0]
            found.add(f"{'sm' if kind == 2 else 'compute'}_{arch}")
            entry += entry_header + payload
        pos = end
    return sorted(found)


def _elf_section(data: bytes, name: bytes) -> bytes | None:
    """The bytes of a named section of a 64-bit little-endian ELF file, or None."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_offset = headers[shstrndx][4]
    for sh_name, _, _, _, offset, size in headers:
        start = names_offset + sh_name
        if data[start : data.index(b"\0", start)] == name:
            return data[offset : offset + size]
    return None


def run_on_gpu() -> None:
    from uepo.diffusion import Schedule, SeedBank
    from uepo.nets import ResidualMLPDenoiser

    torch.manual_seed(0)
    chunks = torch.randn(64, 4, 8, 3, dtype=torch.float64)
    torch.testing.assert_close(ops.divergence(chunks.cuda()).cpu(), ops.reference_divergence(chunks))
    net = ResidualMLPDenoiser(8, 3, 22).double()
    steps, bank = Schedule(100).ddim(10), SeedBank.draw(4, 10, 8, 3, 0, dtype=torch.float64)
    cond = torch.randn(32, 22, dtype=torch.float64)
    refs = {p: ops.reference_multiseed_sample(cond, bank.noise, bank.perturb, net.kernel_weights(), steps.timesteps,
                                              steps.alpha_bars, 8, 0.1, 1.0, prediction=p)[0] for p in ops.PREDICTIONS}
    net.cuda()
    for prediction, ref in refs.items():  # what the network outputs: ε̂, x̂_0 or v̂
        out, _ = ops.multiseed_sample(cond.cuda(), bank.noise.cuda(), bank.perturb.cuda(), net.kernel_weights(),
                                      steps.timesteps, steps.alpha_bars, 8, 0.1, 1.0, prediction=prediction)
        torch.testing.assert_close(out.cpu(), ref)
    obs_n, base, z = torch.randn(5, 11, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64), torch.randn(
        5, 3, dtype=torch.float64)
    head = [torch.randn(*shape, dtype=torch.float64) / 4 for shape in ((16, 14), (16,), (3, 16), (3,), (3, 16), (3,))]
    ref_head = ops.reference_residual_head(obs_n, base, head, -5.0, 0.0, z)
    out_head = ops.residual_head(obs_n.cuda(), base.cuda(), [w.cuda() for w in head], -5.0, 0.0, z.cuda())
    for a, b in zip(out_head, ref_head, strict=True):
        torch.testing.assert_close(a.cpu(), b)
    print("GPU run: the ops match their references on", torch.cuda.get_device_name())


def main() -> int:
    if not ops.compiled_available():
        print(f"FAIL: {ops._lib_error}")
        return 1
    if not ops.compiled_with_cuda():
        print("FAIL: uepo._C was built without CUDA kernels (build with UEPO_CUDA=1, a CUDA torch and nvcc)")
        return 1
    missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
    if missing:
        print(f"FAIL: no CUDA kernel registered for {', '.join(missing)}")
        return 1
    library = str(ops._library_path())
    print(f"uepo._C: {library}")
    print(f"built against torch {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"CUDA kernels registered for {', '.join(OPS)}")
    archs = gpu_architectures(library)
    if not archs:
        print("FAIL: the library holds no GPU code (.nv_fatbin section missing or empty)")
        return 1
    print(f"GPU code in the library: {', '.join(archs)}")
    if torch.cuda.is_available():
        run_on_gpu()
    else:
        print("no GPU here: compiled and registered, not run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
