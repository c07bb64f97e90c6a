"""Optional packages of the ``fid`` extra: torch-fidelity (FID / IS / precision-recall) and lpips
(LPIPS). Both import torchvision, which must be built for the installed torch; where it is not
(e.g. torchvision 0.28 beside torch 2.13+cpu: "operator torchvision::nms does not exist"), vcq
falls back to its own ports and names the implementation it used.
"""

from __future__ import annotations


def import_status(*modules: str) -> tuple[bool, str]:
    """Whether every module in ``modules`` imports here (in order), and if not, which one and why."""
    for module in modules:
        try:
            __import__(module)
        except Exception as e:  # ImportError, or the RuntimeError of a torchvision built for another torch
            msg = str(e).splitlines()[0] if str(e) else ""
            return False, f"{module} does not import here ({type(e).__name__}: {msg})"
    return True, " and ".join(modules) + " import"
