"""dispatch.gather: run calls in parallel, wait for them, get their results in order.

    python examples/gather.py
    dispatch run -- python examples/gather.py

greet_everyone is a durable coroutine: while it waits, it is saved to the
database and its process may stop; it resumes where it stopped.
"""

import dispatch


@dispatch.function
def create_greeting(name: str) -> str:
    return "Hello " + name


@dispatch.function
async def greet_everyone() -> None:
    names = ["Jane", "Mike", "Hopper"]
    greetings = await dispatch.gather(*[create_greeting(name) for name in names])
    for greeting in greetings:
        print(greeting)


def main() -> None:
    greet_everyone.dispatch()


dispatch.run(main)
