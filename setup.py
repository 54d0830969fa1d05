"""Builds uepo._C, the kernel library, against the torch that is installed in the build environment.

UEPO_CUDA=auto (default) builds the CUDA kernels when that torch is a CUDA build and nvcc exists;
UEPO_CUDA=1 insists on them, UEPO_CUDA=0 builds the CPU kernels only. TORCH_CUDA_ARCH_LIST
(default "8.0;9.0") and MAX_JOBS are honoured.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()


def _nvcc_toolkit_root() -> str | None:
    """The real CUDA toolkit root; the nvcc wrapper on the PATH misleads torch's own guess."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        dry = subprocess.run(
            [nvcc, "--dryrun", "-E", "-x", "cu", os.devnull],
            capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (dry.stdout + dry.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return os.path.realpath(line.split("=", 1)[1].strip())
    return str(Path(os.path.realpath(nvcc)).parent.parent)


def _want_cuda(torch) -> bool:
    mode = os.environ.get("UEPO_CUDA", "auto").strip().lower()
    if mode not in {"auto", "0", "1"}:
        raise SystemExit(f"UEPO_CUDA must be auto, 0 or 1, got {mode!r}")
    has_cuda_torch = torch.version.cuda is not None
    has_nvcc = shutil.which("nvcc") is not None or bool(os.environ.get("CUDA_HOME"))
    if mode == "1" and not (has_cuda_torch and has_nvcc):
        raise SystemExit(
            "UEPO_CUDA=1 but the CUDA kernels cannot be built: "
            f"torch {torch.__version__} is {'a CUDA' if has_cuda_torch else 'a CPU-only'} build and "
            f"nvcc is {'present' if has_nvcc else 'missing'}. Install a CUDA build of torch "
            "(e.g. torch==2.14.1) and the CUDA toolkit, or use UEPO_CUDA=0."
        )
    return mode == "1" or (mode == "auto" and has_cuda_torch and has_nvcc)


def _extension():
    import torch
    from torch.utils import cpp_extension

    with_cuda = _want_cuda(torch)
    if with_cuda and not os.environ.get("CUDA_HOME"):
        root = _nvcc_toolkit_root()
        if root:
            os.environ["CUDA_HOME"] = root
            cpp_extension.CUDA_HOME = root  # the module read CUDA_HOME at import
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

    sources = ["csrc/ops.cpp", "csrc/autograd.cpp", "csrc/acting.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    defines = [("UEPO_TORCH_VERSION", f'"{torch.__version__}"')]
    cxx = ["-O3", "-fopenmp", "-Wno-psabi"]  # the C++ standard is the one torch asks for
    kwargs = {}
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        defines.append(("UEPO_WITH_CUDA", "1"))
        kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": ["-O3"]}
        ext_cls = cpp_extension.CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext_cls = cpp_extension.CppExtension
    return ext_cls(
        name="uepo._C",
        sources=sources,
        include_dirs=[str(ROOT / "csrc" / "include")],
        define_macros=defines,
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
        **kwargs,
    )


def main() -> None:
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=[_extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
