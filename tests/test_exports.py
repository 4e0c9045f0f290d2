"""The public surface is a tested artefact (httpx style)."""

import dispatch
import dispatch.experimental.durable as durable


def test_dispatch_exports() -> None:
    assert dispatch.__all__ == sorted(dispatch.__all__)
    assert set(dispatch.__all__) == {
        "Call",
        "CallError",
        "Cancelled",
        "Client",
        "ClientError",
        "Dispatch",
        "DispatchError",
        "DispatchID",
        "Function",
        "Status",
        "all",
        "any",
        "batch",
        "function",
        "gather",
        "race",
        "register_error_type",
        "register_output_type",
        "run",
    }
    for name in dispatch.__all__:
        assert hasattr(dispatch, name)


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
