"""dispatch.run: serve the application, and call main once ready.

python examples/run.py
dispatch run -- python examples/run.py
"""

import dispatch


@dispatch.function
def example() -> None:
    print("I'm executed asynchronously")


def main() -> None:
    example.dispatch()


dispatch.run(main)
