"""dispatch.register_output_type: what a returned value means for the call.

A Result with success=False is a TEMPORARY_ERROR: the call is retried, with
exponential backoff, until it succeeds or runs out of attempts (5).

    python examples/register_output_type.py
    dispatch run -- python examples/register_output_type.py
"""

import dispatch
from dispatch import Status


class Result:
    def __init__(self, success: bool) -> None:
        self.success = success


def handle_result(result: Result) -> Status:
    if result.success:
        return Status.OK
    return Status.TEMPORARY_ERROR


dispatch.register_output_type(Result, handle_result)


@dispatch.function
def example() -> Result:
    print("example: returning Result(success=False)")
    return Result(success=False)


def main() -> None:
    example.dispatch()


dispatch.run(main)
