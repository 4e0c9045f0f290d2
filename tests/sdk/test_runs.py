"""Functions run through the endpoint, driven by real RunRequests over HTTP."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import sdk_app
from conftest import Keys
from harness import Harness

from dispatch import Status
from dispatch._wire import decode_value


def call(harness: Harness, function: str, *args: Any) -> Any:
    return asyncio.run(harness.call(function, *args))


def value(harness: Harness, function: str, *args: Any) -> Any:
    outcome = call(harness, function, *args)
    assert outcome.status is Status.OK, outcome.error
    return outcome.value(harness.sealer)


def error_of(harness: Harness, outcome: Any) -> BaseException:
    assert outcome.error is not None and outcome.error.value is not None
    exception = decode_value(outcome.error.value, harness.sealer)
    assert isinstance(exception, BaseException)
    return exception


def test_sync_function_runs_in_a_worker_thread(harness: Harness) -> None:
    assert value(harness, "greet", "Jane") == "Hello Jane"
    assert value(harness, "where") != threading.main_thread().name
    assert value(harness, "custom-name") == "renamed"


def test_gather_of_calls(harness: Harness) -> None:
    assert value(harness, "greet_everyone", ["Jane", "Mike", "Hopper"]) == [
        "Hello Jane",
        "Hello Mike",
        "Hello Hopper",
    ]
    entry = [a for a in harness.attempts if a.function == "greet_everyone"]
    assert [a.resumed for a in entry] == [False, True], "one poll for the whole group"
    assert entry[0].response is not None and entry[0].response.poll is not None
    assert len(entry[0].response.poll.calls) == 3
    assert entry[0].response.poll.min_results == 3


def test_sequential_awaits_each_a_durable_step(harness: Harness) -> None:
    assert value(harness, "sequential", 5) == 10
    entry = [a for a in harness.attempts if a.function == "sequential"]
    assert len(entry) == 6  # first run plus one resume per await


def test_gather_mixing_local_coroutines_and_calls(harness: Harness) -> None:
    assert value(harness, "mixed") == ["Hello remote", "HELLO LOCAL", 3]


def test_any_returns_the_first_success(harness: Harness) -> None:
    assert value(harness, "first_success") == "Hello winner"


def test_any_with_every_awaitable_failing_raises_all_errors(harness: Harness) -> None:
    outcome = call(harness, "all_failing")
    assert outcome.status is Status.PERMANENT_ERROR  # the failures were the children's
    group = error_of(harness, outcome)
    assert isinstance(group, ExceptionGroup)
    assert sorted(type(e).__name__ for e in group.exceptions) == ["FatalError", "ValueError"]


def test_race_returns_the_first_error(harness: Harness) -> None:
    outcome = call(harness, "race_error")
    assert isinstance(error_of(harness, outcome), sdk_app.FatalError)


def test_race_cancels_the_local_loser(harness: Harness) -> None:
    assert value(harness, "race_against_local") == "Hello fast"
    assert ("loser cleaned up", "slow") in sdk_app.events


def test_gather_fails_fast_and_cancels_the_rest(harness: Harness) -> None:
    assert value(harness, "gather_fails_fast") == "caught fatal"


def test_child_failure_is_not_retried_in_the_parent(harness: Harness) -> None:
    outcome = call(harness, "uncaught_child_failure")
    assert isinstance(error_of(harness, outcome), TimeoutError)
    assert outcome.status is Status.PERMANENT_ERROR
    child = [a for a in harness.attempts if a.function == "fail"]
    assert [a.attempt for a in child] == [1, 2, 3], "the child is retried by its own status"


def test_nested_groups(harness: Harness) -> None:
    assert value(harness, "nested_groups") == [["Hello x", "Hello y"], 5]


def test_empty_gather(harness: Harness) -> None:
    assert value(harness, "empty_gather") == []


def test_other_awaits_run_inside_the_request(harness: Harness) -> None:
    assert value(harness, "sleeps") == "Hello after sleep"


def test_tail_call(harness: Harness) -> None:
    assert value(harness, "countdown", 3) == "liftoff"
    assert [a.function for a in harness.attempts] == ["countdown"] * 4


def test_dispatch_inside_a_run_goes_out_with_the_response(harness: Harness) -> None:
    ids = value(harness, "fire_and_forget")
    assert len(ids) == 3 and len(set(ids)) == 3
    assert [c.dispatch_id for c in harness.dispatched] == ids
    assert [c.function for c in harness.dispatched] == ["greet", "greet", "add"]
    assert value(harness, "fire_and_forget_async") == harness.dispatched[-1].dispatch_id


def test_statuses_from_errors_and_outputs(harness: Harness) -> None:
    fatal = call(harness, "fail", "fatal")
    assert fatal.status is Status.PERMANENT_ERROR
    assert [a.attempt for a in harness.attempts if a.function == "fail"] == [1]
    harness.attempts.clear()
    timeout = call(harness, "fail", "timeout")
    assert timeout.status is Status.TIMEOUT
    assert len(harness.attempts) == 3  # retried up to the limit
    assert call(harness, "fail", "value").status is Status.INVALID_ARGUMENT
    assert call(harness, "fail", "key").status is Status.TEMPORARY_ERROR
    harness.attempts.clear()
    flaky = call(harness, "flaky_result", False)
    assert flaky.status is Status.TEMPORARY_ERROR
    assert len(harness.attempts) == 3
    assert value(harness, "flaky_result", True).success is True


def test_error_carries_type_message_and_traceback(harness: Harness) -> None:
    outcome = call(harness, "fail", "value")
    assert outcome.error is not None
    assert outcome.error.type == "builtins.ValueError"
    assert outcome.error.message == "bad value"
    assert outcome.error.traceback is not None and "raise errors[kind]" in outcome.error.traceback


def test_unpicklable_result_is_a_clear_error(harness: Harness) -> None:
    outcome = call(harness, "unpicklable_result")
    assert outcome.status is Status.PERMANENT_ERROR
    assert outcome.error is not None and "lock" in outcome.error.message


def test_unpicklable_coroutine_state_names_the_variable(harness: Harness) -> None:
    outcome = call(harness, "holds_lock")
    assert outcome.status is Status.PERMANENT_ERROR
    assert outcome.error is not None
    assert "local variable 'lock'" in outcome.error.message


def test_suspended_coroutine_finally_runs_once_at_the_end(harness: Harness) -> None:
    assert value(harness, "with_cleanup") == "Hello inside"
    assert sdk_app.events == ["with_cleanup finally"], "not when it was snapshotted"


def test_keys_fixture(keys: Keys) -> None:
    assert len(keys.seal) == 32


def test_unsendable_argument_fails_at_the_await(harness: Harness) -> None:
    result = value(harness, "unsendable_argument")
    assert result.startswith("caught: cannot encode a value of type lock")


def test_race_cancels_the_remote_loser(harness: Harness) -> None:
    assert value(harness, "race_remote") == "Hello quick"
    (entry,) = [a for a in harness.attempts if a.function == "race_remote" and not a.resumed]
    assert entry.response is not None and entry.response.poll is not None
    slow_call = entry.response.poll.calls[0].correlation_id
    assert any(c.endswith(f"/{slow_call}") for c in harness.cancelled)
