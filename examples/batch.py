"""dispatch.batch: several calls sent together, atomically, in one request.

python examples/batch.py
dispatch run -- python examples/batch.py
"""

import dispatch


@dispatch.function
def greet(name: str) -> None:
    print("Hello", name)


@dispatch.function
def greet_everyone() -> None:
    batch = dispatch.batch()
    batch.add(greet("Jane"))
    batch.add(greet("Mike"))
    batch.add(greet("Hopper"))
    batch.dispatch()


def main() -> None:
    greet_everyone.dispatch()


dispatch.run(main)
