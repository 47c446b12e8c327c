"""Packaging for edgenas.  The on-device files (devices/) and the search-space specs (supernets/)
install as data under <prefix>/share/edgenas so the CLI can push the runner to devices."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _data(folder: str) -> list[tuple[str, list[str]]]:
    files = sorted(str(p) for p in (HERE / folder).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    groups: dict[str, list[str]] = {}
    for f in files:
        rel = Path(f).relative_to(HERE)
        groups.setdefault(str(Path("share/edgenas") / rel.parent), []).append(str(rel))
    return sorted(groups.items())


setup(
    name="edgenas",
    version="0.1.0",
    description="Hardware-aware neural architecture search for edge devices: train a once-for-all "
    "supernet, measure subnets on real devices, search per device, deploy int8 TFLite to a fleet.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["edgenas", "edgenas.*"]) + ["edgenas_device"],
    # The on-device package lives beside the runner files; the host imports the same code.
    package_dir={"edgenas_device": "devices/edgenas_device"},
    data_files=_data("supernets") + _data("devices") + _data("deploy"),
    install_requires=[
        "torch>=2.6",  # weights_only=True loading is bypassable before 2.6 (CVE-2025-32434)
        "numpy>=1.24",
        "click>=8.1",
        "paramiko>=3.4",
        "pyyaml>=6",
        "pillow>=10",
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
    ],
    extras_require={
        "export": ["tensorflow-cpu>=2.16", "ai-edge-litert>=1.0"],
        "dev": ["pytest>=8", "ruff>=0.5"],
    },
    entry_points={"console_scripts": ["edgenas=edgenas.cli:main"]},
)
