"""Input checks: what is accepted, what is refused, and that refusals stay readable."""

from __future__ import annotations

import pytest

from vsim import validate
from vsim.faults import InvalidArgument
from vsim.spec import ClusterSpec, HostSpec

HUGE = "x" * 10_000_000


@pytest.mark.parametrize("name", ["vm-001", "a", "My VM (test) #2", "x" * 80, "ünïcödé"])
def test_vm_name_accepts(name: str):
    assert validate.vm_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 81, "a/b", "a\\b", "50%", "tab\there", "nl\n", "\x00", "del\x7f", " lead", "trail "],
)
def test_vm_name_rejects(name: str):
    with pytest.raises(InvalidArgument, match="name"):
        validate.vm_name(name)


@pytest.mark.parametrize("name", ["a.b", "...", ".vm", "vm.", "Zoë", "日本語 VM", "x" * 79 + "."])
def test_names_with_dots_and_letters_of_any_script_are_accepted(name: str):
    assert validate.vm_name(name) == name


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_and_dot_dot_are_refused_as_names(name: str):
    with pytest.raises(InvalidArgument, match="'.' and '..' name folders"):
        validate.vm_name(name, "name")


@pytest.mark.parametrize(
    "name, code",
    [
        ("evil\u202egpj.exe", "U+202E"),  # Cf: right-to-left override
        ("\ufeffvm-001", "U+FEFF"),  # Cf: byte order mark
        ("vm\u200b001", "U+200B"),  # Cf: zero-width space
        ("vm\u2028001", "U+2028"),  # Zl: line separator
        ("vm\u2029001", "U+2029"),  # Zp: paragraph separator
        ("vm\x85001", "U+0085"),  # Cc: next line (C1 control)
        ("vm\x1b[31m", "U+001B"),  # Cc: escape, as in terminal colour codes
    ],
)
def test_invisible_and_reordering_characters_are_refused_by_code(name: str, code: str):
    with pytest.raises(InvalidArgument) as excinfo:
        validate.vm_name(name, "spec.name")
    message = excinfo.value.message
    assert code in message and "spec.name" in message
    assert "control or format characters" in message
    assert message.isprintable()  # the refusal itself does not scramble a terminal


@pytest.mark.parametrize(
    "check",
    [
        lambda: validate.vm_name(HUGE),
        lambda: validate.vm_name(HUGE[:1000] + "/"),
        lambda: validate.host_name(HUGE),
        lambda: validate.text(HUGE, "guest_os", 64),
    ],
)
def test_messages_for_huge_input_stay_short(check):
    with pytest.raises(InvalidArgument) as excinfo:
        check()
    assert len(excinfo.value.message) < 300


def test_vm_name_message_names_the_field_and_the_limit():
    with pytest.raises(InvalidArgument) as excinfo:
        validate.vm_name("y" * 81, field="spec.name")
    assert "spec.name" in excinfo.value.message
    assert "1-80" in excinfo.value.message
    assert "81" in excinfo.value.message


@pytest.mark.parametrize("name", ["esxi-01", "a", "0", "a" * 63, "host-1-2"])
def test_host_name_accepts(name: str):
    assert validate.host_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", "a-", "ESXI-01", "esxi_01", "esxi.local", "a" * 64, "esxi 01", "\nesxi-01"]
)
def test_host_name_rejects(name: str):
    with pytest.raises(InvalidArgument, match="host name"):
        validate.host_name(name)


def test_host_name_rejects_a_trailing_newline():
    with pytest.raises(InvalidArgument, match="host name"):
        validate.host_name("esxi-01\n")


@pytest.mark.parametrize("value", [4, 8, 1024, validate.MAX_MEMORY_MB])
def test_memory_accepts_multiples_of_4_in_range(value: int):
    assert validate.memory_mb(value) == value


@pytest.mark.parametrize(
    "value", [-4, -1, 0, 1, 3, 5, 1022, 1025, validate.MAX_MEMORY_MB + 4, 2**62]
)
def test_memory_rejects(value: int):
    with pytest.raises(InvalidArgument, match="memory_mb"):
        validate.memory_mb(value)


@pytest.mark.parametrize("value", [1, 2, validate.MAX_VCPUS])
def test_vcpus_accepts(value: int):
    assert validate.vcpus(value) == value


@pytest.mark.parametrize("value", [0, -1, validate.MAX_VCPUS + 1, -(2**31)])
def test_vcpus_rejects(value: int):
    with pytest.raises(InvalidArgument, match="cpus"):
        validate.vcpus(value)


def test_int_range_is_inclusive_and_names_the_unit():
    assert validate.int_range(1, 1, 3, "n") == 1
    assert validate.int_range(3, 1, 3, "n") == 3
    with pytest.raises(InvalidArgument) as excinfo:
        validate.int_range(4, 1, 3, "size", "MB")
    assert excinfo.value.message == "size must be between 1 and 3 MB, got 4"


def test_text_limits_length():
    assert validate.text("a" * 64, "f", 64) == "a" * 64
    with pytest.raises(InvalidArgument, match="f is 65 characters; at most 64"):
        validate.text("a" * 65, "f", 64)


# The cluster description validates with the same rules.


def test_default_cluster_spec_names_hosts_predictably():
    spec = ClusterSpec.default(3)
    assert [h.name for h in spec.hosts] == ["esxi-01", "esxi-02", "esxi-03"]
    assert ClusterSpec.default(0).hosts == ()


@pytest.mark.parametrize("hosts", [-1, 97])
def test_default_cluster_spec_rejects_host_count(hosts: int):
    with pytest.raises(InvalidArgument):
        ClusterSpec.default(hosts)


@pytest.mark.parametrize(
    "spec",
    [
        HostSpec("Bad_Name"),
        HostSpec("esxi-01", cpu_cores=0),
        HostSpec("esxi-01", cpu_mhz=99),
        HostSpec("esxi-01", memory_mb=1023),
        HostSpec("esxi-01", kernel_period_s=0.05),
        HostSpec("esxi-01", kernel_period_s=11),
        HostSpec("esxi-01", kernel_period_s=float("nan")),
    ],
)
def test_host_spec_validation(spec: HostSpec):
    with pytest.raises(InvalidArgument):
        spec.validated()


def test_host_spec_json_round_trip():
    spec = HostSpec(
        "esxi-07", uuid="u-1", cpu_cores=8, cpu_mhz=3000, memory_mb=4096, kernel_period_s=5
    )
    assert HostSpec.from_json(spec.to_json()) == spec


def test_a_host_spec_stored_before_kernel_periods_reads_with_the_default():
    stored = '{"cpu_cores": 8, "cpu_mhz": 3000, "memory_mb": 4096, "name": "esxi-07", '
    stored += '"root_password": "", "uuid": ""}'
    assert HostSpec.from_json(stored).kernel_period_s == 1.0
