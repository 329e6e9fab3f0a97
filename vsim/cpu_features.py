"""CPU generations and the features a guest sees, as vMotion and EVC compare them.

A host's CPU is one generation (HostSpec.cpu_model). A VM keeps the features it
powered on with until it powers off, so a running VM may move only to a host whose
CPU has every one of them (CpuIncompatible otherwise). An EVC mode on the cluster is a
generation too: every host's CPU is masked down to it, so VMs power on with its
features and move between any of the cluster's hosts. Each generation has all of its
predecessors' features (of its own vendor); the two vendors never mix.
"""

from __future__ import annotations

from vsim.faults import InvalidArgument

_INTEL = (
    ("intel-sandybridge", "vendor-intel sse4.2 popcnt aes pclmulqdq avx xsave"),
    ("intel-ivybridge", "f16c rdrand fsgsbase"),
    ("intel-haswell", "avx2 fma bmi1 bmi2 movbe invpcid"),
    ("intel-broadwell", "adx rdseed prefetchw"),
    ("intel-skylake", "avx512f avx512cd avx512bw avx512dq avx512vl clflushopt xsavec"),
    ("intel-cascadelake", "avx512vnni"),
    ("intel-icelake", "avx512vbmi avx512vbmi2 gfni vaes vpclmulqdq avx512bitalg sha rdpid"),
    ("intel-sapphirerapids", "amx-tile amx-int8 amx-bf16 avx512fp16 avxvnni serialize"),
)
_AMD = (
    (
        "amd-zen",
        "vendor-amd sse4.2 popcnt aes pclmulqdq avx xsave f16c rdrand fsgsbase avx2 fma "
        "bmi1 bmi2 movbe adx rdseed prefetchw sha clflushopt xsavec clzero",
    ),
    ("amd-zen2", "clwb rdpid wbnoinvd"),
    ("amd-zen3", "vaes vpclmulqdq invpcid pku"),
    (
        "amd-zen4",
        "avx512f avx512cd avx512bw avx512dq avx512vl avx512vnni avx512vbmi avx512vbmi2 gfni "
        "avx512bitalg avx512bf16",
    ),
)


def _cumulative(line: tuple[tuple[str, str], ...]) -> dict[str, frozenset[str]]:
    features: set[str] = set()
    generations = {}
    for name, added in line:
        features |= set(added.split())
        generations[name] = frozenset(features)
    return generations


GENERATIONS: dict[str, frozenset[str]] = {**_cumulative(_INTEL), **_cumulative(_AMD)}
"""Generation (and EVC mode) -> the CPU features a guest sees on it."""
DEFAULT_MODEL = "intel-icelake"


def features(generation: str) -> frozenset[str]:
    return GENERATIONS[check(generation)]


def check(generation: str, field: str = "cpu_model") -> str:
    if generation not in GENERATIONS:
        raise InvalidArgument(
            f"{field} {generation[:40]!r} is not a CPU generation; one of " + ", ".join(GENERATIONS)
        )
    return generation


def missing(needed: str, available: str) -> list[str]:
    """The features of generation `needed` that generation `available` lacks."""
    return sorted(features(needed) - features(available))


def vendor(generation: str) -> str:
    return "Intel" if "vendor-intel" in features(generation) else "AMD"


def guest_features(host_model: str, evc_mode: str) -> str:
    """The generation a VM powering on on this host gets: the cluster's EVC mode if
    there is one, else the host's own CPU."""
    return evc_mode or host_model
