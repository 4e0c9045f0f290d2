"""The public surface is a tested artefact (httpx style)."""

import dispatch.experimental.durable as durable


def test_durable_exports() -> None:
    assert durable.__all__ == sorted(durable.__all__)
    assert set(durable.__all__) == {
        "FORMAT_VERSION",
        "IncompatibleStateError",
        "InvalidStateError",
        "SnapshotError",
        "UnpicklableStateError",
        "dumps",
        "durable",
        "loads",
    }
    for name in durable.__all__:
        assert hasattr(durable, name)
