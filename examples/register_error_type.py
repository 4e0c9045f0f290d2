"""dispatch.register_error_type: what an exception means for the call.

FatalException is registered as a PERMANENT_ERROR: the call fails at once,
after one attempt, without retries.

    python examples/register_error_type.py
    dispatch run -- python examples/register_error_type.py
"""

import dispatch
from dispatch import Status


class FatalException(Exception):
    pass


dispatch.register_error_type(FatalException, Status.PERMANENT_ERROR)


@dispatch.function
def example() -> None:
    print("example: raising FatalException")
    raise FatalException()


def main() -> None:
    example.dispatch()


dispatch.run(main)
